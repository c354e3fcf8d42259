package streams_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/streams"
)

func newConsumer(t *testing.T, e *env, cfg streams.ConsumerConfig) *streams.Consumer {
	t.Helper()
	cfg.JetStream, cfg.Topology = e.js, e.topo
	if cfg.Stage == "" {
		cfg.Stage = streams.StageProcessor
	}
	c, err := streams.NewConsumer(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The runtime never holds more than its configured messages and bytes,
// whatever the backlog (failure F3 of the design).
func TestConsumerBoundsInFlightAgainstLargeBacklog(t *testing.T) {
	e := setup(t, fastTopology())
	const backlog = 20_000
	payload := make([]byte, 1024)
	e.publishN(t, 0, "acme", backlog, payload)

	const maxMsgs, maxBytes = 40, 64 << 10 // bytes bind first: ~1.1 KiB a message → ~50 fit
	var cur, peak atomic.Int64
	var handled atomic.Int64
	c := newConsumer(t, e, streams.ConsumerConfig{
		Shard: 0, MaxInFlight: maxMsgs, MaxInFlightBytes: maxBytes, Concurrency: 8,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			n := cur.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			defer cur.Add(-1)
			handled.Add(1)
			return streams.Ack()
		},
	})
	var maxAckPending int
	stop := run(t, c)
	cons, _ := e.js.Consumer(t.Context(), "INBOUND_0", streams.StageProcessor)
	eventually(t, 2*time.Minute, func() error {
		if info, err := cons.Info(t.Context()); err == nil {
			maxAckPending = max(maxAckPending, info.NumAckPending)
		}
		if n := handled.Load(); n < backlog {
			return fmt.Errorf("handled %d of %d", n, backlog)
		}
		return nil
	})
	stop()
	st := c.Stats()
	if st.PeakInFlight > maxMsgs || st.PeakInFlightBytes > maxBytes {
		t.Fatalf("bound broken: peak %d msgs / %d bytes, limits %d / %d", st.PeakInFlight, st.PeakInFlightBytes, maxMsgs, maxBytes)
	}
	// The server's own count can run ahead of the client by acks it has not
	// processed yet, but never past the consumer's MaxAckPending.
	if limit := e.topo.Consumers[0].MaxAckPending; maxAckPending > limit {
		t.Fatalf("server saw %d unacked, over MaxAckPending %d", maxAckPending, limit)
	}
	if st.PeakInFlight < 2 {
		t.Fatalf("peak in flight %d: the runtime did not work concurrently", st.PeakInFlight)
	}
	if st.Acked != backlog || st.InFlight != 0 || st.InFlightBytes != 0 {
		t.Fatalf("stats after drain: %+v", st)
	}
	if n := streamMsgs(t, e.js, "INBOUND_0"); n != 0 {
		t.Fatalf("%d messages left in the work-queue stream", n)
	}
	t.Logf("peak in flight %d msgs, %d bytes (limits %d, %d); server max ack pending seen %d", st.PeakInFlight, st.PeakInFlightBytes, maxMsgs, maxBytes, maxAckPending)
}

// A handler failing transiently K times sees deliveries spaced by the
// schedule (±20%) and succeeds on attempt K+1.
func TestConsumerRetryFollowsBackoffSchedule(t *testing.T) {
	e := setup(t, fastTopology())
	e.publishN(t, 1, "acme", 1, []byte(`{}`))
	var mu sync.Mutex
	var times []time.Time
	var counts []int
	const k = 3
	c := newConsumer(t, e, streams.ConsumerConfig{Shard: 1, Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
		mu.Lock()
		defer mu.Unlock()
		times = append(times, time.Now())
		counts = append(counts, m.Delivered)
		if len(times) <= k {
			return streams.Retry(errors.New("receiver busy"))
		}
		return streams.Ack()
	}})
	run(t, c)
	eventually(t, 10*time.Second, func() error {
		if c.Stats().Acked != 1 {
			return errors.New("not acked yet")
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	schedule := e.topo.Consumers[0].BackOff // 300, 600, 900ms
	for i := 1; i < len(times); i++ {
		want := schedule[min(i-1, len(schedule)-1)]
		got := times[i].Sub(times[i-1])
		if got < want*8/10 || got > want*12/10 {
			t.Fatalf("gap %d = %v, want %v ±20%% (all: %v)", i, got, want, times)
		}
		if counts[i] != i+1 {
			t.Fatalf("delivery counts %v", counts)
		}
	}
	if len(times) != k+1 {
		t.Fatalf("%d deliveries, want %d", len(times), k+1)
	}
	if st := c.Stats(); st.Retried != k || st.DeadLettered != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func readDeadLetters(t *testing.T, e *env, shard int, want int) []schemas.DeadLetter {
	t.Helper()
	var out []schemas.DeadLetter
	eventually(t, 15*time.Second, func() error {
		if n := streamMsgs(t, e.js, streams.StreamName(streams.KindDeadLetter, shard)); int(n) < want {
			return fmt.Errorf("%d dead letters, want %d", n, want)
		}
		return nil
	})
	s, _ := e.js.Stream(t.Context(), streams.StreamName(streams.KindDeadLetter, shard))
	for seq := uint64(1); len(out) < want; seq++ {
		raw, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		var dl schemas.DeadLetter
		if err := json.Unmarshal(raw.Data, &dl); err != nil {
			t.Fatal(err)
		}
		if err := schemas.ValidateDeadLetter(raw.Data); err != nil {
			t.Fatalf("envelope breaks its schema: %v", err)
		}
		out = append(out, dl)
	}
	return out
}

func TestConsumerDeadLettersPermanentAtOnceAndTransientOnLastDelivery(t *testing.T) {
	e := setup(t, fastTopology())
	p := e.publisher(t)
	for i, typ := range []string{"bad", "flaky"} {
		_, err := p.Publish(t.Context(), streams.Message{
			Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "acme", Type: typ},
			ID:      fmt.Sprintf("id-%d", i), Data: []byte(typ), Header: nats.Header{"X-Test": []string{typ}},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var calls sync.Map
	c := newConsumer(t, e, streams.ConsumerConfig{Shard: 0, Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
		n, _ := calls.LoadOrStore(m.Subject.Type, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		if m.Subject.Type == "bad" {
			return streams.DeadLetter(streams.ClassSchemaInvalid, errors.New("missing field event"))
		}
		return streams.Retry(errors.New("timeout"))
	}})
	run(t, c)
	dls := readDeadLetters(t, e, 0, 2)
	byType := map[string]schemas.DeadLetter{}
	for _, d := range dls {
		byType[string(d.Payload)] = d
	}
	bad, flaky := byType["bad"], byType["flaky"]
	if bad.ErrorClass != streams.ClassSchemaInvalid || bad.Attempts != 1 || bad.Error != "missing field event" || bad.Stage != "processor" ||
		bad.Account != "acme" || bad.Shard != 0 || bad.OriginStream != "INBOUND_0" || bad.OriginalSubject != "inbound.0.acme.bad" || bad.Headers["X-Test"][0] != "bad" {
		t.Fatalf("permanent dead letter: %+v", bad)
	}
	if flaky.ErrorClass != streams.ClassTransient || flaky.Attempts != 4 || flaky.FirstFailure.After(flaky.LastFailure) || flaky.LastFailure.Sub(flaky.FirstFailure) < time.Second {
		t.Fatalf("transient dead letter: %+v", flaky)
	}
	if n, _ := calls.Load("bad"); n.(*atomic.Int32).Load() != 1 {
		t.Fatalf("permanent failure handled %d times", n.(*atomic.Int32).Load())
	}
	eventually(t, 5*time.Second, func() error {
		if n := streamMsgs(t, e.js, "INBOUND_0"); n != 0 {
			return fmt.Errorf("%d messages left in the stage stream", n)
		}
		return nil
	})
}

type gate map[string]struct {
	status streams.AccountStatus
	gen    int64
}

func (g gate) AccountState(a string) (streams.AccountStatus, int64, bool) {
	s, ok := g[a]
	return s.status, s.gen, ok
}

func TestConsumerGateDropsDeletedAndParksSuspended(t *testing.T) {
	e := setup(t, fastTopology())
	e.publishN(t, 0, "gone", 5, []byte("x"))
	e.publishN(t, 0, "paused", 7, []byte("y"))
	e.publishN(t, 0, "old", 3, []byte("z")) // generation 1, but the account is at 2
	e.publishN(t, 0, "live", 4, []byte("w"))
	var handled sync.Map
	g := gate{
		"gone":   {streams.StatusDeleting, 1},
		"paused": {streams.StatusSuspended, 1},
		"old":    {streams.StatusActive, 2},
		"live":   {streams.StatusActive, 1},
	}
	c := newConsumer(t, e, streams.ConsumerConfig{Shard: 0, Gate: g, Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
		handled.Store(m.ID, m.Subject.Account)
		return streams.Ack()
	}})
	stop := run(t, c)
	eventually(t, 10*time.Second, func() error {
		if st := c.Stats(); st.Acked != 4 || st.Dropped != 15 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	stop()
	handled.Range(func(k, v any) bool {
		if v != "live" {
			t.Errorf("handler ran for %v of account %v", k, v)
		}
		return true
	})
	if n := streamMsgs(t, e.js, "INBOUND_0"); n != 7 {
		t.Fatalf("want the 7 parked copies left, stream holds %d", n)
	}
	if n, err := streams.CountSubject(t.Context(), e.js, "INBOUND_0", streams.HeldFilter(streams.KindInbound, 0, "paused")); err != nil || n != 7 {
		t.Fatalf("held copies = %d (%v), want 7", n, err)
	}
	if n, err := streams.ReleaseHeld(t.Context(), e.js, streams.KindInbound, 0, "paused"); err != nil || n != 7 {
		t.Fatalf("released %d (%v), want 7", n, err)
	}
	g["paused"] = struct {
		status streams.AccountStatus
		gen    int64
	}{streams.StatusActive, 1}
	c2 := newConsumer(t, e, streams.ConsumerConfig{Shard: 0, Gate: g, Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
		handled.Store(m.ID, m.Subject.Account)
		return streams.Ack()
	}})
	run(t, c2)
	eventually(t, 10*time.Second, func() error {
		if st := c2.Stats(); st.Acked != 7 {
			return fmt.Errorf("after restore: %+v", st)
		}
		return nil
	})
	for i := range 7 {
		if v, ok := handled.Load(streams.MessageID("paused", 1, fmt.Sprintf("m%d", i))); !ok || v != "paused" {
			t.Fatalf("released message m%d not handled with its logical id", i)
		}
	}
	eventually(t, 5*time.Second, func() error {
		if n := streamMsgs(t, e.js, "INBOUND_0"); n != 0 {
			return fmt.Errorf("%d left", n)
		}
		return nil
	})
}

// While a dependency is down the runtime holds what it has, fetches nothing
// more and uses up no delivery attempt; it resumes by itself.
func TestConsumerUnavailableHoldsWithoutBurningAttempts(t *testing.T) {
	e := setup(t, fastTopology())
	e.publishN(t, 0, "acme", 50, []byte("x"))
	var down atomic.Bool
	down.Store(true)
	var maxDelivered atomic.Int32
	var calls atomic.Int64
	c := newConsumer(t, e, streams.ConsumerConfig{Shard: 0, MaxInFlight: 10, Concurrency: 10, ProbeInterval: 100 * time.Millisecond,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			calls.Add(1)
			for {
				cur := maxDelivered.Load()
				if int32(m.Delivered) <= cur || maxDelivered.CompareAndSwap(cur, int32(m.Delivered)) {
					break
				}
			}
			if down.Load() {
				return streams.Unavailable(errors.New("postgres: connection refused"))
			}
			return streams.Ack()
		}})
	run(t, c)
	eventually(t, 5*time.Second, func() error {
		if c.Ready() == nil {
			return errors.New("still ready")
		}
		return nil
	})
	// Hold for several ack waits (300ms): nothing may be redelivered.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if st := c.Stats(); st.InFlight > 10 {
			t.Fatalf("fetched while holding: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if calls.Load() < 20 {
		t.Fatalf("handler probed only %d times", calls.Load())
	}
	down.Store(false)
	eventually(t, 10*time.Second, func() error {
		if st := c.Stats(); st.Acked != 50 {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	if c.Ready() != nil {
		t.Fatal("not ready after recovery")
	}
	if maxDelivered.Load() != 1 {
		t.Fatalf("a message was delivered %d times during the outage", maxDelivered.Load())
	}
	if st := c.Stats(); st.DeadLettered != 0 || st.Retried != 0 {
		t.Fatalf("outage burned attempts: %+v", st)
	}
}

// A handler that never returns (a crash loop) exhausts MaxDeliver by ack
// timeouts; the advisory path dead-letters it by sequence and removes it.
func TestDeadLetterBySequenceFromAdvisory(t *testing.T) {
	e := setup(t, fastTopology())
	advisories := make(chan *nats.Msg, 4)
	sub, err := e.nc.ChanSubscribe(streams.MaxDeliverAdvisorySubject, advisories)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	e.publishN(t, 0, "acme", 1, []byte("crash"))
	cons, _ := e.js.Consumer(t.Context(), "INBOUND_0", streams.StageSender) // wrong stream: expect error
	_ = cons
	c, err := e.js.Consumer(t.Context(), "INBOUND_0", streams.StageProcessor)
	if err != nil {
		t.Fatal(err)
	}
	// Fetch and never ack, like a process that dies on the message.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			b, err := c.Fetch(1, jetstream.FetchMaxWait(500*time.Millisecond))
			if err != nil {
				continue
			}
			for range b.Messages() {
			}
		}
	}()
	var adv streams.MaxDeliverAdvisory
	select {
	case m := <-advisories:
		if err := json.Unmarshal(m.Data, &adv); err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("no max-deliveries advisory")
	}
	cancel()
	found, err := streams.DeadLetterBySequence(t.Context(), e.js, adv, streams.ClassMaxDeliver, errors.New("handler never finished"))
	if err != nil || !found {
		t.Fatalf("found %v err %v", found, err)
	}
	again, err := streams.DeadLetterBySequence(t.Context(), e.js, adv, streams.ClassMaxDeliver, errors.New("handler never finished"))
	if err != nil || again {
		t.Fatalf("second call: found %v err %v (want idempotent success)", again, err)
	}
	dls := readDeadLetters(t, e, 0, 1)
	if dls[0].ErrorClass != streams.ClassMaxDeliver || dls[0].Attempts != 4 || string(dls[0].Payload) != "crash" {
		t.Fatalf("envelope %+v", dls[0])
	}
	if n := streamMsgs(t, e.js, "INBOUND_0"); n != 0 {
		t.Fatalf("stage stream still holds %d", n)
	}
	if n := streamMsgs(t, e.js, "DEADLETTER_0"); n != 1 {
		t.Fatalf("dead letters %d, want exactly 1", n)
	}
}

func TestConsumerStopsGracefully(t *testing.T) {
	e := setup(t, fastTopology())
	e.publishN(t, 0, "acme", 200, []byte("x"))
	release := make(chan struct{})
	var started, finished atomic.Int64
	c := newConsumer(t, e, streams.ConsumerConfig{Shard: 0, MaxInFlight: 20, Concurrency: 20, StopTimeout: 5 * time.Second,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			started.Add(1)
			<-release
			finished.Add(1)
			return streams.Ack()
		}})
	stop := run(t, c)
	eventually(t, 5*time.Second, func() error {
		if started.Load() < 20 {
			return fmt.Errorf("started %d", started.Load())
		}
		return nil
	})
	go func() { time.Sleep(100 * time.Millisecond); close(release) }()
	t0 := time.Now()
	stop()
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("stop took %v", d)
	}
	// Every message the runtime took was finished and acked; the rest stay.
	st := c.Stats()
	if st.Acked != finished.Load() || st.InFlight != 0 {
		t.Fatalf("stats %+v, finished %d", st, finished.Load())
	}
	if left := streamMsgs(t, e.js, "INBOUND_0"); int64(left) != 200-st.Acked {
		t.Fatalf("left %d, acked %d", left, st.Acked)
	}
}

// A deferred message comes back after the delay as a fresh delivery (no
// attempt used up) and does not hold a slot meanwhile.
func TestConsumerDeferBringsMessageBackWithoutUsingAttempts(t *testing.T) {
	e := setup(t, fastTopology())
	e.publishN(t, 0, "acme", 3, []byte("x"))
	var mu sync.Mutex
	seen := map[string][]time.Time{}
	deliveries := map[string][]int{}
	c := newConsumer(t, e, streams.ConsumerConfig{Shard: 0, Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
		mu.Lock()
		defer mu.Unlock()
		seen[m.ID] = append(seen[m.ID], time.Now())
		deliveries[m.ID] = append(deliveries[m.ID], m.Delivered)
		if m.Deferrals != len(seen[m.ID])-1 {
			t.Errorf("%s: Deferrals %d on visit %d", m.ID, m.Deferrals, len(seen[m.ID]))
		}
		if len(seen[m.ID]) <= 3 {
			return streams.Defer(time.Second, "breaker_open")
		}
		return streams.Ack()
	}})
	run(t, c)
	eventually(t, 20*time.Second, func() error {
		if st := c.Stats(); st.Acked != 3 || st.Deferred != 9 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for id, ts := range seen {
		for i := 1; i < len(ts); i++ {
			if gap := ts[i].Sub(ts[i-1]); gap < 900*time.Millisecond {
				t.Fatalf("%s came back after %v, before its delay", id, gap)
			}
		}
		for _, d := range deliveries[id] {
			if d != 1 {
				t.Fatalf("%s deliveries %v: a deferral used up an attempt", id, deliveries[id])
			}
		}
	}
	eventually(t, 5*time.Second, func() error {
		if n := streamMsgs(t, e.js, "INBOUND_0"); n != 0 {
			return fmt.Errorf("%d left (schedules or copies)", n)
		}
		return nil
	})
}

// PurgeAccount wakes the stage consumer after a purge, and the runtime acks
// the wake-up without calling the handler.
func TestPurgeAccountWakesTheStageWithoutReachingTheHandler(t *testing.T) {
	e := setup(t, fastTopology())
	e.publishN(t, 0, "gone", 30, []byte("x"))
	n, err := streams.PurgeAccount(t.Context(), e.js, streams.KindInbound, 0, "gone")
	if err != nil || n != 30 {
		t.Fatalf("purged %d (%v), want 30", n, err)
	}
	var handled atomic.Int64
	c := newConsumer(t, e, streams.ConsumerConfig{Shard: 0, Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
		handled.Add(1)
		return streams.Ack()
	}})
	run(t, c)
	eventually(t, 5*time.Second, func() error {
		if n := streamMsgs(t, e.js, "INBOUND_0"); n != 0 {
			return fmt.Errorf("%d left (the wake-up not acked)", n)
		}
		return nil
	})
	if handled.Load() != 0 || c.Stats().Acked != 0 {
		t.Fatalf("the wake-up reached the handler (%d) or was counted (%+v)", handled.Load(), c.Stats())
	}
}
