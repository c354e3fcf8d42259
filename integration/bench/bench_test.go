package bench

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuick runs the smoke mode of the stage and ingest scenarios: it proves
// the program works (every figure produced and positive, the report
// written). It asserts nothing about speed.
func TestQuick(t *testing.T) {
	var log bytes.Buffer
	s := New(Config{Quick: true, Only: []string{"stage", "ingest"}, Log: &log})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := s.Run(ctx)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, log.String())
	}
	if len(res.Scenarios) != 2 {
		t.Fatalf("%d scenarios ran, want 2", len(res.Scenarios))
	}
	for _, sc := range res.Scenarios {
		if sc.Error != "" {
			t.Fatalf("scenario %s failed: %s\n%s", sc.Name, sc.Error, log.String())
		}
		if len(sc.Figures) == 0 {
			t.Fatalf("scenario %s produced no figures", sc.Name)
		}
		for _, f := range sc.Figures {
			if len(f.Runs) != res.Runs {
				t.Errorf("%s / %s: %d runs, want %d", sc.Name, f.Name, len(f.Runs), res.Runs)
			}
			for i, v := range f.Runs {
				if !(v > 0) {
					t.Errorf("%s / %s: run %d = %v, want > 0", sc.Name, f.Name, i+1, v)
				}
			}
			if f.Baseline != "" && !(f.RatioMedian > 0) {
				t.Errorf("%s / %s: no ratio against %s", sc.Name, f.Name, f.Baseline)
			}
		}
	}
	dir := t.TempDir()
	if err := res.WriteFiles(dir, Header, Findings); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "benchmarks.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"streams, tuned", "Watermill, defaults", "ingest /v1/batch", "cores", res.NATSServer} {
		if !strings.Contains(string(md), want) {
			t.Errorf("benchmarks.md does not mention %q", want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "benchmarks.json")); err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		t.Log(log.String())
	}
}
