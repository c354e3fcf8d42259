package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

// The binary end to end: it declares its consumer on every shard, writes
// the lifecycle events (the deleted one included) into audit_log, serves
// /healthz, /readyz and /metrics, stops on its context within the shutdown
// timeout, and a restart finds nothing new to write.
func TestRunWritesLifecycleEventsAndStops(t *testing.T) {
	srv := natsembed.Test(t)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	platform := streams.Topology{Shards: 2}.WithDefaults() // as `sfctl provision` leaves it
	if _, err := streams.Provision(t.Context(), js, platform, nil); err != nil {
		t.Fatal(err)
	}
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: platform})
	events := []struct {
		account string
		shard   int
		typ     string
	}{{"acme", 0, "created"}, {"globex", 1, "created"}, {"acme", 0, "suspended"}, {"acme", 0, "deleted"}}
	for _, ev := range events {
		data, _ := json.Marshal(accountEvent{Type: ev.typ, Account: ev.account, Shard: ev.shard, Generation: 1, At: time.Now().UTC()})
		if _, err := pub.Publish(t.Context(), streams.Message{
			Subject: streams.Subject{Kind: streams.KindAccounts, Shard: ev.shard, Account: ev.account, Type: ev.typ},
			ID:      streams.MessageID(ev.account, 1, ev.typ), Generation: 1, Data: data,
		}); err != nil {
			t.Fatal(err)
		}
	}

	dsn := testSchema(t)
	cfg := config{
		NATSURL: srv.ClientURL(), Shards: 2, Replicas: 1, MaxEventBytes: 32 << 10,
		Consumer: "auditsink:accounts:max_deliver=10", Provision: true, Concurrency: 4,
		DatabaseURL: dsn, HealthAddr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second,
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	check := newPool(t, dsn)
	start := func() (addr string, stop func() time.Duration) {
		ctx, cancel := context.WithCancel(context.Background())
		addrc := make(chan string, 1)
		done := make(chan error, 1)
		go func() { done <- run(ctx, cfg, log, func(a string) { addrc <- a }) }()
		select {
		case addr = <-addrc:
		case err := <-done:
			t.Fatalf("run: %v", err)
		}
		return addr, func() time.Duration {
			begin := time.Now()
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run returned %v after the stop", err)
				}
			case <-time.After(cfg.ShutdownTimeout + 5*time.Second):
				t.Fatal("run did not return after the stop")
			}
			return time.Since(begin)
		}
	}
	rows := func() int {
		var n int
		if err := check.QueryRow(t.Context(), `SELECT count(*) FROM audit_log`).Scan(&n); err != nil {
			return -1
		}
		return n
	}
	get := func(addr, path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	addr, stop := start()
	deadline := time.Now().Add(20 * time.Second)
	for rows() < len(events) {
		if time.Now().After(deadline) {
			t.Fatalf("audit_log has %d rows, want %d", rows(), len(events))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range []struct{ path, want string }{
		{"/healthz", "ok"},
		{"/readyz", "ready"},
		{"/metrics", `shardflow_stage_acked_total{shard="1",stage="auditsink"} 1`},
		{"/metrics", "auditsink_rows_inserted_total 4"},
	} {
		if code, body := get(addr, c.path); code != http.StatusOK || !strings.Contains(body, c.want) {
			t.Errorf("GET %s = %d, want 200 with %q; body:\n%.2000s", c.path, code, c.want, body)
		}
	}
	var deleted int
	_ = check.QueryRow(t.Context(), `SELECT count(*) FROM audit_log WHERE account = 'acme' AND type = 'deleted' AND payload->>'type' = 'deleted'`).Scan(&deleted)
	if deleted != 1 {
		t.Errorf("the deleted event of acme is not in audit_log (%d rows)", deleted)
	}
	if took := stop(); took > cfg.ShutdownTimeout {
		t.Errorf("stop took %v, over the shutdown timeout %v", took, cfg.ShutdownTimeout)
	}
	for shard := range 2 {
		c, err := js.Consumer(t.Context(), streams.StreamName(streams.KindAccounts, shard), "auditsink")
		if err != nil {
			t.Fatalf("consumer not declared on shard %d: %v", shard, err)
		}
		if info, _ := c.Info(t.Context()); info.NumPending != 0 || info.NumAckPending != 0 || info.Config.MaxDeliver != 10 {
			t.Errorf("shard %d consumer: pending %d, ack pending %d, max deliver %d", shard, info.NumPending, info.NumAckPending, info.Config.MaxDeliver)
		}
	}
	// The accounts service's own consumer still has every event to read.
	acc, _ := js.Consumer(t.Context(), "ACCOUNTS_0", streams.StageAccounts)
	if info, _ := acc.Info(t.Context()); info.NumPending != 3 {
		t.Errorf("accounts consumer of ACCOUNTS_0 has %d pending, want 3: the sink must not take its events", info.NumPending)
	}

	_, stop = start() // a restart: nothing is written twice
	time.Sleep(500 * time.Millisecond)
	stop()
	if n := rows(); n != len(events) {
		t.Errorf("after a restart audit_log has %d rows, want %d", n, len(events))
	}
}

func TestRunRefusesAWorkQueueConsumer(t *testing.T) {
	err := run(t.Context(), config{Consumer: "auditsink:inbound"}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err == nil || !strings.Contains(err.Error(), "the kind must be accounts") {
		t.Fatalf("run with an inbound consumer: %v", err)
	}
}
