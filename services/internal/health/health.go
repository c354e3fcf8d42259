package health

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// CheckTimeout bounds each readiness check; its context ends after it.
const CheckTimeout = 2 * time.Second

// Checks is a set of named readiness checks. The zero value is empty and
// ready to use; it is safe for concurrent use, so checks may be added while
// the handler serves.
type Checks struct {
	mu     sync.Mutex
	checks []namedCheck
}

type namedCheck struct {
	name  string
	check func(context.Context) error
}

// Add registers check under name. A check returns nil when the dependency it
// looks at is usable. Adding a name twice keeps both checks.
func (c *Checks) Add(name string, check func(ctx context.Context) error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checks = append(c.checks, namedCheck{name: name, check: check})
}

// Run runs every check concurrently, each bounded by CheckTimeout, and
// returns the error text of those that failed, by name (empty when ready).
func (c *Checks) Run(ctx context.Context) map[string]string {
	c.mu.Lock()
	checks := append([]namedCheck(nil), c.checks...)
	c.mu.Unlock()

	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, nc := range checks {
		wg.Go(func() { errs[i] = runOne(ctx, nc) })
	}
	wg.Wait()

	failed := map[string]string{}
	for i, err := range errs {
		if err != nil {
			failed[checks[i].name] = err.Error()
		}
	}
	return failed
}

func runOne(ctx context.Context, nc namedCheck) error {
	ctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("check panicked: %v", p)
			}
		}()
		done <- nc.check(ctx)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	// A check that ignores its context must not hold up /readyz; one that
	// honours it gets a moment to report its own, more specific error.
	grace := time.NewTimer(50 * time.Millisecond)
	defer grace.Stop()
	select {
	case err := <-done:
		return err
	case <-grace.C:
		return fmt.Errorf("check did not finish within %s: %w", CheckTimeout, context.Cause(ctx))
	}
}

type readiness struct {
	Ready  bool              `json:"ready"`
	Failed map[string]string `json:"failed,omitempty"`
}

// Handler returns the mux serving /healthz, /readyz and, when metrics is not
// nil, /metrics. checks may be nil (always ready).
func Handler(checks *Checks, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		res := readiness{Ready: true}
		if checks != nil {
			if failed := checks.Run(r.Context()); len(failed) > 0 {
				res = readiness{Ready: false, Failed: failed}
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if !res.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(res)
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
}
