package accounts_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/shardflow/shardflow/services/internal/accounts"
	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/services/internal/db/dbtest"
	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

const token = "test-admin-token"

// harness runs the accounts service in-process against a real embedded
// nats-server and a fresh Postgres schema: the admin API on an httptest
// server and the saga consumer on every shard.
type harness struct {
	t    *testing.T
	nc   *nats.Conn
	js   jetstream.JetStream
	topo streams.Topology
	pool *pgxpool.Pool
	// shardPools are the pools on each shard's database (shards given
	// their own with withShardDatabase; the others on pool's database).
	shardPools *db.Pools
	svc        *accounts.Service
	srv        *httptest.Server
	dir        *streams.Directory
	metrics    *sdkmetric.ManualReader

	mu          sync.Mutex
	maxDelivery int // highest delivery count the saga handler saw
}

type harnessOptions struct {
	noSaga    bool
	afterStep func(ctx context.Context, account string, generation int64, step string) error
	// ownDB lists the shards whose rows get a database (a schema) of their own.
	ownDB []int
	// sharedPool leaves Config.ShardPools nil: every shard through Pool.
	sharedPool bool
}

// testTopology is two shards, with a quick retry schedule for the saga.
func testTopology() streams.Topology {
	return streams.Topology{
		Shards: 2,
		Consumers: []streams.ConsumerSpec{
			{Name: streams.StageProcessor, Kind: streams.KindInbound},
			{Name: streams.StageSender, Kind: streams.KindOutbound},
			{Name: streams.StageIndexer, Kind: streams.KindDeadLetter},
			{Name: streams.StageAccounts, Kind: streams.KindAccounts, MaxDeliver: 5,
				BackOff: []time.Duration{200 * time.Millisecond, 400 * time.Millisecond}, MaxAckPending: 16},
		},
	}.WithDefaults()
}

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func newHarness(t *testing.T, opts ...func(*harnessOptions)) *harness {
	t.Helper()
	var o harnessOptions
	for _, f := range opts {
		f(&o)
	}
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
	topo := testTopology()
	if _, err := streams.Provision(t.Context(), js, topo, nil); err != nil {
		t.Fatal(err)
	}
	pool, dsn := dbtest.New(t)
	spec := ""
	for _, n := range o.ownDB {
		_, own := dbtest.New(t)
		spec += fmt.Sprintf("%d=%s;", n, own)
	}
	dsns, err := db.ParseShardDSNs(spec, dsn, topo.Shards)
	if err != nil {
		t.Fatal(err)
	}
	all := make([]int, topo.Shards)
	for i := range all {
		all[i] = i
	}
	shardPools, err := db.OpenPools(t.Context(), dsns.For, all, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(shardPools.Close)
	cfgShardPools := shardPools
	if o.sharedPool {
		shardPools, cfgShardPools = db.SharedPool(pool), nil
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })

	svc, err := accounts.New(t.Context(), accounts.Config{
		Pool: pool, ShardPools: cfgShardPools, JetStream: js, Topology: topo, AdminToken: token,
		DeletionGrace: 300 * time.Millisecond, ReleaseRecheck: 100 * time.Millisecond,
		Logger: testLogger(), Meter: mp.Meter("test"), AfterStep: o.afterStep,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	hs := httptest.NewServer(svc.Handler())
	t.Cleanup(hs.Close)
	dir, err := streams.OpenDirectory(t.Context(), js, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dir.Close)
	h := &harness{t: t, nc: nc, js: js, topo: topo, pool: pool, shardPools: shardPools, svc: svc, srv: hs, dir: dir, metrics: reader}
	if !o.noSaga {
		h.startSaga()
	}
	return h
}

func withoutSaga() func(*harnessOptions) { return func(o *harnessOptions) { o.noSaga = true } }

// withSharedPool runs the service without ShardPools: every shard's rows
// through the main pool.
func withSharedPool() func(*harnessOptions) { return func(o *harnessOptions) { o.sharedPool = true } }

// withShardDatabase gives shard a database (a schema) of its own.
func withShardDatabase(shard int) func(*harnessOptions) {
	return func(o *harnessOptions) { o.ownDB = append(o.ownDB, shard) }
}

func withAfterStep(f func(ctx context.Context, account string, generation int64, step string) error) func(*harnessOptions) {
	return func(o *harnessOptions) { o.afterStep = f }
}

// startSaga runs the accounts stage on every shard until the test ends.
func (h *harness) startSaga() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for shard := range h.topo.Shards {
		c, err := streams.NewConsumer(h.t.Context(), streams.ConsumerConfig{
			JetStream: h.js, Topology: h.topo, Stage: streams.StageAccounts, Shard: shard,
			Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
				h.mu.Lock()
				h.maxDelivery = max(h.maxDelivery, m.Delivered)
				h.mu.Unlock()
				return h.svc.HandleEvent(ctx, m)
			},
			Logger: testLogger(), StopTimeout: 5 * time.Second,
		})
		if err != nil {
			cancel()
			h.t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Run(ctx); err != nil {
				h.t.Errorf("saga consumer shard %d: %v", shard, err)
			}
		}()
	}
	h.t.Cleanup(func() { cancel(); wg.Wait() })
}

// request sends a request with the given bearer token ("" for none) and
// decodes a JSON answer into out (when not nil).
func (h *harness) request(tok, method, path string, body any, out any) (int, []byte) {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(h.t.Context(), method, h.srv.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		h.t.Errorf("%s %s: Content-Type %q, want application/json (body %s)", method, path, ct, raw)
	}
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			h.t.Fatalf("%s %s: decode %s: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode, raw
}

// do is request with the right token.
func (h *harness) do(method, path string, body any, out any) (int, []byte) {
	h.t.Helper()
	return h.request(token, method, path, body, out)
}

// must is do, failing the test unless the status is want.
func (h *harness) must(want int, method, path string, body any, out any) []byte {
	h.t.Helper()
	status, raw := h.do(method, path, body, out)
	if status != want {
		h.t.Fatalf("%s %s: status %d, want %d; body %s", method, path, status, want, raw)
	}
	return raw
}

// wantError checks an error answer: its status, and that its message
// contains each of words.
func (h *harness) wantError(status int, method, path string, body any, words ...string) {
	h.t.Helper()
	got, raw := h.do(method, path, body, nil)
	if got != status {
		h.t.Fatalf("%s %s: status %d, want %d; body %s", method, path, got, status, raw)
	}
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(raw, &e); err != nil || e.Error == "" {
		h.t.Fatalf("%s %s: error body %s is not {\"error\": ...} (%v)", method, path, raw, err)
	}
	for _, w := range words {
		if !strings.Contains(e.Error, w) {
			h.t.Errorf("%s %s: error %q does not mention %q", method, path, e.Error, w)
		}
	}
}

func (h *harness) create(id string) accounts.Created {
	h.t.Helper()
	var c accounts.Created
	h.must(http.StatusCreated, "POST", "/v1/accounts", map[string]any{"id": id}, &c)
	return c
}

func (h *harness) get(id string) accounts.Account {
	h.t.Helper()
	var a accounts.Account
	h.must(http.StatusOK, "GET", "/v1/accounts/"+id, nil, &a)
	return a
}

// waitStatus polls GET until the account has status, or fails after 30s.
func (h *harness) waitStatus(id string, status streams.AccountStatus) accounts.Account {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		a := h.get(id)
		if a.Status == status {
			return a
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("account %s: status %s after 30s, want %s (deletion %+v)", id, a.Status, status, a.Deletion)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitDirectory waits until the directory entry satisfies cond.
func (h *harness) waitDirectory(id string, cond func(streams.Account, bool) bool) streams.Account {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), 10*time.Second)
	defer cancel()
	if err := h.dir.Wait(ctx, id, cond); err != nil {
		a, ok := h.dir.Lookup(id)
		h.t.Fatalf("directory entry of %s: %v (have %+v, present %v)", id, err, a, ok)
	}
	a, _ := h.dir.Lookup(id)
	return a
}

// count returns how many messages of filter a kind's stream holds.
func (h *harness) count(kind streams.Kind, shard int, filter string) uint64 {
	h.t.Helper()
	n, err := streams.CountSubject(h.t.Context(), h.js, streams.StreamName(kind, shard), filter)
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

// publish stores n messages of an account on a kind's stream (type typ).
func (h *harness) publish(kind streams.Kind, shard int, account, typ string, generation int64, n int) {
	h.t.Helper()
	futures := make([]jetstream.PubAckFuture, 0, n)
	for i := range n {
		m := nats.NewMsg(fmt.Sprintf("%s.%d.%s.%s", kind, shard, account, typ))
		m.Header.Set(jetstream.MsgIDHeader, streams.MessageID(account, generation, fmt.Sprintf("%s-%s-%d", kind, typ, i)))
		m.Header.Set(streams.HeaderGeneration, fmt.Sprint(generation))
		m.Data = []byte(`{"n":` + fmt.Sprint(i) + `}`)
		f, err := h.js.PublishMsgAsync(m)
		if err != nil {
			h.t.Fatal(err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			h.t.Fatalf("publish %s: %v", f.Msg().Subject, err)
		case <-time.After(30 * time.Second):
			h.t.Fatal("publish: no acknowledgement within 30s")
		}
	}
}

// purgedMetric returns the messages-purged counter by stream kind.
func (h *harness) purgedMetric() map[string]int64 {
	h.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.metrics.Collect(h.t.Context(), &rm); err != nil {
		h.t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != accounts.MetricMessagesPurged {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				h.t.Fatalf("%s is %T, want a Sum[int64]", m.Name, m.Data)
			}
			for _, dp := range sum.DataPoints {
				kind, _ := dp.Attributes.Value("stream_kind")
				out[kind.AsString()] += dp.Value
			}
		}
	}
	return out
}

// sameShard returns an id starting with prefix on the given shard.
func sameShard(prefix string, shard, shards int) string {
	for i := 0; ; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if accounts.ShardOf(id, shards) == shard {
			return id
		}
	}
}

// tablePool is the pool of the database holding table's rows of an
// account: its shard's for people, triggers and deliveries, the main one
// for the others.
func (h *harness) tablePool(table, account string) *pgxpool.Pool {
	if slices.Contains(db.ShardTables, table) {
		return h.shardPools.For(accounts.ShardOf(account, h.topo.Shards))
	}
	return h.pool
}

// rowCount counts an account's rows in a table, in the database holding them.
func (h *harness) rowCount(table, account string) int {
	h.t.Helper()
	return countIn(h.t, h.tablePool(table, account), table, account)
}

// countIn counts an account's rows in a table of pool's database.
func countIn(t *testing.T, pool *pgxpool.Pool, table, account string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM `+table+` WHERE account_id = $1`, account).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// seedRows writes rows for an account, each in the database holding its
// table: people, deliveries and dead letters.
func (h *harness) seedRows(account string, shard, people, deliveries, deadLetters int) {
	h.t.Helper()
	ctx := h.t.Context()
	rows := h.shardPools.For(shard)
	for i := range people {
		if _, err := rows.Exec(ctx, `INSERT INTO people (account_id, user_id) VALUES ($1, $2)`, account, fmt.Sprintf("u%d", i)); err != nil {
			h.t.Fatal(err)
		}
	}
	for i := range deliveries {
		if _, err := rows.Exec(ctx, `INSERT INTO deliveries (message_id, account_id, shard, channel, url, status)
			VALUES ($1, $2, $3, 'webhook', 'https://example.com/hook', 'delivered')`, fmt.Sprintf("%s:1:d%d", account, i), account, shard); err != nil {
			h.t.Fatal(err)
		}
	}
	for i := range deadLetters {
		if _, err := h.pool.Exec(ctx, `INSERT INTO dead_letters (id, shard, account_id, stage, error_class, error, attempts,
			original_subject, payload, first_failure, last_failure, dl_stream, dl_seq)
			VALUES ($1, $2, $3, 'processor', 'transient', 'boom', 5, $4, '\x7b7d', now(), now(), $5, $6)`,
			fmt.Sprintf("%s-%s:%d", streams.StreamName(streams.KindInbound, shard), account, i), shard, account,
			fmt.Sprintf("inbound.%d.%s.track", shard, account), streams.StreamName(streams.KindDeadLetter, shard), i+1); err != nil {
			h.t.Fatal(err)
		}
	}
}
