package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/services/internal/accounts"
	"github.com/shardflow/shardflow/services/internal/db/dbtest"
	"github.com/shardflow/shardflow/services/internal/dlq"
	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

// sfctl runs the CLI in-process and returns its exit status and output.
func sfctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(t.Context(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// mustSfctl is sfctl, failing the test on a non-zero exit.
func mustSfctl(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := sfctl(t, args...)
	if code != 0 {
		t.Fatalf("sfctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func connect(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestProvisionTwice(t *testing.T) {
	srv := natsembed.Test(t)
	global := []string{"--nats-url", srv.ClientURL(), "--shards", "2", "--timeout", "10s"}

	// A dry run on an empty server: everything missing, exit 1.
	code, out, _ := sfctl(t, append(global, "provision", "--dry-run")...)
	if code != 1 || !strings.Contains(out, "missing") {
		t.Errorf("dry run on an empty server: exit %d, output %s; want 1 and drift", code, out)
	}

	first := mustSfctl(t, append(global, "provision")...)
	// 2 shards × (4 streams + 4 consumers).
	if !strings.Contains(first, "16 created, 0 updated, 0 unchanged, 0 drift") {
		t.Errorf("first provision:\n%s", first)
	}
	second := mustSfctl(t, append(global, "provision")...)
	lines := strings.Split(strings.TrimSpace(second), "\n")
	if len(lines) != 17 || lines[16] != "0 created, 0 updated, 16 unchanged, 0 drift" {
		t.Errorf("second provision:\n%s", second)
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, "unchanged") {
			t.Errorf("second provision changed something: %q", l)
		}
	}

	var rep provisionJSON
	if err := json.Unmarshal([]byte(mustSfctl(t, append(global, "--json", "provision", "--dry-run")...)), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.DryRun || rep.Counts["unchanged"] != 16 || rep.Counts["drift"] != 0 || len(rep.Changes) != 16 || rep.Changes[1].Consumer == "" {
		t.Errorf("JSON dry run: %+v", rep)
	}

	// A server that differs (a consumer deleted) is drift for a dry run.
	js := connect(t, srv.ClientURL())
	if err := js.DeleteConsumer(t.Context(), "INBOUND_1", streams.StageProcessor); err != nil {
		t.Fatal(err)
	}
	code, out, _ = sfctl(t, append(global, "provision", "--dry-run")...)
	if code != 1 || !strings.Contains(out, "drift     INBOUND_1/processor") {
		t.Errorf("dry run with a missing consumer: exit %d, output\n%s", code, out)
	}
}

func TestStatusJSON(t *testing.T) {
	srv := natsembed.Test(t)
	global := []string{"--nats-url", srv.ClientURL(), "--shards", "2", "--timeout", "10s"}
	mustSfctl(t, append(global, "provision")...)
	js := connect(t, srv.ClientURL())
	for i := range 25 {
		if _, err := js.Publish(t.Context(), "inbound.1.acme.track", []byte("{}"), jetstream.WithMsgID(fmt.Sprintf("acme:1:%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if _, err := js.Publish(t.Context(), "deadletter.0.acme.processor", []byte("{}"), jetstream.WithMsgID(fmt.Sprintf("dl:%d", i))); err != nil {
			t.Fatal(err)
		}
	}

	out := mustSfctl(t, append(global, "status", "--json", "--sample", "200ms")...)
	var snap Snapshot
	if err := json.Unmarshal([]byte(out), &snap); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if len(snap.Shards) != 2 || snap.WindowSeconds < 0.2 {
		t.Fatalf("snapshot: %d shards, window %v", len(snap.Shards), snap.WindowSeconds)
	}
	for _, sh := range snap.Shards {
		if len(sh.Streams) != 4 || len(sh.Consumers) != 4 {
			t.Errorf("shard %d: %d streams, %d consumers; want 4 and 4", sh.Shard, len(sh.Streams), len(sh.Consumers))
		}
		for _, c := range sh.Consumers {
			if c.Missing || c.ProcessedPerSec == nil {
				t.Errorf("shard %d consumer %s/%s: %+v", sh.Shard, c.Stream, c.Name, c)
			}
		}
	}
	if d := snap.Shards[0].DeadLetters; d != 3 {
		t.Errorf("shard 0 dead letters: %d, want 3", d)
	}
	proc := find(t, snap, 1, "INBOUND_1", streams.StageProcessor)
	if proc.NumPending != 25 || proc.DrainETA != "∞" {
		t.Errorf("processor of shard 1 with nobody consuming: %+v; want 25 pending and ETA ∞", proc)
	}
	if s := find(t, snap, 0, "OUTBOUND_0", streams.StageSender); s.DrainETA != "idle" {
		t.Errorf("idle sender: ETA %q", s.DrainETA)
	}

	text := mustSfctl(t, append(global, "status", "--sample", "0s")...)
	for _, want := range []string{"shard 0", "shard 1", "INBOUND_1/processor", "dead letters: 3"} {
		if !strings.Contains(text, want) {
			t.Errorf("text status lacks %q:\n%s", want, text)
		}
	}

	// --watch ends cleanly when interrupted.
	ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond)
	defer cancel()
	var wout, werr bytes.Buffer
	if code := run(ctx, append(global, "status", "--json", "--watch", "200ms"), &wout, &werr); code != 0 {
		t.Fatalf("status --watch: exit %d: %s", code, werr.String())
	}
	dec := json.NewDecoder(&wout)
	n := 0
	for dec.More() {
		var s Snapshot
		if err := dec.Decode(&s); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n < 2 {
		t.Errorf("status --watch printed %d snapshots in 700ms at 200ms, want several", n)
	}
}

func find(t *testing.T, s Snapshot, shard int, stream, name string) ConsumerStatus {
	t.Helper()
	for _, c := range s.Shards[shard].Consumers {
		if c.Stream == stream && c.Name == name {
			return c
		}
	}
	t.Fatalf("no consumer %s/%s in shard %d", stream, name, shard)
	return ConsumerStatus{}
}

func TestWithRates(t *testing.T) {
	t0 := time.Now()
	c := func(pending uint64, ackPending int, floor uint64) ConsumerStatus {
		return ConsumerStatus{Stream: "INBOUND_0", Name: "processor", NumPending: pending, NumAckPending: ackPending, AckFloorSeq: floor}
	}
	snap := func(at time.Time, cs ConsumerStatus) Snapshot {
		return Snapshot{At: at, Shards: []ShardStatus{{Consumers: []ConsumerStatus{cs}}}}
	}
	for _, tc := range []struct {
		name       string
		prev, cur  ConsumerStatus
		rate       float64
		eta        string
		etaSeconds float64
	}{
		{"draining", c(1000, 100, 500), c(800, 100, 700), 100, "9s", 9},
		{"stuck", c(10, 0, 5), c(10, 0, 5), 0, "∞", 0},
		{"idle", c(0, 0, 5), c(0, 0, 5), 0, "idle", 0},
		{"recreated", c(0, 0, 900), c(5, 0, 0), 0, "∞", 0},
	} {
		got := withRates(snap(t0, tc.prev), snap(t0.Add(2*time.Second), tc.cur)).Shards[0].Consumers[0]
		if got.ProcessedPerSec == nil || *got.ProcessedPerSec != tc.rate || got.DrainETA != tc.eta {
			t.Errorf("%s: rate %v ETA %q; want %v and %q", tc.name, got.ProcessedPerSec, got.DrainETA, tc.rate, tc.eta)
		}
		if tc.etaSeconds > 0 && (got.DrainETASeconds == nil || *got.DrainETASeconds != tc.etaSeconds) {
			t.Errorf("%s: ETA seconds %v, want %v", tc.name, got.DrainETASeconds, tc.etaSeconds)
		}
	}
}

func TestDLQRequests(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	a := DLQAction{IDs: []string{"INBOUND_0:7"}, DryRun: true, DLQFilter: DLQFilter{Shard: 0, Account: "acme", Stage: "processor", Reason: "transient", Since: "90m", Until: "2026-05-01T11:59:00+02:00"}}
	r, err := a.body("replay", now)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(r)
	want := `{"ids":["INBOUND_0:7"],"shard":0,"account":"acme","stage":"processor","reason":"transient","since":"2026-05-01T10:30:00Z","until":"2026-05-01T09:59:00Z","dry_run":true}`
	if string(b) != want {
		t.Errorf("body\n%s\nwant\n%s", b, want)
	}
	if q := r.query().Encode(); q != "account=acme&reason=transient&shard=0&since=2026-05-01T10%3A30%3A00Z&stage=processor&until=2026-05-01T09%3A59%3A00Z" {
		t.Errorf("query %s", q)
	}
	if _, err := (&DLQAction{DLQFilter: DLQFilter{Shard: -1, Limit: 5}}).body("drop", now); err == nil || !strings.Contains(err.Error(), "filter") {
		t.Errorf("an unfiltered drop must be refused: %v", err)
	}
	if _, err := (&DLQAction{DLQFilter: DLQFilter{Shard: -1, Since: "yesterday"}}).body("drop", now); err == nil || !strings.Contains(err.Error(), "--since") {
		t.Errorf("a bad --since must be refused naming it: %v", err)
	}
	code, _, errOut := sfctl(t, "--admin-token", "x", "dlq", "drop")
	if code != 1 || !strings.Contains(errOut, "ids or a filter") {
		t.Errorf("sfctl dlq drop without ids or filter: exit %d, %s", code, errOut)
	}
}

// TestAccountsCommands drives the real accounts service (admin API and
// deletion saga) through sfctl.
func TestAccountsCommands(t *testing.T) {
	srv := natsembed.Test(t)
	global := []string{"--nats-url", srv.ClientURL(), "--shards", "2", "--timeout", "10s"}
	mustSfctl(t, append(global, "provision")...)
	js := connect(t, srv.ClientURL())
	pool, _ := dbtest.New(t)
	topo := streams.Topology{Shards: 2}.WithDefaults()
	svc, err := accounts.New(t.Context(), accounts.Config{Pool: pool, JetStream: js, Topology: topo, AdminToken: "tok", DeletionGrace: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	// The admin address as the accounts binary serves it: the accounts API,
	// and the dead-letter API under /v1/deadletters.
	store := dlq.NewStore(pool)
	replayer, err := dlq.NewReplayer(dlq.ReplayerConfig{Store: store, JetStream: js})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/deadletters", dlq.Handler(store, replayer, "tok"))
	mux.Handle("/v1/deadletters/", dlq.Handler(store, replayer, "tok"))
	mux.Handle("/", svc.Handler())
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for shard := range topo.Shards {
		c, err := streams.NewConsumer(t.Context(), streams.ConsumerConfig{JetStream: js, Topology: topo, Stage: streams.StageAccounts, Shard: shard, Handler: svc.HandleEvent,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.Run(ctx) }()
	}
	api := append(global, "--admin-url", hs.URL, "--admin-token", "tok")

	var created accounts.Created
	decode(t, mustSfctl(t, append(api, "accounts", "create", "acme", "--rate-limit", "20")...), &created)
	if created.ID != "acme" || created.Generation != 1 || !strings.HasPrefix(created.WriteKey, "wk_") {
		t.Errorf("created %+v", created)
	}
	var acc accounts.Account
	decode(t, mustSfctl(t, append(api, "accounts", "update", "acme", "--rate-limit", "30")...), &acc)
	if acc.RateLimit != 30 {
		t.Errorf("updated %+v", acc)
	}
	var tr accounts.Trigger
	decode(t, mustSfctl(t, append(api, "accounts", "trigger", "acme", "welcome", "--event", "Signed Up", "--channel", "webhook", "--url", "https://example.com/h")...), &tr)
	if tr.Name != "welcome" || tr.Event != "Signed Up" {
		t.Errorf("trigger %+v", tr)
	}
	var list accounts.Triggers
	decode(t, mustSfctl(t, append(api, "accounts", "triggers", "acme")...), &list)
	if len(list.Triggers) != 1 {
		t.Errorf("triggers %+v", list)
	}
	decode(t, mustSfctl(t, append(api, "accounts", "suspend", "acme")...), &acc)
	if acc.Status != streams.StatusSuspended {
		t.Errorf("suspended %+v", acc)
	}
	decode(t, mustSfctl(t, append(api, "accounts", "restore", "acme")...), &acc)
	if acc.Status != streams.StatusActive {
		t.Errorf("restored %+v", acc)
	}
	decode(t, mustSfctl(t, append(api, "accounts", "delete", "acme", "--wait", "--poll", "50ms", "--wait-timeout", "30s")...), &acc)
	if acc.Status != streams.StatusDeleted || acc.Deletion == nil || acc.Deletion.Step != accounts.StepDeleted {
		t.Errorf("after delete --wait: %+v", acc)
	}
	decode(t, mustSfctl(t, append(api, "accounts", "get", "acme")...), &acc)
	if acc.Status != streams.StatusDeleted || acc.Generation != 2 {
		t.Errorf("get after deletion: %+v", acc)
	}

	// API errors: exit 1 with the API's message.
	code, _, errOut := sfctl(t, append(api, "accounts", "get", "nobody")...)
	if code != 1 || !strings.Contains(errOut, "404") || !strings.Contains(errOut, "account nobody not found") {
		t.Errorf("get unknown: exit %d, stderr %s", code, errOut)
	}
	code, _, errOut = sfctl(t, append(global, "--admin-url", hs.URL, "--admin-token", "wrong", "accounts", "get", "acme")...)
	if code != 1 || !strings.Contains(errOut, "401") {
		t.Errorf("wrong token: exit %d, stderr %s", code, errOut)
	}
	code, _, errOut = sfctl(t, append(global, "--admin-url", hs.URL, "accounts", "get", "acme")...)
	if code != 1 || !strings.Contains(errOut, "SHARDFLOW_ADMIN_TOKEN") {
		t.Errorf("no token: exit %d, stderr %s", code, errOut)
	}
	code, _, _ = sfctl(t, append(api, "accounts", "trigger", "acme", "x", "--event", "E", "--channel", "sms", "--url", "u")...)
	if code != 2 {
		t.Errorf("bad --channel: exit %d, want 2 (usage)", code)
	}

	// Dead letters, through the dead-letter API on the same address.
	mustSfctl(t, append(api, "accounts", "create", "beta")...)
	for i := range 3 {
		env := streams.Envelope("inbound.0.beta.track", nats.Header{}, []byte(`{"type":"track"}`), "INBOUND_0", uint64(i+1),
			streams.StageProcessor, streams.ClassTransient, fmt.Errorf("boom %d", i), 5, time.Now().Add(-time.Minute), time.Now())
		if err := store.Index(t.Context(), env, "DEADLETTER_0", uint64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	var listed struct {
		DeadLetters []struct {
			ID string `json:"id"`
		} `json:"dead_letters"`
		Total int `json:"total"`
	}
	decode(t, mustSfctl(t, append(api, "dlq", "list", "--account", "beta", "--stage", "processor", "--since", "1h", "--limit", "2")...), &listed)
	if listed.Total != 3 || len(listed.DeadLetters) != 2 {
		t.Fatalf("dlq list: %+v", listed)
	}
	var shown struct {
		ID      string `json:"id"`
		Account string `json:"account"`
	}
	decode(t, mustSfctl(t, append(api, "dlq", "show", listed.DeadLetters[0].ID)...), &shown)
	if shown.ID != listed.DeadLetters[0].ID || shown.Account != "beta" {
		t.Errorf("dlq show: %+v", shown)
	}
	var res dlq.Result
	decode(t, mustSfctl(t, append(api, "dlq", "drop", "--account", "beta", "--dry-run")...), &res)
	if !res.DryRun || res.Dropped != 3 {
		t.Errorf("dlq drop --dry-run: %+v", res)
	}
	decode(t, mustSfctl(t, append(api, "dlq", "drop", listed.DeadLetters[0].ID)...), &res)
	if res.DryRun || res.Dropped != 1 {
		t.Errorf("dlq drop <id>: %+v", res)
	}
	decode(t, mustSfctl(t, append(api, "dlq", "list", "--account", "beta")...), &listed)
	if listed.Total != 2 {
		t.Errorf("after dropping one: %+v", listed)
	}
	code, _, errOut = sfctl(t, append(api, "dlq", "show", "INBOUND_9:999")...)
	if code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("dlq show unknown: exit %d, %s", code, errOut)
	}
}

func decode(t *testing.T, out string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
}

func TestProvisionDeclaresATeamConsumerAndRefusesAWorkQueueOne(t *testing.T) {
	srv := natsembed.Test(t)
	global := []string{"--nats-url", srv.ClientURL(), "--shards", "2", "--timeout", "10s"}
	out := mustSfctl(t, append(global, "provision", "--consumer", "auditsink:accounts")...)
	if !strings.Contains(out, "created   ACCOUNTS_1/auditsink") {
		t.Fatalf("team consumer not declared:\n%s", out)
	}
	code, out, errOut := sfctl(t, append(global, "provision", "--consumer", "thief:inbound")...)
	if code == 0 || !strings.Contains(out+errOut, "work-queue stream") {
		t.Fatalf("a consumer on a work-queue stream was accepted: exit %d\n%s%s", code, out, errOut)
	}
}
