package dlq_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/shardflow/shardflow/services/internal/dlq"
	"github.com/shardflow/shardflow/streams"
)

// crashLoop is a worker that dies on every "crash" message: it fetches from
// the processor consumer with a raw jetstream loop (so a pull request is
// always waiting, as with the runtime) and never acks those; "ok" messages
// are acked.
func crashLoop(t *testing.T, e *env) {
	t.Helper()
	c, err := e.js.Consumer(t.Context(), "INBOUND_0", streams.StageProcessor)
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "crash loop", func(ctx context.Context) error {
		for ctx.Err() == nil {
			b, err := c.Fetch(1, jetstream.FetchMaxWait(300*time.Millisecond))
			if err != nil {
				continue
			}
			for m := range b.Messages() {
				if string(m.Data()) == "ok" {
					_ = m.Ack()
				}
			}
		}
		return nil
	})
}

// swept returns the value of the swept counter for path.
func swept(t *testing.T, r *sdkmetric.ManualReader, path string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != dlq.MetricSwept {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				if v, _ := dp.Attributes.Value("path"); v.AsString() == path {
					n += dp.Value
				}
			}
		}
	}
	return n
}

func newSweeper(t *testing.T, e *env, interval time.Duration) (*dlq.Sweeper, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	s, err := dlq.NewSweeper(dlq.SweeperConfig{
		NATS: e.nc, JetStream: e.js, Topology: e.topo, Shards: []int{0}, Interval: interval, MeterProvider: mp,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, reader
}

func checkSweptRow(t *testing.T, e *env, id string) {
	t.Helper()
	row, err := e.store.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if row.ErrorClass != streams.ClassMaxDeliver || row.Stage != streams.StageProcessor || row.Attempts != 3 ||
		row.Account != "acme" || row.OriginalSubject != "inbound.0.acme.track" || string(row.Payload) != "crash" ||
		!strings.Contains(row.Error, "no handler outcome after 3 deliveries") {
		t.Fatalf("indexed dead letter %+v", row)
	}
}

func TestSweeperAdvisoryPath(t *testing.T) {
	e := newEnv(t)
	ix, err := dlq.NewIndexer(dlq.IndexerConfig{Store: e.store})
	if err != nil {
		t.Fatal(err)
	}
	e.runConsumer(t, streams.StageIndexer, ix.Handle)
	// A long interval: only the advisory path can act within the test.
	sw, reader := newSweeper(t, e, time.Hour)
	runUntilCleanup(t, "sweeper", sw.Run)
	eventually(t, 5*time.Second, sw.Ready)

	res := e.publish(t, streams.KindInbound, 0, "acme", "track", "m1", []byte("crash"))
	crashLoop(t, e)

	id := fmt.Sprintf("INBOUND_0:%d", res.Sequence)
	eventually(t, 15*time.Second, func() error {
		if n := streamMsgs(t, e.js, "INBOUND_0"); n != 0 {
			return fmt.Errorf("INBOUND_0 still holds %d", n)
		}
		if n := streamMsgs(t, e.js, "DEADLETTER_0"); n != 1 {
			return fmt.Errorf("DEADLETTER_0 holds %d, want 1", n)
		}
		if _, err := e.store.Get(t.Context(), id); err != nil {
			return err
		}
		return nil
	})
	checkSweptRow(t, e, id)
	if n := swept(t, reader, dlq.PathAdvisory); n != 1 {
		t.Fatalf("swept{path=advisory} = %d, want 1", n)
	}
	if n := swept(t, reader, dlq.PathSweep); n != 0 {
		t.Fatalf("swept{path=sweep} = %d, want 0", n)
	}
	// A sweep now finds nothing more: the advisory path left nothing behind.
	if n, err := sw.Sweep(t.Context()); err != nil || n != 0 {
		t.Fatalf("sweep after the advisory: %d, %v", n, err)
	}
}

func TestSweeperSweepPath(t *testing.T) {
	e := newEnv(t)
	// The sweeper is not running while the message is max-delivered: its
	// advisory is lost. The test listens itself, only to know when.
	advisories := make(chan *nats.Msg, 8)
	sub, err := e.nc.ChanSubscribe(streams.MaxDeliverAdvisorySubject, advisories)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	res := e.publish(t, streams.KindInbound, 0, "acme", "track", "m1", []byte("crash"))
	crashLoop(t, e)
	select {
	case m := <-advisories:
		var adv streams.MaxDeliverAdvisory
		if err := json.Unmarshal(m.Data, &adv); err != nil || adv.StreamSeq != res.Sequence {
			t.Fatalf("advisory %s: %v", m.Data, err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("message not max-delivered within 15s")
	}
	// Work goes on: a later message is acked, and the consumer's ack floor
	// moves past the one left behind, which stays in the work queue.
	e.publish(t, streams.KindInbound, 0, "acme", "track", "m2", []byte("ok"))
	cons, err := e.js.Consumer(t.Context(), "INBOUND_0", streams.StageProcessor)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		ci, err := cons.Info(t.Context())
		if err != nil {
			return err
		}
		if ci.AckFloor.Stream <= res.Sequence {
			return fmt.Errorf("ack floor %d", ci.AckFloor.Stream)
		}
		return nil
	})
	if n := streamMsgs(t, e.js, "INBOUND_0"); n != 1 {
		t.Fatalf("INBOUND_0 holds %d, want the max-delivered message", n)
	}

	sw, reader := newSweeper(t, e, time.Hour)
	n, err := sw.Sweep(t.Context())
	if err != nil || n != 1 {
		t.Fatalf("sweep: %d, %v (want 1)", n, err)
	}
	if n := streamMsgs(t, e.js, "INBOUND_0"); n != 0 {
		t.Fatalf("INBOUND_0 still holds %d", n)
	}
	if n := streamMsgs(t, e.js, "DEADLETTER_0"); n != 1 {
		t.Fatalf("DEADLETTER_0 holds %d, want 1", n)
	}
	if n := swept(t, reader, dlq.PathSweep); n != 1 {
		t.Fatalf("swept{path=sweep} = %d, want 1", n)
	}
	// Idempotent: a second sweep finds nothing.
	if n, err := sw.Sweep(t.Context()); err != nil || n != 0 {
		t.Fatalf("second sweep: %d, %v", n, err)
	}

	// The indexer picks the dead letter up.
	ix, err := dlq.NewIndexer(dlq.IndexerConfig{Store: e.store})
	if err != nil {
		t.Fatal(err)
	}
	e.runConsumer(t, streams.StageIndexer, ix.Handle)
	id := fmt.Sprintf("INBOUND_0:%d", res.Sequence)
	eventually(t, 10*time.Second, func() error {
		_, err := e.store.Get(t.Context(), id)
		return err
	})
	checkSweptRow(t, e, id)
}

// A sweep started by Run (at start-up) catches what was left behind while
// the service was down.
func TestSweeperRunSweepsAtStart(t *testing.T) {
	e := newEnv(t)
	advisories := make(chan *nats.Msg, 8)
	sub, err := e.nc.ChanSubscribe(streams.MaxDeliverAdvisorySubject, advisories)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	e.publish(t, streams.KindInbound, 0, "acme", "track", "m1", []byte("crash"))
	crashLoop(t, e)
	select {
	case <-advisories:
	case <-time.After(15 * time.Second):
		t.Fatal("message not max-delivered within 15s")
	}
	e.publish(t, streams.KindInbound, 0, "acme", "track", "m2", []byte("ok"))
	eventually(t, 10*time.Second, func() error {
		if n := streamMsgs(t, e.js, "INBOUND_0"); n != 1 {
			return fmt.Errorf("INBOUND_0 holds %d", n)
		}
		return nil
	})
	sw, reader := newSweeper(t, e, 100*time.Millisecond)
	runUntilCleanup(t, "sweeper", sw.Run)
	eventually(t, 10*time.Second, func() error {
		if n := streamMsgs(t, e.js, "INBOUND_0"); n != 0 {
			return fmt.Errorf("INBOUND_0 still holds %d", n)
		}
		if n := swept(t, reader, dlq.PathSweep); n != 1 {
			return fmt.Errorf("swept{path=sweep} = %d", n)
		}
		return nil
	})
}

func TestNewSweeperRejectsBadShard(t *testing.T) {
	e := newEnv(t)
	_, err := dlq.NewSweeper(dlq.SweeperConfig{NATS: e.nc, JetStream: e.js, Topology: e.topo, Shards: []int{7}})
	if err == nil {
		t.Fatal("shard 7 of 2 accepted")
	}
	if _, err := dlq.NewSweeper(dlq.SweeperConfig{}); err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("empty config: %v", err)
	}
}
