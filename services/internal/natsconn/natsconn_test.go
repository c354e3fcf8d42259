package natsconn_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/shardflow/shardflow/services/internal/natsconn"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startServer runs an embedded nats-server on port (-1: any) with user
// "svc" (password "pw"), who may publish anywhere but forbidden.> and
// subscribe only to svc.> and its own inbox prefix _INBOX_svc.>.
func startServer(t *testing.T, port int) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host:   "127.0.0.1",
		Port:   port,
		NoLog:  true,
		NoSigs: true,
		Users: []*server.User{{
			Username: "svc",
			Password: "pw",
			Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"forbidden.>"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"svc.>", "_INBOX_svc.>"}},
			},
		}},
	})
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

func serverURL(s *server.Server) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", s.Addr().(*net.TCPAddr).Port)
}

// freePort returns a port nothing listens on (for a moment).
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port
}

// logBuffer is a concurrency-safe log sink.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(within)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s", within, what)
		case <-tick.C:
		}
	}
}

func connect(t *testing.T, cfg natsconn.Config) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	nc, err := natsconn.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func TestPermissionViolationReported(t *testing.T) {
	s := startServer(t, -1)
	var logs logBuffer
	var violations atomic.Int32
	var lastErr atomic.Value
	nc := connect(t, natsconn.Config{
		URL: serverURL(s), Name: "test", User: "svc", Password: "pw",
		Logger: logs.logger(),
		OnPermissionViolation: func(err error) {
			lastErr.Store(err)
			violations.Add(1)
		},
	})

	if err := nc.Publish("allowed.subject", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := violations.Load(); n != 0 {
		t.Fatalf("allowed publish reported %d violations", n)
	}

	if err := nc.Publish("forbidden.thing", []byte("x")); err != nil {
		t.Fatalf("Publish returned %v; the refusal is expected to be asynchronous", err)
	}
	eventually(t, 5*time.Second, "OnPermissionViolation", func() bool { return violations.Load() > 0 })
	err, _ := lastErr.Load().(error)
	if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), "forbidden.thing") {
		t.Errorf("violation error = %v, want ErrPermissionViolation naming the subject", err)
	}
	eventually(t, 5*time.Second, "the violation logged at error level", func() bool {
		l := logs.String()
		return strings.Contains(l, `"level":"ERROR"`) && strings.Contains(l, "nats permissions violation")
	})
	if !nc.IsConnected() {
		t.Error("a permissions violation closed the connection")
	}
}

func TestInboxPrefixAllowsRequestsUnderLeastPrivilege(t *testing.T) {
	s := startServer(t, -1)
	responder := connect(t, natsconn.Config{URL: serverURL(s), User: "svc", Password: "pw"})
	if _, err := responder.Subscribe("svc.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := responder.Flush(); err != nil {
		t.Fatal(err)
	}
	nc := connect(t, natsconn.Config{URL: serverURL(s), User: "svc", Password: "pw", InboxPrefix: "_INBOX_svc"})
	msg, err := nc.Request("svc.echo", []byte("hi"), 5*time.Second)
	if err != nil || string(msg.Data) != "hi" {
		t.Fatalf("request through the custom inbox: %v, %v", msg, err)
	}
}

func TestConnectFailsNamingURLWhenUnreachable(t *testing.T) {
	url := "nats://127.0.0.1:" + strconv.Itoa(freePort(t))
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	nc, err := natsconn.Connect(ctx, natsconn.Config{URL: url, Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		nc.Close()
		t.Fatal("Connect to a closed port succeeded")
	}
	if !strings.Contains(err.Error(), url) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error = %v, want one naming %s and wrapping the context's error", err, url)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Connect took %s after a 500ms deadline", took)
	}
}

func TestConnectRejectsBadCredentials(t *testing.T) {
	s := startServer(t, -1)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	nc, err := natsconn.Connect(ctx, natsconn.Config{
		URL: serverURL(s), User: "svc", Password: "wrong", Logger: slog.New(slog.DiscardHandler),
	})
	if err == nil {
		nc.Close()
		t.Fatal("Connect with a wrong password succeeded")
	}
	t.Logf("error: %v", err)
	if !strings.Contains(err.Error(), serverURL(s)) || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("error = %v, want one naming the URL and the authorization failure", err)
	}
}

func TestConnectWaitsForLateServerAndReconnects(t *testing.T) {
	port := freePort(t)
	var logs logBuffer
	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		nc, err := natsconn.Connect(ctx, natsconn.Config{
			URL: "nats://svc:pw@127.0.0.1:" + strconv.Itoa(port), Logger: logs.logger(),
		})
		done <- result{nc, err}
	}()
	eventually(t, 5*time.Second, "Connect to start retrying", func() bool {
		return strings.Contains(logs.String(), "nats not reachable yet")
	})
	if strings.Contains(logs.String(), ":pw@") {
		t.Errorf("password logged: %s", logs.String())
	}

	s := startServer(t, port)
	r := <-done
	if r.err != nil {
		t.Fatalf("Connect with a server started late: %v", r.err)
	}
	nc := r.nc
	defer nc.Close()

	// Restart the server: the client logs the disconnect and reconnects.
	s.Shutdown()
	s.WaitForShutdown()
	eventually(t, 5*time.Second, "disconnect logged at warn", func() bool {
		l := logs.String()
		return strings.Contains(l, `"level":"WARN","msg":"nats disconnected"`)
	})
	startServer(t, port)
	eventually(t, 10*time.Second, "reconnect", nc.IsConnected)
	eventually(t, 5*time.Second, "reconnect logged at info", func() bool {
		return strings.Contains(logs.String(), `"level":"INFO","msg":"nats reconnected"`)
	})
}

func TestConfigRejectsTwoAuthMethods(t *testing.T) {
	_, err := natsconn.Connect(t.Context(), natsconn.Config{User: "a", CredsFile: "/x.creds"})
	if err == nil || !strings.Contains(err.Error(), "at most one") {
		t.Errorf("error = %v", err)
	}
}

func TestIsPermissionViolation(t *testing.T) {
	for err, want := range map[error]bool{
		nil:                         false,
		errors.New("timeout"):       false,
		nats.ErrPermissionViolation: true,
		fmt.Errorf("%w: Permissions Violation for Publish to \"x\"", nats.ErrPermissionViolation): true,
		errors.New(`nats: Permissions Violation for Subscription to "y"`):                         true,
	} {
		if got := natsconn.IsPermissionViolation(err); got != want {
			t.Errorf("IsPermissionViolation(%v) = %v", err, got)
		}
	}
}
