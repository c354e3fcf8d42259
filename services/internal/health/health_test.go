package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/shardflow/shardflow/services/internal/health"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, h http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func TestHealthzAndMetrics(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("up 1\n"))
	})
	h := health.Handler(nil, metrics)

	if rec := get(t, h, "/healthz"); rec.Code != http.StatusOK || rec.Body.String() != "ok" {
		t.Errorf("/healthz = %d %q, want 200 ok", rec.Code, rec.Body)
	}
	if rec := get(t, h, "/metrics"); rec.Code != http.StatusOK || rec.Body.String() != "up 1\n" {
		t.Errorf("/metrics = %d %q, want the metrics handler's output", rec.Code, rec.Body)
	}
	if rec := get(t, h, "/readyz"); rec.Code != http.StatusOK {
		t.Errorf("/readyz without checks = %d, want 200", rec.Code)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/healthz", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d, want 405", rec.Code)
	}
	if rec := get(t, health.Handler(nil, nil), "/metrics"); rec.Code != http.StatusNotFound {
		t.Errorf("/metrics without a handler = %d, want 404", rec.Code)
	}
}

func TestReadyz(t *testing.T) {
	var checks health.Checks
	checks.Add("postgres", func(context.Context) error { return nil })
	h := health.Handler(&checks, nil)

	rec := get(t, h, "/readyz")
	if rec.Code != http.StatusOK || strings.TrimSpace(rec.Body.String()) != `{"ready":true}` {
		t.Fatalf("/readyz all passing = %d %s", rec.Code, rec.Body)
	}

	checks.Add("nats", func(context.Context) error { return errors.New("nats: no servers available") })
	checks.Add("panics", func(context.Context) error { panic("boom") })
	rec = get(t, h, "/readyz")
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with a failing check = %d, want 503", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	var body struct {
		Ready  bool              `json:"ready"`
		Failed map[string]string `json:"failed"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %s: %v", rec.Body, err)
	}
	if body.Ready || len(body.Failed) != 2 || body.Failed["nats"] != "nats: no servers available" ||
		!strings.Contains(body.Failed["panics"], "boom") {
		t.Errorf("body = %+v, want ready=false and failed nats and panics only", body)
	}
}

func TestReadyzCheckTimeout(t *testing.T) {
	var checks health.Checks
	// Honours its context: reports its own error at the deadline.
	checks.Add("slow", func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	})
	// Ignores its context: the handler stops waiting for it.
	release := make(chan struct{})
	defer close(release)
	checks.Add("stuck", func(context.Context) error {
		<-release
		return nil
	})
	start := time.Now()
	failed := checks.Run(t.Context())
	if took := time.Since(start); took < health.CheckTimeout || took > health.CheckTimeout+time.Second {
		t.Errorf("Run took %s, want about %s", took, health.CheckTimeout)
	}
	if failed["slow"] != context.DeadlineExceeded.Error() {
		t.Errorf("slow check: %q", failed["slow"])
	}
	if !strings.Contains(failed["stuck"], "did not finish within 2s") {
		t.Errorf("stuck check: %q", failed["stuck"])
	}
}
