package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/shardflow/shardflow/integration/harness"
	"github.com/shardflow/shardflow/streams"
)

// The services take no pprof flag. The profile scenario builds processor,
// sender and ingest once more with `go build -overlay`, which adds one file
// to each main package at build time (the source tree is not touched): it
// serves net/http/pprof on 127.0.0.1:0 when SHARDFLOW_BENCH_PPROF_FILE names
// a file to write the address to. Everything else is the shipped code.
const pprofOverlay = `package main

import (
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	f := os.Getenv("SHARDFLOW_BENCH_PPROF_FILE")
	if f == "" {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return
	}
	_ = os.WriteFile(f, []byte(ln.Addr().String()), 0o644)
	go func() { _ = http.Serve(ln, http.DefaultServeMux) }()
}
`

var profiled = []string{"ingest", "processor", "sender"}

func buildProfiled(dir string) (map[string]string, error) {
	svc := filepath.Join(harness.RepoRoot(), "services")
	src := filepath.Join(dir, "zz_bench_pprof.go")
	if err := os.WriteFile(src, []byte(pprofOverlay), 0o644); err != nil {
		return nil, err
	}
	ov := map[string]map[string]string{"Replace": {}}
	for _, name := range profiled {
		ov["Replace"][filepath.Join(svc, name, "zz_bench_pprof.go")] = src
	}
	b, _ := json.Marshal(ov)
	ovPath := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(ovPath, b, 0o644); err != nil {
		return nil, err
	}
	bins := filepath.Join(dir, "bin")
	args := []string{"build", "-overlay", ovPath, "-o", bins + string(os.PathSeparator)}
	for _, name := range profiled {
		args = append(args, "./"+name)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = svc
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	m := map[string]string{}
	for _, name := range profiled {
		m[name] = filepath.Join(bins, name)
	}
	return m, nil
}

// ProfileReport holds the profiles' top entries.
type ProfileReport struct {
	Dir      string           `json:"dir"`
	Sections []ProfileSection `json:"sections"`
}

// ProfileSection is one profile.
type ProfileSection struct {
	Title string `json:"title"`
	File  string `json:"file"`
	Top   string `json:"top"`
}

// Markdown renders the sections.
func (p *ProfileReport) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Profiles (generated)\n\nFiles in `%s` (not kept in the repository). `go tool pprof -top` of each, trimmed:\n\n", p.Dir)
	for _, s := range p.Sections {
		fmt.Fprintf(&b, "### %s\n\n```\n%s\n```\n\n", s.Title, strings.TrimSpace(s.Top))
	}
	return b.String()
}

func pprofTop(bin, file string, extra ...string) string {
	args := append([]string{"tool", "pprof", "-top", "-nodecount=22"}, extra...)
	if bin != "" {
		args = append(args, bin)
	}
	args = append(args, file)
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("pprof failed: %v\n%s", err, out)
	}
	// Drop the header lines up to "flat  flat%".
	lines := strings.Split(string(out), "\n")
	for i, l := range lines {
		if strings.Contains(l, "flat%") {
			if i > 0 {
				return strings.Join(append([]string{lines[i-1]}, lines[i:]...), "\n")
			}
			break
		}
	}
	return string(out)
}

func fetch(ctx context.Context, url, file string) error {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %d %s", url, resp.StatusCode, b)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

func runProfile(ctx context.Context, s *Suite, sc *Scenario) error {
	dir := s.Cfg.ProfileDir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "shardflow-bench-profiles-"); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	rep := &ProfileReport{Dir: dir}
	s.Results.Profile = rep
	sc.Set("end to end (scenario 3, the slowest per event) run once more with ingest, processor and sender built with a pprof overlay (`go build -overlay`, adding net/http/pprof on a private port; the services' sources are untouched): CPU profile of each process over the saturated window, then its allocation profile (alloc_space since start)")
	sc.Set("stage (scenario 1, streams tuned) in process: CPU and allocation profile of the bench process (nats-server included) while the streams runtime drains the stage")

	bins, err := buildProfiled(dir)
	if err != nil {
		return err
	}
	// Pipeline with pprof.
	pf := map[string]string{}
	for _, name := range profiled {
		pf[name] = filepath.Join(dir, name+".pprof-addr")
	}
	res, err := s.measureE2EProfiled(ctx, StackOptions{Bins: bins}, pf, dir, rep)
	if err != nil {
		return err
	}
	sc.Declare("sustained end to end, pprof build", "events/s", "", nil)
	sc.Add("sustained end to end, pprof build", 0, res.Sustained)

	// Stage in process.
	if err := s.profileStage(ctx, dir, rep); err != nil {
		return err
	}
	return nil
}

func (s *Suite) measureE2EProfiled(ctx context.Context, opts StackOptions, pf map[string]string, dir string, rep *ProfileReport) (E2EResult, error) {
	// Each service writes its pprof address to its own file.
	return s.measureE2EWith(ctx, opts, 99, pf, func(ctx context.Context, p *pipeline, window time.Duration) {
		secs := max(int(window.Seconds())-1, 1)
		errs := make([]error, len(profiled))
		var wg sync.WaitGroup
		for i, name := range profiled {
			wg.Add(1)
			go func() {
				defer wg.Done()
				addr, _ := os.ReadFile(pf[name])
				file := filepath.Join(dir, name+".cpu.pprof")
				errs[i] = fetch(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs), file)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				rep.Sections = append(rep.Sections, ProfileSection{Title: profiled[i] + " CPU", Top: "failed: " + err.Error()})
			}
		}
		for _, name := range profiled {
			addr, _ := os.ReadFile(pf[name])
			file := filepath.Join(dir, name+".allocs.pprof")
			_ = fetch(ctx, fmt.Sprintf("http://%s/debug/pprof/allocs", addr), file)
		}
		for _, name := range profiled {
			cpu := filepath.Join(dir, name+".cpu.pprof")
			rep.Sections = append(rep.Sections, ProfileSection{Title: name + ": CPU, saturated end to end", File: cpu, Top: pprofTop(opts.Bins[name], cpu)})
			al := filepath.Join(dir, name+".allocs.pprof")
			rep.Sections = append(rep.Sections, ProfileSection{Title: name + ": allocated bytes since start", File: al, Top: pprofTop(opts.Bins[name], al, "-sample_index=alloc_space")})
		}
	})
}

func (s *Suite) profileStage(ctx context.Context, dir string, rep *ProfileReport) error {
	topo := streams.Topology{Shards: 1}.WithDefaults()
	n, err := StartNATS(ctx, topo, false)
	if err != nil {
		return err
	}
	defer n.Close()
	count := s.size(200_000, 3000)
	if _, err := SeedStage(ctx, n, count); err != nil {
		return err
	}
	cpu := filepath.Join(dir, "stage-streams.cpu.pprof")
	f, err := os.Create(cpu)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return err
	}
	_, err = stageStreams(ctx, n, count, StreamsTunedConcurrency, 1000, false)
	pprof.StopCPUProfile()
	f.Close()
	if err != nil {
		return err
	}
	al := filepath.Join(dir, "stage-streams.allocs.pprof")
	af, err := os.Create(al)
	if err != nil {
		return err
	}
	_ = pprof.Lookup("allocs").WriteTo(af, 0)
	af.Close()
	exe, _ := os.Executable()
	rep.Sections = append(rep.Sections,
		ProfileSection{Title: "stage, streams tuned, in process (bench process: nats-server + stage)", File: cpu, Top: pprofTop(exe, cpu)},
		ProfileSection{Title: "stage, streams tuned, in process: allocated bytes (whole bench process since start)", File: al, Top: pprofTop(exe, al, "-sample_index=alloc_space")},
	)
	return nil
}
