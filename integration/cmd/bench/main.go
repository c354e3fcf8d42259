// Command bench runs shardflow's benchmark suite (make bench) and writes
// docs/benchmarks.md and docs/benchmarks.json.
//
//	make bench                          # every scenario, 3 runs each
//	make bench ARGS='-only stage,ingest' # some scenarios
//	make bench ARGS='-quick'            # smoke run: tiny sizes, a few seconds a scenario
//
// Run it on a quiet machine: it refuses to start while the load average is
// above -max-load (default 1.5), unless -force.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/shardflow/shardflow/integration/bench"
	"github.com/shardflow/shardflow/integration/harness"
)

func main() {
	only := flag.String("only", "", "comma-separated scenarios to run ("+strings.Join(bench.Scenarios(), ",")+"); default all")
	quick := flag.Bool("quick", false, "smoke run: tiny sizes (figures are meaningless)")
	runs := flag.Int("runs", 3, "runs per figure (medians need at least 3)")
	backlog := flag.Int("backlog", 0, "backlog scenario size (default 1000000, the failure-handling issue's; about 90 s a run here)")
	out := flag.String("out", filepath.Join(harness.RepoRoot(), "docs"), "directory for benchmarks.md and benchmarks.json")
	profDir := flag.String("profile-dir", "", "where the profile scenario keeps its pprof files (default: a temporary directory)")
	maxLoad := flag.Float64("max-load", 1.5, "refuse to start while the 1-minute load average is above this")
	force := flag.Bool("force", false, "run even on a busy machine")
	merge := flag.Bool("merge", false, "keep the scenarios of the existing benchmarks.json that this invocation does not run")
	render := flag.Bool("render", false, "run nothing: rewrite benchmarks.md from benchmarks.json (after editing the notes)")
	flag.Parse()

	if *render {
		res, err := bench.ReadResults(filepath.Join(*out, "benchmarks.json"))
		if err == nil {
			err = res.WriteFiles(*out, bench.Header, bench.Findings)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -render:", err)
			os.Exit(1)
		}
		return
	}

	if !*quick && !*force {
		if l := load1(); l > *maxLoad {
			fmt.Fprintf(os.Stderr, "bench: load average %.2f is above %.2f: other work would distort the figures. Wait, or pass -force (or -quick for a smoke run).\n", l, *maxLoad)
			os.Exit(2)
		}
	}
	cfg := bench.Config{Quick: *quick, Runs: *runs, Backlog: *backlog, ProfileDir: *profDir}
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s := bench.New(cfg)
	res, err := s.Run(ctx)
	s.Close() // the built binaries; before any os.Exit
	if res == nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if *merge {
		if older, rerr := bench.ReadResults(filepath.Join(*out, "benchmarks.json")); rerr == nil {
			res.Merge(older)
		} else {
			fmt.Fprintln(os.Stderr, "bench: -merge: nothing to merge:", rerr)
		}
	}
	if werr := res.WriteFiles(*out, bench.Header, bench.Findings); werr != nil {
		fmt.Fprintln(os.Stderr, "bench: write report:", werr)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s and %s\n", filepath.Join(*out, "benchmarks.md"), filepath.Join(*out, "benchmarks.json"))
	failed := false
	for _, sc := range res.Scenarios {
		if sc.Error != "" {
			failed = true
			fmt.Fprintf(os.Stderr, "bench: scenario %s failed: %s\n", sc.Name, sc.Error)
		}
	}
	if err != nil || failed {
		os.Exit(1)
	}
}

func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
