package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/services/internal/accounts"
	"github.com/shardflow/shardflow/services/internal/db/dbtest"
	"github.com/shardflow/shardflow/services/internal/dlq"
	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

func parse(t *testing.T, args ...string) Config {
	t.Helper()
	var cfg Config
	p, err := kong.New(&cfg, kong.Name("accounts"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Parse(args); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestRefusesToStartWithoutToken(t *testing.T) {
	t.Setenv("SHARDFLOW_ADMIN_TOKEN", "")
	cfg := parse(t)
	if cfg.AdminAddr != "127.0.0.1:8081" || cfg.DeletionGrace.String() != "2s" || cfg.Shards != 4 {
		t.Errorf("defaults: %+v", cfg)
	}
	err := run(t.Context(), cfg)
	if err == nil || !strings.Contains(err.Error(), "SHARDFLOW_ADMIN_TOKEN") {
		t.Fatalf("run without a token: %v, want a refusal naming SHARDFLOW_ADMIN_TOKEN", err)
	}
}

func TestEnvironment(t *testing.T) {
	t.Setenv("SHARDFLOW_ADMIN_TOKEN", "s3cret")
	t.Setenv("SHARDFLOW_ADMIN_ADDR", "127.0.0.1:9999")
	t.Setenv("SHARDFLOW_DELETION_GRACE", "250ms")
	cfg := parse(t)
	if cfg.AdminToken != "s3cret" || cfg.AdminAddr != "127.0.0.1:9999" || cfg.DeletionGrace.String() != "250ms" {
		t.Errorf("from the environment: %+v", cfg)
	}
}

func TestCrashStepFromEnv(t *testing.T) {
	t.Setenv(EnvCrashAfterStep, "purged")
	if step, err := crashStepFromEnv(); err != nil || step != "purged" {
		t.Errorf("purged: %q, %v", step, err)
	}
	t.Setenv(EnvCrashAfterStep, "purge")
	if _, err := crashStepFromEnv(); err == nil || !strings.Contains(err.Error(), "rows_deleted") {
		t.Errorf("a typo must be refused, naming the steps: %v", err)
	}
	t.Setenv(EnvCrashAfterStep, "")
	if step, err := crashStepFromEnv(); err != nil || step != "" {
		t.Errorf("unset: %q, %v", step, err)
	}
}

// TestAdminHandler checks the admin address serves both APIs.
func TestAdminHandler(t *testing.T) {
	srv := natsembed.Test(t)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	topo := streams.Topology{Shards: 1}.WithDefaults()
	if _, err := streams.Provision(t.Context(), js, topo, nil); err != nil {
		t.Fatal(err)
	}
	pool, _ := dbtest.New(t)
	svc, err := accounts.New(t.Context(), accounts.Config{Pool: pool, JetStream: js, Topology: topo, AdminToken: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	store := dlq.NewStore(pool)
	replayer, err := dlq.NewReplayer(dlq.ReplayerConfig{Store: store, JetStream: js})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(adminHandler(svc.Handler(), dlq.Handler(store, replayer, "tok")))
	t.Cleanup(hs.Close)

	for _, c := range []struct {
		method, path, token, body string
		status                    int
		contains                  string
	}{
		{"POST", "/v1/accounts", "tok", `{"id":"acme"}`, http.StatusCreated, `"write_key"`},
		{"GET", "/v1/accounts/acme", "tok", "", http.StatusOK, `"deletion": null`},
		{"GET", "/v1/deadletters?account=acme", "tok", "", http.StatusOK, `"dead_letters"`},
		{"GET", "/v1/deadletters/INBOUND_0:1", "tok", "", http.StatusNotFound, `"error"`},
		{"GET", "/v1/deadletters", "", "", http.StatusUnauthorized, `"error"`},
		{"GET", "/v1/accounts/acme", "", "", http.StatusUnauthorized, `"error"`},
		{"GET", "/v1/nothing", "tok", "", http.StatusNotFound, `"error"`},
	} {
		req, err := http.NewRequestWithContext(t.Context(), c.method, hs.URL+c.path, strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status || !strings.Contains(string(b), c.contains) {
			t.Errorf("%s %s: %d %s; want %d containing %s", c.method, c.path, resp.StatusCode, b, c.status, c.contains)
		}
	}
}
