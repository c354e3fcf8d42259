package streamstest

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

// Harness describes the handler under test.
type Harness struct {
	// Stage declares the consumer: Name and Kind are required. MaxDeliver,
	// BackOff and MaxAckPending left zero take the suite's fast values
	// (3; 250ms, 500ms; 64).
	Stage streams.ConsumerSpec
	// NewHandler builds the handler. It is called once per consumer the
	// suite starts (a crashed consumer's successor gets a fresh one), with
	// the subtest's environment (a publisher for a handler that publishes).
	// Required.
	NewHandler func(t *testing.T, e *Env) streams.Handler
	// GoodMessage returns a message the handler processes successfully: a
	// distinct message, with its own effect, for every i. Its Subject.Kind
	// must be Stage.Kind; the suite publishes it on shard 0 whatever
	// Subject.Shard says. Required.
	GoodMessage func(i int) streams.Message
	// PoisonMessage returns a message the handler must dead-letter at once
	// (undecodable, schema-invalid). Nil skips the Poison subtest.
	PoisonMessage func() streams.Message
	// Effect says how many times m's effect happened (rows written for it,
	// requests a receiver saw with its idempotency key, messages published
	// for it in e's streams). Required.
	Effect func(t *testing.T, e *Env, m streams.Message) int
	// BreakDependency makes the handler's dependency unavailable (closes
	// its database connections and points them at an address that refuses
	// connections, say) and returns the function that restores it. The
	// suite calls restore once; it also calls it at the end of the subtest
	// if a failure stopped the subtest first. Nil skips DependencyOutage.
	BreakDependency func(t *testing.T) (restore func())
	// Reset, when set, is called at the start of every subtest, once its
	// server is provisioned. Every subtest has a new server, whose stream
	// sequences start again at 1: clear whatever state the handler keys by
	// stream position (the rows of a sink keyed by stream and sequence).
	Reset func(t *testing.T, e *Env)
	// Concurrency is the number of handler goroutines. Default 4.
	Concurrency int
	// Features says what the handler does in production.
	Features Features
}

// Features says which parts of the contract apply to the handler under
// test, like Watermill's pub/sub Features.
type Features struct {
	// AccountGate: in production the stage runs behind the account gate
	// (the default of inbound and outbound stages; StageConfig.Gate), so the
	// suite checks that deleted, deleting and superseded accounts' messages
	// never reach the handler (and, on work-queue stages, that a suspended
	// account's message is parked and handled once after its release).
	// Leave it off for stages that must see every account's messages
	// (lifecycle events, dead letters): DeletedAccount is then skipped.
	AccountGate bool
	// EffectMayRepeat: the handler's effect cannot be deduplicated (a
	// receiver without idempotency keys), so the suite checks that every
	// effect happened at least once instead of exactly once.
	EffectMayRepeat bool
}

// Env is one subtest's environment: an embedded server with the suite's
// topology provisioned.
type Env struct {
	// Conn and JetStream are connected to the subtest's server.
	Conn      *nats.Conn
	JetStream jetstream.JetStream
	// Topology is the provisioned topology: one shard, Harness.Stage as its
	// only consumer.
	Topology streams.Topology
	// Publisher publishes with Topology's limits.
	Publisher *streams.Publisher
	// Gate is the stage's account gate when Features.AccountGate is set:
	// every account is active until the suite says otherwise.
	Gate *Gate
	// Stream is the stream the stage reads (shard 0 of Harness.Stage.Kind).
	Stream string
}

// Gate is an in-memory streams.AccountGate for tests. Every account is
// active (generation 0) until Set says otherwise. It is safe for concurrent
// use.
type Gate struct {
	mu sync.RWMutex
	m  map[string]gateEntry
}

type gateEntry struct {
	status     streams.AccountStatus
	generation int64
}

// NewGate returns a Gate with every account active.
func NewGate() *Gate { return &Gate{m: map[string]gateEntry{}} }

// Set sets an account's status and generation.
func (g *Gate) Set(account string, status streams.AccountStatus, generation int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.m[account] = gateEntry{status, generation}
}

// AccountState implements streams.AccountGate.
func (g *Gate) AccountState(account string) (streams.AccountStatus, int64, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if e, ok := g.m[account]; ok {
		return e.status, e.generation, true
	}
	return streams.StatusActive, 0, true
}

// Suite timing.
const (
	ackWait      = 250 * time.Millisecond
	probe        = 100 * time.Millisecond
	drainTimeout = 45 * time.Second
	// stopSlack is how much longer than its StopTimeout a stage may take to
	// return from Run (the fetch in progress ends, acks are sent).
	stopSlack = 2 * time.Second
)

// Index ranges of GoodMessage, one per subtest, so effects never collide.
const (
	baseCrash  = 1000
	basePoison = 2000
	baseSize   = 3000
	baseGate   = 4000
	baseOutage = 5000
	baseStop   = 6000
)

// Run runs the contract suite against the handler h describes, one subtest
// per clause (see the package documentation).
func Run(t *testing.T, h Harness) {
	t.Helper()
	h.check(t)
	t.Run("CrashBeforeAck", func(t *testing.T) { h.crashBeforeAck(t) })
	t.Run("Poison", func(t *testing.T) { h.poison(t) })
	t.Run("Oversize", func(t *testing.T) { h.oversize(t) })
	t.Run("DeletedAccount", func(t *testing.T) { h.deletedAccount(t) })
	t.Run("DependencyOutage", func(t *testing.T) { h.dependencyOutage(t) })
	t.Run("StopMidBatch", func(t *testing.T) { h.stopMidBatch(t) })
}

func (h *Harness) check(t *testing.T) {
	t.Helper()
	var missing []string
	if h.Stage.Name == "" {
		missing = append(missing, "Stage.Name")
	}
	if h.Stage.Kind == "" {
		missing = append(missing, "Stage.Kind")
	}
	if h.NewHandler == nil {
		missing = append(missing, "NewHandler")
	}
	if h.GoodMessage == nil {
		missing = append(missing, "GoodMessage")
	}
	if h.Effect == nil {
		missing = append(missing, "Effect")
	}
	if len(missing) > 0 {
		t.Fatalf("streamstest: Harness needs %s", strings.Join(missing, ", "))
	}
	if m := h.GoodMessage(0); m.Subject.Kind != h.Stage.Kind {
		t.Fatalf("streamstest: GoodMessage(0) goes to kind %q, but the stage reads %q", m.Subject.Kind, h.Stage.Kind)
	}
}

func (h *Harness) concurrency() int { return cmp.Or(h.Concurrency, 4) }

func (h *Harness) topology() streams.Topology {
	spec := h.Stage
	spec.MaxDeliver = cmp.Or(spec.MaxDeliver, 3)
	if len(spec.BackOff) == 0 {
		spec.BackOff = []time.Duration{ackWait, 2 * ackWait}
	}
	spec.MaxAckPending = cmp.Or(spec.MaxAckPending, 64)
	return streams.Topology{Shards: 1, Consumers: []streams.ConsumerSpec{spec}}.WithDefaults()
}

// start starts a server for the subtest and provisions the topology.
func (h *Harness) start(t *testing.T) *Env {
	t.Helper()
	srv := natsembed.Test(t)
	nc, err := nats.Connect(srv.ClientURL(), nats.Name("streamstest"))
	if err != nil {
		t.Fatalf("streamstest: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	topo := h.topology()
	if _, err := streams.Provision(t.Context(), js, topo, nil); err != nil {
		t.Fatalf("streamstest: provision: %v", err)
	}
	pub, err := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{Conn: nc, JetStream: js, Topology: topo, Publisher: pub, Gate: NewGate(), Stream: streams.StreamName(h.Stage.Kind, 0)}
	if h.Reset != nil {
		h.Reset(t, e)
	}
	return e
}

// good returns GoodMessage(i) on shard 0.
func (h *Harness) good(i int) streams.Message {
	m := h.GoodMessage(i)
	m.Subject.Shard = 0
	return m
}

func (h *Harness) goods(base, n int) []streams.Message {
	out := make([]streams.Message, n)
	for i := range out {
		out[i] = h.good(base + i)
	}
	return out
}

func (e *Env) publish(t *testing.T, msgs ...streams.Message) []streams.PublishResult {
	t.Helper()
	res := make([]streams.PublishResult, len(msgs))
	for i, m := range msgs {
		m.Subject.Shard = 0
		r, err := e.Publisher.Publish(t.Context(), m)
		if err != nil {
			t.Fatalf("streamstest: publish %s (%s): %v", m.ID, m.Subject, err)
		}
		res[i] = r
	}
	return res
}

// recorder records every handler call the runtime makes, by message id.
type recorder struct {
	mu    sync.Mutex
	calls map[string][]call
}

type call struct {
	delivered int
	outcome   streams.Outcome
}

func newRecorder() *recorder { return &recorder{calls: map[string][]call{}} }

func (r *recorder) wrap(h streams.Handler) streams.Handler {
	return func(ctx context.Context, m *streams.Msg) streams.Outcome {
		out := h(ctx, m)
		r.mu.Lock()
		r.calls[m.ID] = append(r.calls[m.ID], call{m.Delivered, out})
		r.mu.Unlock()
		return out
	}
}

func (r *recorder) get(id string) []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls[id])
}

func (r *recorder) ids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for id := range r.calls {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// acked returns the ids whose handler returned Ack.
func (r *recorder) acked() map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]bool{}
	for id, cs := range r.calls {
		for _, c := range cs {
			if c.outcome.Kind == streams.OutcomeAck {
				out[id] = true
			}
		}
	}
	return out
}

func (r *recorder) summary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	ids := make([]string, 0, len(r.calls))
	for id := range r.calls {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		fmt.Fprintf(&b, "\n  %s:", id)
		for _, c := range r.calls[id] {
			fmt.Fprintf(&b, " [delivery %d: %s]", c.delivered, c.outcome)
		}
	}
	return b.String()
}

// running is a stage started by the suite.
type running struct {
	stage   *streams.Stage
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
	elapsed time.Duration
}

// run starts a stage with handler (the harness's handler wrapped by the
// caller) and stops it when the test ends.
func (h *Harness) run(t *testing.T, e *Env, handler streams.Handler, tune func(*streams.StageConfig)) *running {
	t.Helper()
	gate := streams.NoGate
	if h.Features.AccountGate {
		gate = e.Gate
	}
	cfg := streams.StageConfig{
		JetStream: e.JetStream, Topology: e.Topology, Stage: h.Stage.Name, Shards: []int{0},
		Handler: handler, Gate: gate, Concurrency: h.concurrency(),
		StopTimeout: 5 * time.Second, ProbeInterval: probe, Logger: testLogger(t),
	}
	if tune != nil {
		tune(&cfg)
	}
	st, err := streams.NewStage(t.Context(), cfg)
	if err != nil {
		t.Fatalf("streamstest: NewStage: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{stage: st, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- st.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels the stage's context and waits for Run to return; it returns
// how long that took.
func (r *running) stop(t *testing.T) time.Duration {
	r.once.Do(func() {
		start := time.Now()
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("streamstest: stage Run: %v", err)
			}
		case <-time.After(time.Minute):
			t.Errorf("streamstest: stage did not stop within a minute")
		}
		r.elapsed = time.Since(start)
	})
	return r.elapsed
}

// waitFor polls cond until it returns nil, failing the test with its last
// error after within.
func waitFor(t *testing.T, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("streamstest: %s: not within %v: %v", what, within, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// drained returns nil once the stage's consumer has nothing pending and
// nothing unacknowledged.
func (h *Harness) drained(ctx context.Context, e *Env) error {
	cons, err := e.JetStream.Consumer(ctx, e.Stream, h.Stage.Name)
	if err != nil {
		return err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return err
	}
	if info.NumPending != 0 || info.NumAckPending != 0 {
		return fmt.Errorf("consumer %s/%s: %d pending, %d unacknowledged", e.Stream, h.Stage.Name, info.NumPending, info.NumAckPending)
	}
	return nil
}

// effectsAtLeastOnce returns nil once every message's effect happened.
func (h *Harness) effectsAtLeastOnce(t *testing.T, e *Env, msgs []streams.Message) error {
	for _, m := range msgs {
		if n := h.Effect(t, e, m); n < 1 {
			return fmt.Errorf("message %s: effect %d", m.ID, n)
		}
	}
	return nil
}

// checkEffects fails the test unless every message's effect happened
// exactly once (at least once with Features.EffectMayRepeat).
func (h *Harness) checkEffects(t *testing.T, e *Env, msgs []streams.Message, rec *recorder) {
	t.Helper()
	for _, m := range msgs {
		n := h.Effect(t, e, m)
		switch {
		case n == 1, n > 1 && h.Features.EffectMayRepeat:
		default:
			t.Errorf("message %s: effect happened %d times, want exactly 1; handler calls:%s", m.ID, n, rec.summary())
		}
	}
}

// deadLetters returns the dead letters of shard 0.
func deadLetters(t *testing.T, e *Env) []deadLetter {
	t.Helper()
	s, err := e.JetStream.Stream(t.Context(), streams.StreamName(streams.KindDeadLetter, 0))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []deadLetter
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		raw, err := s.GetMsg(t.Context(), seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("streamstest: read dead letter %d: %v", seq, err)
		}
		var env schemas.DeadLetter
		if err := json.Unmarshal(raw.Data, &env); err != nil {
			t.Fatalf("streamstest: dead letter %d is not an envelope: %v", seq, err)
		}
		out = append(out, deadLetter{env: env, raw: raw})
	}
	return out
}

type deadLetter struct {
	env schemas.DeadLetter
	raw *jetstream.RawStreamMsg
}

func noDeadLetters(t *testing.T, e *Env) {
	t.Helper()
	for _, dl := range deadLetters(t, e) {
		t.Errorf("unexpected dead letter %s: %s (%s: %s) after %d attempts", dl.env.ID, dl.env.OriginalSubject, dl.env.ErrorClass, dl.env.Error, dl.env.Attempts)
	}
}

// ctxSleep sleeps d or until ctx ends.
func ctxSleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// stopped is the outcome of a handler interrupted by a stop: the runtime
// leaves the message unacknowledged, as a crash would.
func stopped(ctx context.Context) streams.Outcome {
	return streams.Retry(cmp.Or(context.Cause(ctx), streams.ErrStopped))
}

// crashBeforeAck: consumers stopped mid-batch without acking, then a fresh
// consumer; every effect exactly once.
func (h *Harness) crashBeforeAck(t *testing.T) {
	e := h.start(t)
	c := h.concurrency()
	msgs := h.goods(baseCrash, 3*c)
	e.publish(t, msgs...)

	rec1 := newRecorder()
	inner := h.NewHandler(t, e)
	var calls atomic.Int64
	crashing := func(ctx context.Context, m *streams.Msg) streams.Outcome {
		k := calls.Add(1)
		switch {
		case k <= int64(c): // the first few complete normally
			return inner(ctx, m)
		case k%2 == 1: // the effect happens, the ack never does
			inner(ctx, m)
			<-ctx.Done()
			return stopped(ctx)
		default: // the consumer dies before the effect
			<-ctx.Done()
			return stopped(ctx)
		}
	}
	r1 := h.run(t, e, rec1.wrap(crashing), func(cfg *streams.StageConfig) { cfg.StopTimeout = 300 * time.Millisecond })
	waitFor(t, 20*time.Second, "every handler goroutine busy", func() error {
		if n := calls.Load(); n < int64(2*c) {
			return fmt.Errorf("%d handler calls", n)
		}
		return nil
	})
	r1.stop(t)

	rec2 := newRecorder()
	h.run(t, e, rec2.wrap(h.NewHandler(t, e)), nil)
	waitFor(t, drainTimeout, "the fresh consumer finishes the work", func() error {
		if err := h.drained(t.Context(), e); err != nil {
			return err
		}
		return h.effectsAtLeastOnce(t, e, msgs)
	})
	h.checkEffects(t, e, msgs, rec2)
	noDeadLetters(t, e)
	redelivered := 0
	for _, m := range msgs {
		for _, c := range rec2.get(m.ID) {
			if c.delivered > 1 {
				redelivered++
				break
			}
		}
	}
	if redelivered == 0 {
		t.Errorf("no message was redelivered to the fresh consumer: the crash was not exercised; calls:%s", rec2.summary())
	}
}

// poison: dead-lettered at once with its envelope; the good ones around it
// are processed.
func (h *Harness) poison(t *testing.T) {
	if h.PoisonMessage == nil {
		t.Skip("Harness.PoisonMessage is nil")
	}
	e := h.start(t)
	goods := h.goods(basePoison, 6)
	p := h.PoisonMessage()
	p.Subject.Shard = 0
	e.publish(t, goods[:3]...)
	pres := e.publish(t, p)[0]
	e.publish(t, goods[3:]...)

	rec := newRecorder()
	h.run(t, e, rec.wrap(h.NewHandler(t, e)), nil)
	waitFor(t, drainTimeout, "poison dead-lettered and good messages processed", func() error {
		if err := h.drained(t.Context(), e); err != nil {
			return err
		}
		if n := len(deadLetters(t, e)); n != 1 {
			return fmt.Errorf("%d dead letters", n)
		}
		return h.effectsAtLeastOnce(t, e, goods)
	})
	dls := deadLetters(t, e)
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	dl := dls[0].env
	if err := schemas.ValidateDeadLetter(dls[0].raw.Data); err != nil {
		t.Errorf("dead letter breaks its schema: %v", err)
	}
	want := func(field string, got, want any) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("dead letter %s = %v, want %v", field, got, want)
		}
	}
	want("originalSubject", dl.OriginalSubject, p.Subject.String())
	want("account", dl.Account, p.Subject.Account)
	want("shard", dl.Shard, 0)
	want("stage", dl.Stage, h.Stage.Name)
	want("originStream", dl.OriginStream, e.Stream)
	want("originSeq", dl.OriginSeq, pres.Sequence)
	want("id", dl.ID, fmt.Sprintf("%s:%d", e.Stream, pres.Sequence))
	want("Nats-Msg-Id of the dead letter", dls[0].raw.Header.Get(jetstream.MsgIDHeader), dl.ID)
	want("attempts (dead-lettered at once)", dl.Attempts, 1)
	if !bytes.Equal(dl.Payload, p.Data) {
		t.Errorf("dead letter payload = %q, want the original %q", dl.Payload, p.Data)
	}
	if got := dl.Headers[streams.HeaderMessageID]; len(got) == 0 || got[0] != p.ID {
		t.Errorf("dead letter headers %v lack the original %s %q", dl.Headers, streams.HeaderMessageID, p.ID)
	}
	if dl.ErrorClass == "" || dl.ErrorClass == streams.ClassTransient || dl.ErrorClass == streams.ClassMaxDeliver {
		t.Errorf("dead letter class %q: a poison message is a permanent failure (undecodable, schema_invalid, permanent)", dl.ErrorClass)
	}
	if dl.Error == "" {
		t.Errorf("dead letter has no error text")
	}
	if dl.FirstFailure.IsZero() || dl.LastFailure.Before(dl.FirstFailure) {
		t.Errorf("dead letter failure times %v .. %v", dl.FirstFailure, dl.LastFailure)
	}
	if n := h.Effect(t, e, p); n != 0 {
		t.Errorf("poison message: effect happened %d times, want 0", n)
	}
	if calls := rec.get(p.ID); len(calls) != 1 {
		t.Errorf("poison message handled %d times, want once:%s", len(calls), rec.summary())
	}
	h.checkEffects(t, e, goods, rec)
	if !streams.SharedKind(h.Stage.Kind) {
		if n := streamMsgs(t, e, e.Stream); n != 0 {
			t.Errorf("%d messages left in the work-queue stream %s", n, e.Stream)
		}
	}
}

func streamMsgs(t *testing.T, e *Env, name string) uint64 {
	t.Helper()
	s, err := e.JetStream.Stream(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// pad returns data grown to n bytes with trailing spaces (still valid JSON
// when data was).
func pad(data []byte, n int) []byte {
	if len(data) >= n {
		return data
	}
	return append(slices.Clone(data), bytes.Repeat([]byte(" "), n-len(data))...)
}

// oversize: refused by the publisher before sending; nothing reaches the
// handler.
func (h *Harness) oversize(t *testing.T) {
	e := h.start(t)
	limit := min(e.Topology.MaxMsgSize(h.Stage.Kind), int(e.Conn.MaxPayload()))

	byPayload := h.good(baseSize)
	byPayload.Data = pad(byPayload.Data, limit+1)
	byHeaders := h.good(baseSize + 1)
	byHeaders.Data = pad(byHeaders.Data, limit-8) // the id headers push it over
	for _, m := range []streams.Message{byPayload, byHeaders} {
		_, err := e.Publisher.Publish(t.Context(), m)
		var se *streams.SizeError
		switch {
		case err == nil:
			t.Fatalf("message %s of %d payload bytes was published; the limit is %d bytes with headers", m.ID, len(m.Data), limit)
		case !errors.Is(err, streams.ErrTooLarge) || !errors.As(err, &se):
			t.Fatalf("message %s: error %v, want ErrTooLarge (*SizeError)", m.ID, err)
		case se.Limit != limit || se.Size <= limit:
			t.Errorf("message %s: SizeError{Size: %d, Limit: %d}, want Limit %d and Size over it", m.ID, se.Size, se.Limit, limit)
		}
	}
	sentinel := h.good(baseSize + 2)
	e.publish(t, sentinel)

	rec := newRecorder()
	h.run(t, e, rec.wrap(h.NewHandler(t, e)), nil)
	waitFor(t, drainTimeout, "the message after the refused ones is processed", func() error {
		if err := h.drained(t.Context(), e); err != nil {
			return err
		}
		return h.effectsAtLeastOnce(t, e, []streams.Message{sentinel})
	})
	if ids := rec.ids(); len(ids) != 1 || ids[0] != sentinel.ID {
		t.Errorf("handler saw %v, want only %s", ids, sentinel.ID)
	}
	s, err := e.JetStream.Stream(t.Context(), e.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := s.Info(t.Context()); err != nil || info.State.LastSeq != 1 {
		t.Errorf("stream %s stored up to sequence %d (err %v), want only the one message that fits", e.Stream, info.State.LastSeq, err)
	}
	for _, m := range []streams.Message{byPayload, byHeaders} {
		if n := h.Effect(t, e, m); n != 0 {
			t.Errorf("refused message %s: effect happened %d times", m.ID, n)
		}
	}
	h.checkEffects(t, e, []streams.Message{sentinel}, rec)
}

// deletedAccount: the gate drops deleted, deleting and superseded accounts'
// messages before the handler; a suspended account's message is parked and
// handled once after its release.
func (h *Harness) deletedAccount(t *testing.T) {
	if !h.Features.AccountGate {
		t.Skip("Features.AccountGate is off: this stage sees every account's messages")
	}
	e := h.start(t)
	deleted, deleting, superseded := h.good(baseGate), h.good(baseGate+1), h.good(baseGate+2)
	deleted.Subject.Account, deleting.Subject.Account, superseded.Subject.Account = "sf-deleted", "sf-deleting", "sf-recreated"
	e.Gate.Set("sf-deleted", streams.StatusDeleted, 2)
	e.Gate.Set("sf-deleting", streams.StatusDeleting, 2)
	e.Gate.Set("sf-recreated", streams.StatusActive, 2)
	superseded.Generation = 1 // a straggler of the account's first life
	control := h.good(baseGate + 3)
	dropped := []streams.Message{deleted, deleting, superseded}
	e.publish(t, append(dropped, control)...)

	rec := newRecorder()
	r := h.run(t, e, rec.wrap(h.NewHandler(t, e)), nil)
	waitFor(t, drainTimeout, "dropped messages terminated and the live one processed", func() error {
		if err := h.drained(t.Context(), e); err != nil {
			return err
		}
		return h.effectsAtLeastOnce(t, e, []streams.Message{control})
	})
	for _, m := range dropped {
		if calls := rec.get(m.ID); len(calls) > 0 {
			t.Errorf("message %s of a closed account (%s) reached the handler:%s", m.ID, m.Subject.Account, rec.summary())
		}
		if n := h.Effect(t, e, m); n != 0 {
			t.Errorf("message %s of a closed account: effect happened %d times", m.ID, n)
		}
	}
	if st := r.stage.Stats(); st.Dropped != int64(len(dropped)) {
		t.Errorf("stage dropped %d messages, want %d (account_deleted)", st.Dropped, len(dropped))
	}
	h.checkEffects(t, e, []streams.Message{control}, rec)
	noDeadLetters(t, e)

	if streams.SharedKind(h.Stage.Kind) {
		return // parking applies to work-queue stages only
	}
	suspended := h.good(baseGate + 4)
	acct := suspended.Subject.Account
	e.Gate.Set(acct, streams.StatusSuspended, 0)
	e.publish(t, suspended)
	waitFor(t, drainTimeout, "the suspended account's message is parked", func() error {
		if st := r.stage.Stats(); st.Dropped != int64(len(dropped))+1 {
			return fmt.Errorf("%d dropped", st.Dropped)
		}
		return h.drained(t.Context(), e)
	})
	if calls := rec.get(suspended.ID); len(calls) > 0 {
		t.Errorf("message of suspended account %s reached the handler", acct)
	}
	e.Gate.Set(acct, streams.StatusActive, 0)
	n, err := streams.ReleaseHeld(t.Context(), e.JetStream, h.Stage.Kind, 0, acct)
	if err != nil || n != 1 {
		t.Fatalf("ReleaseHeld(%s) = %d, %v; want 1 message released", acct, n, err)
	}
	waitFor(t, drainTimeout, "the released message is processed", func() error {
		if err := h.drained(t.Context(), e); err != nil {
			return err
		}
		return h.effectsAtLeastOnce(t, e, []streams.Message{suspended})
	})
	h.checkEffects(t, e, []streams.Message{suspended}, rec)
}

// dependencyOutage: Unavailable holds without using attempts; everything is
// processed once the dependency is back.
func (h *Harness) dependencyOutage(t *testing.T) {
	if h.BreakDependency == nil {
		t.Skip("Harness.BreakDependency is nil")
	}
	e := h.start(t)
	msgs := h.goods(baseOutage, 3*h.concurrency())
	e.publish(t, msgs...)

	restore := sync.OnceFunc(h.BreakDependency(t))
	t.Cleanup(restore)
	rec := newRecorder()
	r := h.run(t, e, rec.wrap(h.NewHandler(t, e)), nil)
	waitFor(t, 20*time.Second, "the stage holds its messages (handler returns Unavailable)", func() error {
		if r.stage.Stats().Held == 0 {
			return fmt.Errorf("nothing held; handler calls so far:%s", rec.summary())
		}
		return nil
	})
	// Hold for longer than every allowed delivery would take, had the
	// messages been retried.
	spec, _ := e.Topology.Consumer(h.Stage.Name)
	var span time.Duration
	for i := range spec.MaxDeliver {
		span += spec.BackOff[min(i, len(spec.BackOff)-1)]
	}
	time.Sleep(min(span+ackWait, 10*time.Second))
	if err := r.stage.Ready(); err == nil {
		t.Errorf("stage reports ready while its dependency is down")
	}
	for _, id := range rec.ids() {
		for _, c := range rec.get(id) {
			if c.outcome.Kind != streams.OutcomeUnavailable {
				t.Errorf("message %s: outcome %s while the dependency was down (it uses an attempt); want Unavailable", id, c.outcome)
			}
		}
	}
	noDeadLetters(t, e)
	restore()

	waitFor(t, drainTimeout, "every message processed after the restore", func() error {
		if err := h.drained(t.Context(), e); err != nil {
			return err
		}
		return h.effectsAtLeastOnce(t, e, msgs)
	})
	waitFor(t, 10*time.Second, "the stage reports ready again", r.stage.Ready)
	h.checkEffects(t, e, msgs, rec)
	noDeadLetters(t, e)
	for _, m := range msgs {
		for _, c := range rec.get(m.ID) {
			if c.outcome.Kind == streams.OutcomeAck && c.delivered != 1 {
				t.Errorf("message %s succeeded on delivery %d: the outage used up attempts; calls:%s", m.ID, c.delivered, rec.summary())
			}
		}
	}
}

// stopMidBatch: a stop (SIGTERM) while handlers are busy returns within the
// stop timeout; what was acked has its effect, the rest is redelivered; no
// effect twice.
func (h *Harness) stopMidBatch(t *testing.T) {
	e := h.start(t)
	c := h.concurrency()
	msgs := h.goods(baseStop, 6*c)
	e.publish(t, msgs...)

	const stopTimeout = time.Second
	rec1 := newRecorder()
	inner := h.NewHandler(t, e)
	var calls atomic.Int64
	busy := func(ctx context.Context, m *streams.Msg) streams.Outcome {
		if calls.Add(1)%5 == 0 { // a call that hangs until cancelled
			<-ctx.Done()
			return stopped(ctx)
		}
		out := inner(ctx, m)
		ctxSleep(ctx, 30*time.Millisecond)
		return out
	}
	r1 := h.run(t, e, rec1.wrap(busy), func(cfg *streams.StageConfig) {
		cfg.StopTimeout, cfg.MaxInFlight = stopTimeout, 2*c
	})
	waitFor(t, 20*time.Second, "some messages acked", func() error {
		if n := len(rec1.acked()); n < c {
			return fmt.Errorf("%d acked", n)
		}
		return nil
	})
	if took := r1.stop(t); took > stopTimeout+stopSlack {
		t.Errorf("Run returned %v after the stop; the stop timeout is %v", took, stopTimeout)
	}
	acked := rec1.acked()
	for _, m := range msgs {
		if acked[m.ID] {
			if n := h.Effect(t, e, m); n < 1 {
				t.Errorf("message %s was acked but its effect happened %d times", m.ID, n)
			}
		}
	}

	rec2 := newRecorder()
	h.run(t, e, rec2.wrap(h.NewHandler(t, e)), nil)
	waitFor(t, drainTimeout, "the next consumer finishes the work", func() error {
		if err := h.drained(t.Context(), e); err != nil {
			return err
		}
		return h.effectsAtLeastOnce(t, e, msgs)
	})
	h.checkEffects(t, e, msgs, rec2)
	noDeadLetters(t, e)
	left := 0
	for _, m := range msgs {
		if len(rec2.get(m.ID)) > 0 {
			left++
			if acked[m.ID] {
				t.Errorf("message %s was acked before the stop and delivered again", m.ID)
			}
		}
	}
	if left == 0 {
		t.Errorf("nothing was left for the next consumer: the stop did not interrupt a batch")
	}
}

// testLogger writes the stage's warnings to the test log (debug with
// STREAMSTEST_DEBUG=1), and nothing once the test has ended.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	level := slog.LevelWarn
	if os.Getenv("STREAMSTEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
