package bench

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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shardflow/shardflow/integration/harness"
	"github.com/shardflow/shardflow/streams"
)

// AdminToken is the admin API token of every bench stack.
const AdminToken = "bench-admin-token"

// StackOptions configures a Stack.
type StackOptions struct {
	// Shards of the topology (default 2).
	Shards int
	// SyncAlways runs JetStream with sync_interval: always.
	SyncAlways bool
	// Env is added to every service's environment.
	Env []string
	// Bins overrides the binary of a service (the profile scenario's
	// pprof-enabled builds); default harness.Binary.
	Bins map[string]string
	// ProcEnv is added to one service's environment.
	ProcEnv map[string][]string
}

// Stack is one shardflow: an embedded nats-server, a fresh Postgres
// database, and the services as OS processes (the binaries harness builds).
type Stack struct {
	*NATS
	DB     *Database
	Opts   StackOptions
	logDir string

	mu    sync.Mutex
	procs map[string]*Proc
	ports map[string]int
	http  *http.Client
}

// NewStack starts NATS and creates the database; services are started with
// Start.
func NewStack(ctx context.Context, opts StackOptions) (*Stack, error) {
	if opts.Shards == 0 {
		opts.Shards = 2
	}
	topo := streams.Topology{Shards: opts.Shards}.WithDefaults()
	n, err := StartNATS(ctx, topo, opts.SyncAlways)
	if err != nil {
		return nil, err
	}
	db, err := NewDatabase(ctx)
	if err != nil {
		n.Close()
		return nil, err
	}
	logDir, err := os.MkdirTemp("", "shardflow-bench-logs-")
	if err != nil {
		n.Close()
		db.Close()
		return nil, err
	}
	return &Stack{NATS: n, DB: db, Opts: opts, logDir: logDir, procs: map[string]*Proc{}, ports: map[string]int{},
		http: &http.Client{Timeout: 30 * time.Second}}, nil
}

// Close stops every process, NATS, and drops the database.
func (s *Stack) Close() {
	s.mu.Lock()
	procs := make([]*Proc, 0, len(s.procs))
	for _, p := range s.procs {
		procs = append(procs, p)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop(15 * time.Second) }()
	}
	wg.Wait()
	s.NATS.Close()
	s.DB.Close()
	os.RemoveAll(s.logDir)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Addr is the API address of a service (ingest, accounts).
func (s *Stack) Addr(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.ports[name]
	if !ok {
		p, _ = freePort()
		s.ports[name] = p
	}
	return "127.0.0.1:" + strconv.Itoa(p)
}

// IngestURL is the tracking API's base URL.
func (s *Stack) IngestURL() string { return "http://" + s.Addr("ingest") }

// AdminURL is the admin API's base URL.
func (s *Stack) AdminURL() string { return "http://" + s.Addr("accounts") }

// Proc is a service process.
type Proc struct {
	Name       string
	bin        string
	env        []string
	cmd        *exec.Cmd
	done       chan struct{}
	exitErr    error
	healthFile string
	logPath    string
}

// Start starts a service (the binary is the part of name before a dash) and
// waits until /readyz answers 200.
func (s *Stack) Start(ctx context.Context, name string, env ...string) (*Proc, error) {
	bin := name
	if i := strings.IndexByte(name, '-'); i > 0 {
		bin = name[:i]
	}
	base := []string{
		"SHARDFLOW_NATS_URL=" + s.URL,
		"SHARDFLOW_DATABASE_URL=" + s.DB.DSN,
		"SHARDFLOW_SHARDS=" + strconv.Itoa(s.Topo.Shards),
		"SHARDFLOW_MAX_EVENT_BYTES=" + strconv.Itoa(s.Topo.MaxEventBytes),
		"SHARDFLOW_HEALTH_ADDR=127.0.0.1:0",
		"SHARDFLOW_ADMIN_TOKEN=" + AdminToken,
		"SHARDFLOW_LOG_LEVEL=info",
		"SHARDFLOW_SHUTDOWN_TIMEOUT=10s",
	}
	switch bin {
	case "ingest":
		base = append(base, "SHARDFLOW_INGEST_ADDR="+s.Addr("ingest"))
	case "accounts":
		base = append(base, "SHARDFLOW_ADMIN_ADDR="+s.Addr("accounts"))
	}
	path := harness.Binary(bin)
	if b, ok := s.Opts.Bins[bin]; ok {
		path = b
	}
	p := &Proc{Name: name, bin: path, env: append(append(append(base, s.Opts.Env...), s.Opts.ProcEnv[name]...), env...),
		healthFile: filepath.Join(s.logDir, name+".health"), logPath: filepath.Join(s.logDir, name+".log")}
	if err := p.start(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.procs[name] = p
	s.mu.Unlock()
	return p, p.WaitReady(ctx, 60*time.Second)
}

func (p *Proc) start() error {
	_ = os.Remove(p.healthFile)
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin)
	cmd.Env = append(os.Environ(), append(p.env, "SHARDFLOW_HEALTH_ADDR_FILE="+p.healthFile)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	p.cmd, p.done, p.exitErr = cmd, make(chan struct{}), nil
	go func() {
		p.exitErr = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return nil
}

// Restart starts a stopped process again and waits until it is ready.
func (p *Proc) Restart(ctx context.Context) error {
	<-p.done
	if err := p.start(); err != nil {
		return err
	}
	return p.WaitReady(ctx, 60*time.Second)
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Log returns the tail of what the process wrote.
func (p *Proc) Log(lines int) string {
	b, _ := os.ReadFile(p.logPath)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// WaitReady waits until /readyz answers 200.
func (p *Proc) WaitReady(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	c := &http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited during start-up (%v):\n%s", p.Name, p.exitErr, p.Log(30))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if b, err := os.ReadFile(p.healthFile); err == nil && len(b) > 0 {
			resp, err := c.Get("http://" + strings.TrimSpace(string(b)) + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return nil
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %v:\n%s", p.Name, within, p.Log(30))
}

// Stop sends SIGTERM and waits up to within, then kills the process group.
func (p *Proc) Stop(within time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(within):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// RSS is the process's resident set size in bytes (VmRSS of
// /proc/<pid>/status).
func (p *Proc) RSS() (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid()) + "/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, err := strconv.ParseInt(f[1], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, errors.New("no VmRSS line")
}

// CPU is the process's user+system CPU time so far (/proc/<pid>/stat).
func (p *Proc) CPU() (time.Duration, error) {
	return procCPU(p.Pid())
}

func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	f := strings.Fields(s[i+1:])
	// fields after the command: state(0) ... utime(11) stime(12)
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}

// Account is the admin API's answer for a created account.
type Account struct {
	ID         string `json:"id"`
	Shard      int    `json:"shard"`
	WriteKey   string `json:"write_key"`
	Status     string `json:"status"`
	Generation int64  `json:"generation"`
}

// Admin calls the admin API, decodes the answer into out (may be nil) and
// returns the status code.
func (s *Stack) Admin(ctx context.Context, method, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.AdminURL()+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+AdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: decode %q: %w", method, path, b, err)
		}
	}
	return resp.StatusCode, nil
}

// CreateAccount creates an account with an unlimited (1,000,000/s) rate.
func (s *Stack) CreateAccount(ctx context.Context, id string) (Account, error) {
	var a Account
	code, err := s.Admin(ctx, "POST", "/v1/accounts", map[string]any{"id": id, "rate_limit": 1_000_000}, &a)
	if err == nil && code != 201 {
		err = fmt.Errorf("create account %s: HTTP %d", id, code)
	}
	return a, err
}

// SetTrigger points an account's track event at a webhook URL.
func (s *Stack) SetTrigger(ctx context.Context, account, event, url string) error {
	code, err := s.Admin(ctx, "PUT", "/v1/accounts/"+account+"/triggers/bench", map[string]string{"event": event, "channel": "webhook", "url": url}, nil)
	if err == nil && code != 200 {
		err = fmt.Errorf("set trigger: HTTP %d", code)
	}
	return err
}

// AccountStatus is the admin API's status of an account.
func (s *Stack) AccountStatus(ctx context.Context, id string) (string, error) {
	var out struct {
		Status string `json:"status"`
	}
	_, err := s.Admin(ctx, "GET", "/v1/accounts/"+id, nil, &out)
	return out.Status, err
}

// WaitDirectory waits until every service's directory can know the account
// (the KV entry exists and is active).
func (s *Stack) WaitDirectory(ctx context.Context, ids ...string) error {
	dir, err := streams.OpenDirectory(ctx, s.JS, nil)
	if err != nil {
		return err
	}
	defer dir.Close()
	for _, id := range ids {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := dir.Wait(wctx, id, func(a streams.Account, ok bool) bool { return ok && a.Status == streams.StatusActive })
		cancel()
		if err != nil {
			return fmt.Errorf("account %s not in the directory: %w", id, err)
		}
	}
	// The services watch the same bucket; give their watches a moment.
	time.Sleep(200 * time.Millisecond)
	return nil
}

// ShardOf is the shard the accounts service assigns to an id (FNV-32a).
func ShardOf(id string, shards int) int { return harness.ShardOf(id, shards) }

// IDsOnShard returns n account ids with prefix on the given shard.
func IDsOnShard(prefix string, n, shard, shards int) []string {
	var ids []string
	for i := 0; len(ids) < n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if ShardOf(id, shards) == shard {
			ids = append(ids, id)
		}
	}
	return ids
}
