package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/services/internal/db/dbtest"
	"github.com/shardflow/shardflow/services/internal/dlq"
	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

func parse(t *testing.T, args ...string) config {
	t.Helper()
	var cfg config
	p, err := kong.New(&cfg, kong.Name("deadletter"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Parse(args); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestConfig(t *testing.T) {
	t.Setenv("SHARDFLOW_SWEEP_INTERVAL", "") // restored after the test
	_ = os.Unsetenv("SHARDFLOW_SWEEP_INTERVAL")
	t.Setenv("SHARDFLOW_SHARDS", "")
	_ = os.Unsetenv("SHARDFLOW_SHARDS")
	if cfg := parse(t); cfg.SweepInterval != 30*time.Second || cfg.Shards != 4 {
		t.Errorf("defaults: %+v", cfg)
	}
	if cfg := parse(t, "--sweep-interval=5s", "--shards=2"); cfg.SweepInterval != 5*time.Second || cfg.Shards != 2 {
		t.Errorf("flags: %+v", cfg)
	}
	t.Setenv("SHARDFLOW_SWEEP_INTERVAL", "250ms")
	if cfg := parse(t); cfg.SweepInterval != 250*time.Millisecond {
		t.Errorf("environment: %+v", cfg)
	}
}

// TestService runs the binary's run against a real nats-server and Postgres:
// it indexes a dead letter, dead-letters and indexes a message a worker
// crashed on every time, reports ready, and stops on cancel.
func TestService(t *testing.T) {
	srv := natsembed.Test(t)
	_, dsn := dbtest.New(t)
	healthFile := filepath.Join(t.TempDir(), "health")
	t.Setenv("SHARDFLOW_HEALTH_ADDR_FILE", healthFile)
	cfg := parse(t, "--nats-url="+srv.ClientURL(), "--database-url="+dsn, "--shards=2",
		"--health-addr=127.0.0.1:0", "--sweep-interval=200ms", "--shutdown-timeout=10s", "--log-level=warn")

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// The service's streams, with a fast processor so a crash loop is
	// max-delivered within a second.
	topo := cfg.Topology()
	for i, c := range topo.Consumers {
		if c.Name == streams.StageProcessor {
			topo.Consumers[i].MaxDeliver, topo.Consumers[i].BackOff = 2, []time.Duration{100 * time.Millisecond}
		}
	}
	if _, err := streams.Provision(t.Context(), js, topo, nil); err != nil {
		t.Fatal(err)
	}

	env := streams.Envelope("inbound.1.acme.track", nil, []byte(`{}`), "INBOUND_1", 42, streams.StageProcessor,
		streams.ClassSchemaInvalid, errors.New("missing event"), 1, time.Now(), time.Now())
	if err := streams.PublishDeadLetter(t.Context(), js, env); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("service did not stop within 20s")
		}
	}
	defer stop()

	store := openStore(t, dsn)
	eventually(t, 20*time.Second, func() error {
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("service exited: %v", err)
		default:
		}
		_, err := store.Get(t.Context(), env.ID)
		return err
	})
	eventually(t, 10*time.Second, func() error {
		addr, err := os.ReadFile(healthFile)
		if err != nil || len(addr) == 0 {
			return fmt.Errorf("health address not written yet: %v", err)
		}
		resp, err := http.Get("http://" + strings.TrimSpace(string(addr)) + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})

	// A worker that dies on its message every time: never acked.
	p, err := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Publish(t.Context(), streams.Message{
		Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "acme", Type: "track"},
		ID:      streams.MessageID("acme", 1, "crash"), Generation: 1, Data: []byte("crash"),
	})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(t.Context(), "INBOUND_0", streams.StageProcessor)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(t.Context())
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		for wctx.Err() == nil {
			if b, err := cons.Fetch(1, jetstream.FetchMaxWait(200*time.Millisecond)); err == nil {
				for range b.Messages() {
				}
			}
		}
	}()
	defer func() { wcancel(); <-wdone }()
	id := fmt.Sprintf("INBOUND_0:%d", res.Sequence)
	eventually(t, 20*time.Second, func() error {
		row, err := store.Get(t.Context(), id)
		if err != nil {
			return err
		}
		if row.ErrorClass != streams.ClassMaxDeliver || row.Attempts != 2 {
			return fmt.Errorf("row %+v", row)
		}
		return nil
	})

	t0 := time.Now()
	stop()
	if d := time.Since(t0); d > 15*time.Second {
		t.Fatalf("stop took %v", d)
	}
}

// openStore reads the schema the service writes.
func openStore(t *testing.T, dsn string) *dlq.Store {
	t.Helper()
	pool, err := db.Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return dlq.NewStore(pool)
}

func eventually(t *testing.T, within time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
