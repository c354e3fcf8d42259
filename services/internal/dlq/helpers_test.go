package dlq_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/shardflow/shardflow/services/internal/db/dbtest"
	"github.com/shardflow/shardflow/services/internal/dlq"
	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

func TestMain(m *testing.M) {
	// What telemetry.Setup installs in a service: W3C propagation and a real
	// tracer provider, so replayed messages carry valid trace contexts.
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	tp := sdktrace.NewTracerProvider()
	otel.SetTracerProvider(tp)
	code := m.Run()
	_ = tp.Shutdown(context.Background())
	os.Exit(code)
}

// testTopology is a small topology with a fast retry schedule: a message
// that is never acked is max-delivered in about 600 ms.
func testTopology() streams.Topology {
	fast := []time.Duration{200 * time.Millisecond}
	return streams.Topology{
		Shards: 2,
		Consumers: []streams.ConsumerSpec{
			{Name: streams.StageProcessor, Kind: streams.KindInbound, MaxDeliver: 3, BackOff: fast, MaxAckPending: 100},
			{Name: streams.StageSender, Kind: streams.KindOutbound, MaxDeliver: 3, BackOff: fast, MaxAckPending: 100},
			{Name: streams.StageIndexer, Kind: streams.KindDeadLetter, MaxDeliver: 3, BackOff: fast, MaxAckPending: 100},
		},
	}.WithDefaults()
}

type env struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	topo  streams.Topology
	pool  *pgxpool.Pool
	dsn   string
	store *dlq.Store
}

// newEnv starts a real nats-server with the test topology provisioned and a
// fresh Postgres schema.
func newEnv(t *testing.T) *env {
	t.Helper()
	s := natsembed.Test(t)
	nc, err := nats.Connect(s.ClientURL())
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
	return &env{nc: nc, js: js, topo: topo, pool: pool, dsn: dsn, store: dlq.NewStore(pool)}
}

// runConsumer runs a stage consumer with handler h on shard 0 until the test
// ends.
func (e *env) runConsumer(t *testing.T, stage string, h streams.Handler) *streams.Consumer {
	t.Helper()
	c, err := streams.NewConsumer(t.Context(), streams.ConsumerConfig{
		JetStream: e.js, Topology: e.topo, Stage: stage, Shard: 0, Handler: h,
		FetchWait: 200 * time.Millisecond, ProbeInterval: 100 * time.Millisecond, StopTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "consumer "+stage, c.Run)
	return c
}

// runUntilCleanup runs f in the background and stops it (and waits for it)
// when the test ends.
func runUntilCleanup(t *testing.T, name string, f func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop within 30s", name)
		}
	})
}

// eventually polls f until it returns nil or the deadline passes.
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

func streamMsgs(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// publish publishes one stage message with the publisher (Nats-Msg-Id,
// generation 1, the trace context of ctx).
func (e *env) publish(t *testing.T, kind streams.Kind, shard int, account, typ, key string, data []byte) streams.PublishResult {
	t.Helper()
	p, err := streams.NewPublisher(streams.PublisherConfig{JetStream: e.js, Topology: e.topo})
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Publish(t.Context(), streams.Message{
		Subject:    streams.Subject{Kind: kind, Shard: shard, Account: account, Type: typ},
		ID:         streams.MessageID(account, 1, key),
		Generation: 1,
		Data:       data,
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// addAccount inserts an account row.
func (e *env) addAccount(t *testing.T, id string, status streams.AccountStatus, generation int64) {
	t.Helper()
	_, err := e.pool.Exec(t.Context(),
		`INSERT INTO accounts (id, shard, status, generation, write_key, secret) VALUES ($1, 0, $2, $3, $4, 's')`,
		id, string(status), generation, "wk-"+id)
	if err != nil {
		t.Fatal(err)
	}
}
