package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ---- console ----

// console serialises the user-facing output: step lines, the view, and the
// prefixed lines of every process.
type console struct {
	mu    sync.Mutex
	w     io.Writer
	color bool
}

// nameWidth pads process names so their lines align ("deadletter" is the
// longest).
const nameWidth = 10

func newConsole(w io.Writer) *console {
	return &console{w: w, color: colorful(w)}
}

// colorful reports whether w is a terminal that should get ANSI colors.
func colorful(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (c *console) println(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _ = io.WriteString(c.w, s+"\n")
}

func (c *console) printf(format string, args ...any) { c.println(fmt.Sprintf(format, args...)) }

// step announces a step of the stack.
func (c *console) step(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if c.color {
		msg = "\x1b[1m==> " + msg + "\x1b[0m"
	} else {
		msg = "==> " + msg
	}
	c.println(msg)
}

// colors of process names, assigned in order.
var palette = []string{"36", "35", "33", "32", "34", "31", "96", "95"}

// prefixed prints a line of a named source: "processor  | line".
func (c *console) prefixed(name, color, line string) {
	pad := fmt.Sprintf("%-*s", nameWidth, name)
	if c.color && color != "" {
		pad = "\x1b[" + color + "m" + pad + "\x1b[0m"
	}
	c.println(pad + " | " + line)
}

// writer returns an io.Writer printing each line it receives under name.
func (c *console) writer(name string) io.Writer {
	return &lineWriter{emit: func(l string) { c.prefixed(name, "90", l) }}
}

// lineWriter splits what is written into lines and hands each to emit. A
// line longer than maxLine is emitted in pieces. It is safe for concurrent
// use, though os/exec writes each stream from one goroutine.
type lineWriter struct {
	mu   sync.Mutex
	buf  []byte
	emit func(string)
}

const maxLine = 64 << 10

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.emit(strings.TrimRight(string(w.buf[:i]), "\r"))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > maxLine {
		w.emit(string(w.buf))
		w.buf = w.buf[:0]
	}
	return len(b), nil
}

// flush emits a last unterminated line.
func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.emit(string(w.buf))
		w.buf = nil
	}
}

// ---- processes ----

// proc is one child process.
type proc struct {
	name       string
	color      string
	cmd        *exec.Cmd
	healthFile string // "" for a process without a health endpoint
	service    bool   // a shardflow service: JSON logs, health file
	sup        *supervisor
	out, err   *lineWriter

	done     chan struct{}
	exitErr  error
	stopping atomic.Bool

	mu   sync.Mutex
	tail []tailLine // the last tailLen lines, shown or not
}

type tailLine struct {
	text  string
	shown bool
}

const tailLen = 60

// line handles one output line: kept in the tail, printed if it passes the
// filter.
func (p *proc) line(l string) {
	shown := p.sup.verbose || p.show(l)
	p.mu.Lock()
	p.tail = append(p.tail, tailLine{l, shown})
	if len(p.tail) > tailLen {
		p.tail = p.tail[len(p.tail)-tailLen:]
	}
	p.mu.Unlock()
	if shown {
		p.sup.con.prefixed(p.name, p.color, l)
	}
}

// show is the default filter: warnings, errors and listening lines of JSON
// logs; every non-JSON line of a service (a panic, a fatal start-up error);
// non-JSON lines of other processes only if they look like trouble.
func (p *proc) show(l string) bool {
	var rec struct {
		Level string `json:"level"`
		Msg   string `json:"msg"`
	}
	if strings.HasPrefix(l, "{") && json.Unmarshal([]byte(l), &rec) == nil {
		lv := strings.ToLower(rec.Level)
		for _, bad := range []string{"warn", "error", "fatal", "panic", "dpanic"} {
			if strings.HasPrefix(lv, bad) {
				return true
			}
		}
		return rec.Msg == "listening"
	}
	if p.service {
		return strings.TrimSpace(l) != ""
	}
	ll := strings.ToLower(l)
	for _, bad := range []string{"warn", "error", "fatal", "panic"} {
		if strings.Contains(ll, bad) {
			return true
		}
	}
	return false
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) exitError() error {
	<-p.done
	if p.exitErr == nil {
		return errors.New("exit status 0")
	}
	return p.exitErr
}

// printHidden prints the last n lines the process wrote that the filter
// hid (the others are on screen already), to explain a failure.
func (p *proc) printHidden(n int) {
	p.mu.Lock()
	var lines []string
	for _, l := range p.tail {
		if !l.shown {
			lines = append(lines, l.text)
		}
	}
	p.mu.Unlock()
	if len(lines) == 0 {
		return
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	p.sup.con.step("%s's last log lines not shown above:", p.name)
	for _, l := range lines {
		p.sup.con.prefixed(p.name, p.color, l)
	}
}

// healthAddr is the bound address the service wrote to its health file.
func (p *proc) healthAddr() string {
	if p.healthFile == "" {
		return ""
	}
	b, err := os.ReadFile(p.healthFile)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// supervisor starts, watches and stops the child processes.
type supervisor struct {
	con     *console
	verbose bool
	mu      sync.Mutex
	procs   []*proc
	// exited receives each process that exits without being asked to.
	exited chan *proc
}

func newSupervisor(con *console, verbose bool) *supervisor {
	return &supervisor{con: con, verbose: verbose, exited: make(chan *proc, 16)}
}

// start starts a process in its own process group (a Ctrl-C reaches only the
// stack, which stops the children in order) with env added to ours.
func (s *supervisor) start(name, path string, env []string, healthFile string, service bool, args ...string) (*proc, error) {
	if healthFile != "" {
		if err := os.Remove(healthFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("start %s: remove stale %s: %w", name, healthFile, err)
		}
	}
	s.mu.Lock()
	color := palette[len(s.procs)%len(palette)]
	s.mu.Unlock()
	p := &proc{name: name, color: color, healthFile: healthFile, service: service, sup: s, done: make(chan struct{})}
	p.out = &lineWriter{emit: p.line}
	p.err = &lineWriter{emit: p.line}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...) // later entries win
	cmd.Stdout, cmd.Stderr = p.out, p.err
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = 3 * time.Second // a grandchild holding the pipes cannot hang Wait
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.cmd = cmd
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.out.flush()
		p.err.flush()
		p.exitErr = err
		close(p.done)
		if !p.stopping.Load() {
			select {
			case s.exited <- p:
			default:
			}
		}
	}()
	return p, nil
}

// waitReady waits until every service answers 200 on /readyz. The first
// process that exits meanwhile, or is not ready in time, fails the start,
// with its last lines printed.
func (s *supervisor) waitReady(ctx context.Context, timeout time.Duration) error {
	s.mu.Lock()
	var svcs []*proc
	for _, p := range s.procs {
		if p.service {
			svcs = append(svcs, p)
		}
	}
	s.mu.Unlock()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		p   *proc
		err error
	}
	results := make(chan result, len(svcs))
	for _, p := range svcs {
		go func() { results <- result{p, p.waitReady(wctx, timeout)} }()
	}
	var first error
	for range svcs {
		r := <-results
		if r.err == nil || first != nil {
			continue
		}
		first = r.err
		cancel()
		if ctx.Err() == nil {
			s.con.step("%v", r.err)
			r.p.printHidden(30)
		}
	}
	return first
}

func (p *proc) waitReady(ctx context.Context, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := "no health address yet"
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.done:
			return fmt.Errorf("%s exited during start-up: %w", p.name, p.exitError())
		case <-deadline.C:
			return fmt.Errorf("%s not ready within %s (last: %s)", p.name, timeout, last)
		case <-tick.C:
		}
		addr := p.healthAddr()
		if addr == "" {
			continue
		}
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = fmt.Sprintf("/readyz %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
}

// stop sends SIGTERM and waits up to timeout, then kills the process group.
// It reports whether the process stopped by itself.
func (s *supervisor) stop(p *proc, timeout time.Duration) bool {
	p.stopping.Store(true)
	if p.exited() {
		return true
	}
	// The whole group: a wrapper script (a jaeger launcher, say) passes it on.
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-p.done:
		return true
	case <-time.After(timeout):
	}
	s.con.step("%s did not stop within %s of SIGTERM: killing it", p.name, timeout)
	killGroup(p)
	<-p.done
	return false
}

// stopServices stops every service at once, each bounded by timeout. Safe to
// call again.
func (s *supervisor) stopServices(timeout time.Duration) {
	s.mu.Lock()
	procs := append([]*proc(nil), s.procs...)
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		if p.service {
			wg.Go(func() { s.stop(p, timeout) })
		}
	}
	wg.Wait()
}

// killAll kills every process group at once (a second Ctrl-C).
func (s *supervisor) killAll() {
	s.mu.Lock()
	procs := append([]*proc(nil), s.procs...)
	s.mu.Unlock()
	for _, p := range procs {
		p.stopping.Store(true)
		killGroup(p)
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	}
}

func killGroup(p *proc) {
	if p.exited() {
		return
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		_ = p.cmd.Process.Kill()
	}
}

// ---- build ----

// buildServices builds every service binary into binDir with one go build.
func buildServices(ctx context.Context, dir, binDir string) error {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("build: the go command is not on PATH: %w", err)
	}
	args := []string{"build", "-o", binDir + string(filepath.Separator)}
	for _, n := range buildNames {
		args = append(args, "./"+n)
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("build services (go %s in %s): %w\n%s", strings.Join(args, " "), dir, err, bytes.TrimSpace(out))
	}
	return nil
}

// ---- traces ----

// traces says where the services send spans.
type traces struct {
	endpoint string // OTEL_EXPORTER_OTLP_ENDPOINT for the services; "" for none
	ui       string // Jaeger UI link, "" for none
	proc     *proc  // jaeger, when the stack started it
}

const (
	jaegerOTLP = "http://127.0.0.1:4318"
	jaegerUI   = "http://127.0.0.1:16686"
)

// setupTraces decides where traces go: the endpoint the user set, else a
// jaeger started from PATH, else nowhere (with a line saying how to enable
// them). A jaeger that fails to start is reported and traces are off.
func setupTraces(ctx context.Context, cfg Config, con *console, sup *supervisor) traces {
	if ep := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); ep != "" {
		con.step("traces go to OTEL_EXPORTER_OTLP_ENDPOINT=%s; Jaeger UI: %s", ep, cfg.JaegerUI)
		return traces{endpoint: ep, ui: cfg.JaegerUI}
	}
	const hint = "set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4318) or put a jaeger binary on PATH (https://www.jaegertracing.io/download/)"
	if cfg.NoJaeger {
		con.step("traces are not exported (--no-jaeger); to see them, %s", hint)
		return traces{}
	}
	var bin string
	for _, name := range []string{"jaeger", "jaeger-all-in-one"} {
		if p, err := exec.LookPath(name); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		con.step("traces are not exported; to see them in Jaeger, %s", hint)
		return traces{}
	}
	con.step("starting %s (in-memory storage, OTLP on %s)", bin, jaegerOTLP)
	p, err := sup.start("jaeger", bin, nil, "", false)
	if err != nil {
		con.step("traces are not exported: %v", err)
		return traces{}
	}
	if err := waitJaeger(ctx, p, 20*time.Second); err != nil {
		con.step("traces are not exported: jaeger did not start (%v)", err)
		p.printHidden(15)
		sup.stop(p, 5*time.Second)
		return traces{}
	}
	con.step("jaeger is up: traces at %s", jaegerUI)
	return traces{endpoint: jaegerOTLP, ui: jaegerUI, proc: p}
}

// waitJaeger waits until jaeger's UI answers and its OTLP/HTTP port accepts.
func waitJaeger(ctx context.Context, p *proc, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("it exited: %w", p.exitError())
		}
		resp, err := client.Get(jaegerUI + "/")
		if err == nil {
			_ = resp.Body.Close()
			if c, err := net.DialTimeout("tcp", "127.0.0.1:4318", time.Second); err == nil {
				_ = c.Close()
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("not answering on %s within %s", jaegerUI, timeout)
}
