// Package bench is shardflow's benchmark suite (make bench): every scenario
// runs against an embedded nats-server (file storage in a temporary
// directory) and the local Postgres (a fresh database per stack, dropped
// afterwards), with the services as the OS processes the integration
// harness builds. Every figure is reported next to a baseline measured in the
// same run (raw nats.go doing the same work), as a ratio.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/shardflow/shardflow/integration/harness"
)

// Config selects scenarios and sizes.
type Config struct {
	// Only lists the scenarios to run (empty: all).
	Only []string
	// Quick is the smoke mode: tiny sizes, a few seconds a scenario.
	Quick bool
	// Runs per figure (default 3; the medians need at least 3).
	Runs int
	// Backlog is the backlog scenario's size (default 1,000,000; 2,000 quick).
	Backlog int
	// Log receives progress lines. Default os.Stderr.
	Log io.Writer
	// ProfileDir, when set, is where the profile scenario writes its pprof
	// files.
	ProfileDir string
}

// Suite is one invocation.
type Suite struct {
	Cfg     Config
	Results *Results

	buildOnce sync.Once
	buildErr  error
	cleanup   func()
	logMu     sync.Mutex
}

// ScenarioFunc runs every run of a scenario and records its figures.
type ScenarioFunc func(ctx context.Context, s *Suite, sc *Scenario) error

type scenarioDef struct {
	name, title string
	procs       bool // needs the service binaries
	run         ScenarioFunc
}

// Scenarios lists the scenarios in order.
func Scenarios() []string {
	var out []string
	for _, d := range defs {
		out = append(out, d.name)
	}
	return out
}

var defs []scenarioDef

func init() {
	defs = []scenarioDef{
		{"stage", "1. Stage overhead: INBOUND_0 → OUTBOUND_0 pass-through, 1 KiB", false, runStage},
		{"ingest", "2. Ingest: HTTP /v1/batch (100 events a request) to JetStream acknowledgement", true, runIngest},
		{"e2e", "3. End to end: ingest → processor (Postgres) → sender → webhook", true, runE2E},
		{"backlog", "4. Backlog memory and drain (processor stopped while the backlog grows)", true, runBacklog},
		{"deletion", "5. Deletion under load", true, runDeletion},
		{"isolation", "6. Shard and account isolation", true, runIsolation},
		{"durability", "7. Durability cost: end to end with sync_interval: always", true, runDurability},
		{"profile", "Profile of the slowest scenario (end to end)", true, runProfile},
	}
}

// New returns a suite.
func New(cfg Config) *Suite {
	if cfg.Runs == 0 {
		cfg.Runs = 3
	}
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	if cfg.Backlog == 0 {
		cfg.Backlog = 1_000_000
		if cfg.Quick {
			cfg.Backlog = 2000
		}
	}
	return &Suite{Cfg: cfg}
}

// Logf prints a progress line.
func (s *Suite) Logf(format string, args ...any) {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	fmt.Fprintf(s.Cfg.Log, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// size picks the full or the quick size.
func (s *Suite) size(full, quick int) int {
	if s.Cfg.Quick {
		return quick
	}
	return full
}

func (s *Suite) build() error {
	s.buildOnce.Do(func() {
		s.Logf("building the service binaries")
		s.cleanup, s.buildErr = harness.BuildBinaries()
	})
	return s.buildErr
}

// Close removes the built binaries.
func (s *Suite) Close() {
	if s.cleanup != nil {
		s.cleanup()
	}
}

func selected(only []string, name string) bool {
	if len(only) == 0 {
		return true
	}
	return slices.Contains(only, name)
}

// Run runs the selected scenarios and returns the results. A scenario that
// fails is recorded with its error; the others still run.
func (s *Suite) Run(ctx context.Context) (*Results, error) {
	for _, o := range s.Cfg.Only {
		if !slices.ContainsFunc(defs, func(d scenarioDef) bool { return d.name == o }) {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", o, strings.Join(Scenarios(), ", "))
		}
	}
	t0 := time.Now()
	s.Results = &Results{
		Date:        time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		Cores:       runtime.NumCPU(),
		GoVersion:   runtime.Version(),
		NATSServer:  server.VERSION,
		NATSGo:      moduleVersion("github.com/nats-io/nats.go"),
		Storage:     "file (embedded nats-server, fresh temporary directory per stack)",
		Sync:        "default sync_interval (2m) unless a figure says sync_interval: always",
		Postgres:    postgresVersion(ctx),
		Quick:       s.Cfg.Quick,
		Runs:        s.Cfg.Runs,
		LoadAtStart: loadAvg(),
		CommandLine: strings.Join(os.Args, " "),
		Extra:       map[string]string{},
	}
	s.Results.Host, _ = os.Hostname()
	for _, d := range defs {
		if !selected(s.Cfg.Only, d.name) {
			continue
		}
		sc := &Scenario{Name: d.name, Title: d.title, Date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), Load: loadAvg(), Commit: gitCommit()}
		s.Results.Scenarios = append(s.Results.Scenarios, sc)
		st := time.Now()
		s.Logf("== %s (load %s)", d.title, loadAvg())
		var err error
		if d.procs {
			err = s.build()
		}
		if err == nil {
			err = d.run(ctx, s, sc)
		}
		sc.Finish()
		sc.Seconds = time.Since(st).Seconds()
		if err != nil {
			sc.Error = err.Error()
			s.Logf("%s failed: %v", d.name, err)
		}
		for _, f := range sc.Figures {
			line := fmt.Sprintf("   %-48s %10s %-8s runs %s", f.Name, fmtNum(f.Median), f.Unit, fmtRuns(f.Runs))
			if f.Baseline != "" {
				line += fmt.Sprintf("  ratio %.2f", f.RatioMedian)
			}
			s.Logf("%s", line)
		}
		if ctx.Err() != nil {
			break
		}
	}
	s.Results.TotalSeconds = time.Since(t0).Seconds()
	s.Results.LoadAtEnd = loadAvg()
	return s.Results, ctx.Err()
}

// Scenario returns a finished scenario by name (nil when it did not run).
func (r *Results) Scenario(name string) *Scenario {
	for _, s := range r.Scenarios {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func moduleVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == path {
				return m.Version
			}
		}
	}
	return "unknown"
}

// gitCommit names the code a scenario measured: HEAD, plus "+dirty" when
// the services or streams trees had uncommitted changes.
func gitCommit() string {
	root := harness.RepoRoot()
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--", "services", "streams", "schemas").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += "+dirty"
	}
	return c
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func postgresVersion(ctx context.Context) string {
	db, err := NewDatabase(ctx)
	if err != nil {
		return "unreachable: " + err.Error()
	}
	defer db.Close()
	var v string
	_ = db.Pool.QueryRow(ctx, "SHOW server_version").Scan(&v)
	return v
}

// rotate returns the variants in run r's order (each run starts one later,
// so no variant always runs first on a cold machine).
func rotate[T any](vs []T, r int) []T {
	if len(vs) == 0 {
		return vs
	}
	k := r % len(vs)
	return append(slices.Clone(vs[k:]), vs[:k]...)
}
