package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardflow/shardflow/services/internal/status"
	"github.com/shardflow/shardflow/streams"
)

// TestStack runs the real stack end to end: embedded NATS, migrations on a
// fresh Postgres schema, every service built and started as a process, demo
// accounts and traffic, the sink and the view, for about 30 s. It needs the
// local Postgres (make postgres) and fails, never skips, without it.
func TestStack(t *testing.T) {
	dsn := testSchema(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "") // no traces, whatever the environment says

	out := &syncBuffer{}
	cfg := Config{
		NATSPort:     freePort(t),
		DataDir:      t.TempDir(),
		DatabaseURL:  dsn,
		Shards:       2,
		AdminToken:   "stack-test-token",
		IngestAddr:   "127.0.0.1:" + strconv.Itoa(freePort(t)),
		AdminAddr:    "127.0.0.1:" + strconv.Itoa(freePort(t)),
		SinkAddr:     "127.0.0.1:" + strconv.Itoa(freePort(t)),
		Rate:         40,
		ViewInterval: time.Second,
		Duration:     25 * time.Second,
		NoJaeger:     true,
		ReadyTimeout: 2 * time.Minute,
		StopTimeout:  20 * time.Second,
		Out:          out,
	}
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	err := run(ctx, cfg)
	text := out.String()
	t.Logf("stack output:\n%s", text)
	if err != nil {
		t.Fatalf("run: %v", err)
	}

	// Every demo account got deliveries (the totals printed at the end).
	totals := regexp.MustCompile(`(?m)^\s+(demo-\d+)\s+shard (\d+) \| accepted (\d+) \| refused (\d+) \| delivered (\d+)`)
	accounts := totals.FindAllStringSubmatch(text, -1)
	if len(accounts) == 0 {
		t.Fatal("no totals line for any demo account")
	}
	shardsWithAccount := map[string]bool{}
	for _, m := range accounts {
		shardsWithAccount[m[2]] = true
		if accepted, _ := strconv.Atoi(m[3]); accepted == 0 {
			t.Errorf("%s: no event accepted", m[1])
		}
		if delivered, _ := strconv.Atoi(m[5]); delivered == 0 {
			t.Errorf("%s: the sink received no delivery", m[1])
		}
	}
	if len(shardsWithAccount) != cfg.Shards {
		t.Errorf("demo accounts cover shards %v, want all %d", shardsWithAccount, cfg.Shards)
	}

	// The view printed a line per shard with deliveries.
	row := regexp.MustCompile(`(?m)^shard (\d+) \| accepted\s+(\d+) \| processed\s+(\d+) \| delivered\s+(\d+) \| pending in\s+(\d+) out\s+(\d+) \| dead-lettered (\d+)$`)
	delivered := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(text, -1) {
		if n, _ := strconv.Atoi(m[4]); n > 0 {
			delivered[m[1]] = true
		}
	}
	for s := range cfg.Shards {
		if !delivered[strconv.Itoa(s)] {
			t.Errorf("the view never showed deliveries on shard %d", s)
		}
	}
	for _, want := range []string{"==> starting NATS", "==> provisioned 2 shards", "==> all services ready", "==> goodbye"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(text, "bad signatures") {
		t.Error("the sink saw bad signatures")
	}
}

// testSchema creates a fresh schema in the test database and returns a DSN
// selecting it; the schema is dropped when the test ends.
func testSchema(t *testing.T) string {
	t.Helper()
	base := cmp.Or(os.Getenv("SHARDFLOW_TEST_DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("cannot reach the test database (%s): %v; start Postgres with `make postgres`", base, err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "stack_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Logf("drop schema %s: %v", schema, err)
		}
		_ = conn.Close(ctx)
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ---- unit tests of the pieces ----

type fakeDir map[string]streams.Account

func (d fakeDir) Lookup(id string) (streams.Account, bool) { a, ok := d[id]; return a, ok }

func TestSinkVerifiesSignatures(t *testing.T) {
	dir := fakeDir{"acme": {ID: "acme", Shard: 1, Secret: "s3cret"}}
	s := newSink(dir, 2, discardLogger())
	srv := httptest.NewServer(s.routes())
	defer srv.Close()
	post := func(account, sig string) int {
		req, _ := http.NewRequest("POST", srv.URL+"/hook", strings.NewReader(`{"id":"m1"}`))
		req.Header.Set(headerAccount, account)
		req.Header.Set(headerSignature, sig)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("acme", sign("s3cret", []byte(`{"id":"m1"}`))); code != 200 {
		t.Errorf("good signature: HTTP %d", code)
	}
	if code := post("acme", sign("wrong", []byte(`{"id":"m1"}`))); code != 401 {
		t.Errorf("bad signature: HTTP %d", code)
	}
	if code := post("nobody", "sha256=00"); code != 503 {
		t.Errorf("unknown account: HTTP %d", code)
	}
	st := s.snapshot()
	if st.ByAccount["acme"] != 1 || st.ByShard[1] != 1 || st.ByShard[0] != 0 || st.Rejected["acme"] != 1 {
		t.Errorf("counts: %+v", st)
	}
}

func TestCounterByShard(t *testing.T) {
	text := `# HELP shardflow_stage_acked_total Messages acked.
# TYPE shardflow_stage_acked_total counter
shardflow_stage_acked_total{shard="0",stage="processor"} 12
shardflow_stage_acked_total{shard="1",stage="processor"} 7
shardflow_stage_acked_total{shard="1",stage="sender"} 99
shardflow_stage_acked_totalx{shard="1",stage="processor"} 5
shardflow_stage_acked_total{job="a\"b",shard="1",stage="processor"} 1e3
`
	got, err := status.CounterByShard(strings.NewReader(text), "shardflow_stage_acked_total", "processor")
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != 12 || got[1] != 1007 || len(got) != 2 {
		t.Errorf("got %v", got)
	}
}

func TestProcFilter(t *testing.T) {
	p := &proc{service: true}
	for line, want := range map[string]bool{
		`{"time":"x","level":"INFO","msg":"listening","addr":"127.0.0.1:1"}`: true,
		`{"time":"x","level":"INFO","msg":"stage started"}`:                  false,
		`{"time":"x","level":"WARN","msg":"slow"}`:                           true,
		`{"time":"x","level":"ERROR","msg":"boom"}`:                          true,
		`{"time":"x","level":"DEBUG","msg":"x"}`:                             false,
		`processor: cannot connect`:                                          true,
		``:                                                                   false,
	} {
		if got := p.show(line); got != want {
			t.Errorf("show(%q) = %v, want %v", line, got, want)
		}
	}
	j := &proc{}
	if j.show("2025-01-01 info started") || !j.show("2025-01-01 error failed") {
		t.Error("non-service filter")
	}
}

func TestLineWriter(t *testing.T) {
	var got []string
	w := &lineWriter{emit: func(s string) { got = append(got, s) }}
	_, _ = w.Write([]byte("a\nb"))
	_, _ = w.Write([]byte("c\r\nd"))
	w.flush()
	if strings.Join(got, "|") != "a|bc|d" {
		t.Errorf("got %q", got)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
