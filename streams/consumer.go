package streams

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/shardflow/shardflow/schemas"
)

// Handler processes one message and says what should happen to it. It must
// be idempotent: delivery is at least once. ctx carries the trace of the
// message and is cancelled (cause ErrStopped) when a stop runs out of time.
type Handler func(ctx context.Context, m *Msg) Outcome

// Msg is a delivered message.
type Msg struct {
	// Subject is the parsed subject.
	Subject Subject
	// ID is the logical message id (Shardflow-Message-Id, else Nats-Msg-Id).
	ID string
	// Generation is the account generation it was published under (0: none).
	Generation int64
	// Data is the payload; Header the headers. Do not keep them after the
	// handler returns.
	Data   []byte
	Header nats.Header
	// Stream and Sequence locate it; Delivered counts deliveries, this one
	// included (1 on the first).
	Stream    string
	Sequence  uint64
	Delivered int
	// Published is when JetStream stored it.
	Published time.Time
	// Deferrals counts earlier Defer outcomes of this message.
	Deferrals int

	raw  jetstream.Msg
	size int
}

// AccountStatus is an account's lifecycle state.
type AccountStatus string

// Account states.
const (
	StatusActive    AccountStatus = "active"
	StatusSuspended AccountStatus = "suspended"
	StatusDeleting  AccountStatus = "deleting"
	StatusDeleted   AccountStatus = "deleted"
)

// AccountGate tells the runtime an account's state before a handler runs.
// The Directory implements it.
type AccountGate interface {
	// AccountState returns the account's status and generation; ok is false
	// for an account it has never seen.
	AccountState(account string) (status AccountStatus, generation int64, ok bool)
}

// ConsumerConfig configures a Consumer: one stage on one shard.
type ConsumerConfig struct {
	// JetStream is the client. Required.
	JetStream jetstream.JetStream
	// Topology is the declared topology. Default DefaultTopology().
	Topology Topology
	// Stage is the consumer's name in the topology (processor, sender...).
	// Required.
	Stage string
	// Shard is the shard to consume. Required to be in range.
	Shard int
	// Handler is called for every message. Required.
	Handler Handler
	// MaxInFlight bounds the messages held at once (fetched and not yet
	// acked, nak'ed or terminated). Default and maximum: the consumer's
	// MaxAckPending.
	MaxInFlight int
	// MaxInFlightBytes bounds the bytes held at once. Default 16 MiB; it must
	// fit at least one largest message of the stream.
	MaxInFlightBytes int
	// Concurrency is the number of handler goroutines. Default
	// min(MaxInFlight, 64).
	Concurrency int
	// Gate, when set, is asked for the account's state before the handler
	// runs: a deleted account's message (or one from an older generation) is
	// dropped with reason account_deleted; a suspended account's message is
	// parked (a copy kept under <kind>.<shard>.<account>.held.<type>, released
	// on restore) and dropped with reason account_suspended.
	Gate AccountGate
	// FetchWait is how long one pull request waits for messages. Short: a
	// pull consumer that was at MaxAckPending when a filtered purge (an
	// account deletion) freed its slots is not woken by the server and sits
	// idle until its next pull request (a JetStream quirk), so this bounds
	// that stall for the other accounts of the shard. Default 250ms.
	FetchWait time.Duration
	// Brake slows the consumer while nearly all its messages end
	// dead-lettered (see Brake). Zero: no brake.
	Brake Brake
	// ProbeInterval is how often a held message is retried while its
	// handler reports Unavailable. Default 1s.
	ProbeInterval time.Duration
	// StopTimeout bounds a graceful stop: in-flight handlers get this long to
	// finish, then their context is cancelled. Default 10s.
	StopTimeout time.Duration
	// Logger receives one line per failure. Default slog.Default().
	Logger *slog.Logger
	// TracerProvider and MeterProvider default to the globals.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
}

// Stats are counters of a Consumer, for tests and status pages.
type Stats struct {
	Acked, Retried, DeadLettered, Dropped, Held, Deferred int64
	InFlight, InFlightBytes                               int64
	PeakInFlight, PeakInFlightBytes                       int64
	// Braked: the consumer is slowed by its Brake.
	Braked bool
}

// Consumer runs a Handler over one stage consumer of one shard. Create it
// with NewConsumer, run it with Run.
type Consumer struct {
	cfg        ConsumerConfig
	spec       ConsumerSpec
	stream     string
	cons       jetstream.Consumer
	maxDeliver int
	backoff    []time.Duration
	maxMsg     int
	maxReq     int // the consumer's MaxRequestMaxBytes (0: unlimited)
	log        *slog.Logger
	tracer     trace.Tracer
	m          *stageMetrics

	inFlight, inFlightBytes, peak, peakBytes atomic.Int64
	acked, retried, deadLettered, dropped    atomic.Int64
	deferred                                 atomic.Int64
	held                                     atomic.Int64 // handlers holding for a dependency
	freed                                    chan struct{}

	firstFailMu sync.Mutex
	firstFail   map[uint64]time.Time

	slots   []slot
	lastErr atomic.Pointer[error]
	brake   brakeState
	pub     *Publisher       // builds what Forward publishes
	fwd     chan *forwarding // Forward outcomes waiting for their publish acks

	// queued holds the messages fetched and waiting for a handler
	// goroutine, with when they were fetched: keepAlive covers them too, or
	// their ack wait would run out in the queue (behind slow or held
	// handlers) and the server would redeliver them, using up attempts.
	queuedMu sync.Mutex
	queued   map[*Msg]time.Time
}

type slot struct {
	mu    sync.Mutex
	msg   jetstream.Msg
	since time.Time
}

// NewConsumer checks cfg and binds to the durable consumer, which must have
// been provisioned.
func NewConsumer(ctx context.Context, cfg ConsumerConfig) (*Consumer, error) {
	if cfg.JetStream == nil || cfg.Handler == nil {
		return nil, errors.New("streams: ConsumerConfig needs JetStream and Handler")
	}
	if cfg.Topology.Shards == 0 {
		cfg.Topology = DefaultTopology()
	}
	spec, ok := cfg.Topology.Consumer(cfg.Stage)
	if !ok {
		return nil, fmt.Errorf("streams: stage %q is not declared in the topology", cfg.Stage)
	}
	if cfg.Shard < 0 || cfg.Shard >= cfg.Topology.Shards {
		return nil, fmt.Errorf("streams: shard %d out of range 0..%d", cfg.Shard, cfg.Topology.Shards-1)
	}
	stream := StreamName(spec.Kind, cfg.Shard)
	cons, err := cfg.JetStream.Consumer(ctx, stream, spec.Name)
	if err != nil {
		return nil, fmt.Errorf("streams: consumer %s/%s (run provisioning first): %w", stream, spec.Name, err)
	}
	info := cons.CachedInfo()
	c := &Consumer{
		cfg:        cfg,
		spec:       spec,
		stream:     stream,
		cons:       cons,
		maxDeliver: info.Config.MaxDeliver,
		backoff:    info.Config.BackOff,
		maxMsg:     cfg.Topology.MaxMsgSize(spec.Kind),
		maxReq:     info.Config.MaxRequestMaxBytes,
		log:        cmp.Or(cfg.Logger, slog.Default()).With("stage", spec.Name, "shard", cfg.Shard),
		tracer:     tracerFrom(cfg.TracerProvider),
		freed:      make(chan struct{}, 1),
		firstFail:  map[uint64]time.Time{},
		queued:     map[*Msg]time.Time{},
	}
	if c.maxDeliver <= 0 {
		return nil, fmt.Errorf("streams: consumer %s/%s has unlimited MaxDeliver; re-provision", stream, spec.Name)
	}
	if len(c.backoff) == 0 {
		c.backoff = []time.Duration{info.Config.AckWait}
	}
	c.cfg.MaxInFlight = min(cmp.Or(cfg.MaxInFlight, info.Config.MaxAckPending), info.Config.MaxAckPending)
	c.cfg.MaxInFlightBytes = cmp.Or(cfg.MaxInFlightBytes, 16<<20)
	if c.cfg.MaxInFlightBytes < c.maxMsg+fetchOverhead {
		return nil, fmt.Errorf("streams: MaxInFlightBytes %d cannot hold one message of %d bytes", c.cfg.MaxInFlightBytes, c.maxMsg)
	}
	c.cfg.Concurrency = cmp.Or(cfg.Concurrency, min(c.cfg.MaxInFlight, 64))
	c.cfg.FetchWait = cmp.Or(cfg.FetchWait, 250*time.Millisecond)
	c.cfg.ProbeInterval = cmp.Or(cfg.ProbeInterval, time.Second)
	c.cfg.StopTimeout = cmp.Or(cfg.StopTimeout, 10*time.Second)
	if b := cfg.Brake; b.Above < 0 || b.Above >= 1 || b.Rate < 0 || (b.Announce && b.Above == 0) {
		return nil, fmt.Errorf("streams: Brake{Above: %v, Rate: %v, Announce: %v}: Above must be in [0, 1) (above 0 to announce) and Rate not negative", b.Above, b.Rate, b.Announce)
	}
	c.cfg.Brake.Rate = cmp.Or(cfg.Brake.Rate, 200)
	c.brake.cfg = c.cfg.Brake
	if c.pub, err = NewPublisher(PublisherConfig{JetStream: cfg.JetStream, Topology: cfg.Topology, TracerProvider: cfg.TracerProvider}); err != nil {
		return nil, err
	}
	c.slots = make([]slot, c.cfg.Concurrency)
	c.m, err = newStageMetrics(cfg.MeterProvider, c)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// fetchOverhead is the room a pull request's byte budget needs besides the
// message itself (subject and reply subject count too).
const fetchOverhead = 1024

// Stats returns the counters.
func (c *Consumer) Stats() Stats {
	return Stats{
		Acked: c.acked.Load(), Retried: c.retried.Load(), DeadLettered: c.deadLettered.Load(),
		Dropped: c.dropped.Load(), Held: c.held.Load(), Deferred: c.deferred.Load(),
		InFlight: c.inFlight.Load(), InFlightBytes: c.inFlightBytes.Load(),
		PeakInFlight: c.peak.Load(), PeakInFlightBytes: c.peakBytes.Load(),
		Braked: c.brake.braked(),
	}
}

// Ready returns nil while the consumer is fetching, and an error naming the
// dependency while it holds messages for an unavailable dependency.
func (c *Consumer) Ready() error {
	if c.held.Load() > 0 {
		if p := c.lastErr.Load(); p != nil {
			return fmt.Errorf("%s shard %d holding messages: dependency unavailable: %w", c.spec.Name, c.cfg.Shard, *p)
		}
		return fmt.Errorf("%s shard %d holding messages: dependency unavailable", c.spec.Name, c.cfg.Shard)
	}
	return nil
}

// Stream returns the stream name, Stage the consumer name.
func (c *Consumer) Stream() string { return c.stream }

// Stage returns the consumer (stage) name.
func (c *Consumer) Stage() string { return c.spec.Name }

// Run fetches and handles messages until ctx is done, then stops
// gracefully: it stops fetching, lets in-flight handlers finish within
// StopTimeout (then cancels them; what they did not finish stays unacked
// and is redelivered), and returns. It returns nil after a stop.
func (c *Consumer) Run(ctx context.Context) error {
	work := make(chan *Msg, c.cfg.MaxInFlight)
	hctx, hcancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer hcancel(ErrStopped)

	c.fwd = make(chan *forwarding, c.cfg.MaxInFlight)
	fwdDone := make(chan struct{})
	go c.forwarder(c.fwd, fwdDone)
	var wg sync.WaitGroup
	for i := range c.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				c.handle(hctx, &c.slots[i], m)
			}
		}()
	}
	keeperDone := make(chan struct{})
	go c.keepAlive(ctx, keeperDone)
	announcerDone := make(chan struct{})
	if c.cfg.Brake.Announce {
		go c.announceLoop(ctx, announcerDone)
	} else {
		close(announcerDone)
	}

	c.fetchLoop(ctx, work)
	close(work)

	done := make(chan struct{})
	go func() {
		wg.Wait()
		// Every handler is done: what they forwarded is acked or retried
		// before Run returns.
		close(c.fwd)
		<-fwdDone
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(c.cfg.StopTimeout):
		c.log.Warn("stop timeout: cancelling in-flight handlers", "in_flight", c.inFlight.Load())
		hcancel(ErrStopped)
		<-done
	}
	<-keeperDone
	<-announcerDone
	return nil
}

func (c *Consumer) fetchLoop(ctx context.Context, work chan<- *Msg) {
	errDelay := 50 * time.Millisecond
	for ctx.Err() == nil {
		if c.held.Load() > 0 {
			// A dependency is down: fetch nothing more, burn no attempts.
			c.waitFreed(ctx, c.cfg.ProbeInterval)
			continue
		}
		free := c.cfg.MaxInFlight - int(c.inFlight.Load())
		freeBytes := c.cfg.MaxInFlightBytes - int(c.inFlightBytes.Load())
		if free <= 0 || freeBytes < c.maxMsg+fetchOverhead {
			c.waitFreed(ctx, c.cfg.FetchWait)
			continue
		}
		if c.maxReq > 0 {
			freeBytes = min(freeBytes, c.maxReq)
		}
		free, wait := c.brake.pace(free)
		if wait > 0 {
			c.sleep(ctx, wait)
			continue
		}
		// The pull request ends on the server's own expiry, never on a
		// client-side deadline: a client that stops listening first drops
		// the messages the server sent just before it expired, and they come
		// back only after the ack wait, one attempt used up.
		batch, err := c.cons.Fetch(free, jetstream.FetchMaxBytes(freeBytes), jetstream.FetchMaxWait(c.cfg.FetchWait))
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("fetch failed", "err", err)
			c.sleep(ctx, errDelay)
			errDelay = min(errDelay*2, 2*time.Second)
			continue
		}
		for raw := range batch.Messages() {
			m := c.wrap(raw)
			n := c.inFlight.Add(1)
			b := c.inFlightBytes.Add(int64(m.size))
			storeMax(&c.peak, n)
			storeMax(&c.peakBytes, b)
			c.queuedMu.Lock()
			c.queued[m] = time.Now()
			c.queuedMu.Unlock()
			work <- m
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			if errors.Is(err, jetstream.ErrNoMessages) {
				continue
			}
			c.log.Warn("fetch ended with an error", "err", err)
			c.sleep(ctx, errDelay)
			errDelay = min(errDelay*2, 2*time.Second)
			continue
		}
		errDelay = 50 * time.Millisecond
	}
}

func storeMax(a *atomic.Int64, v int64) {
	for {
		cur := a.Load()
		if v <= cur || a.CompareAndSwap(cur, v) {
			return
		}
	}
}

func (c *Consumer) waitFreed(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-c.freed:
	case <-t.C:
	}
}

func (c *Consumer) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (c *Consumer) release(m *Msg) {
	c.inFlight.Add(-1)
	c.inFlightBytes.Add(-int64(m.size))
	select {
	case c.freed <- struct{}{}:
	default:
	}
}

func (c *Consumer) wrap(raw jetstream.Msg) *Msg {
	h := raw.Headers()
	m := &Msg{Data: raw.Data(), Header: h, raw: raw, Stream: c.stream}
	m.size = len(m.Data) + len(raw.Subject()) + fetchOverhead/4
	for k, vs := range h {
		for _, v := range vs {
			m.size += len(k) + len(v) + 4
		}
	}
	if md, err := raw.Metadata(); err == nil {
		m.Sequence = md.Sequence.Stream
		m.Delivered = int(md.NumDelivered)
		m.Published = md.Timestamp
	}
	m.ID = h.Get(HeaderMessageID)
	if m.ID == "" {
		m.ID = h.Get(jetstream.MsgIDHeader)
	}
	if g := h.Get(HeaderGeneration); g != "" {
		m.Generation, _ = strconv.ParseInt(g, 10, 64)
	}
	if d := h.Get(HeaderDeferrals); d != "" {
		m.Deferrals, _ = strconv.Atoi(d)
	}
	return m
}

// keepAlive sends in-progress for every message whose handler has run, or
// which has waited in the queue for a handler, for a third of the ack wait,
// so a slow handler, a held message or a message queued behind them is not
// redelivered behind its back.
func (c *Consumer) keepAlive(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	every := max(c.backoff[0]/3, 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	stopping := ctx.Done()
	for {
		select {
		case <-stopping:
			// Keep held and running messages alive through the stop too,
			// waking on the ticker only from now on (a done context is
			// always ready: selecting on it again would spin).
			stopping = nil
			if c.inFlight.Load() == 0 {
				return
			}
		case <-t.C:
		}
		now := time.Now()
		c.queuedMu.Lock()
		for m, since := range c.queued {
			if now.Sub(since) >= every {
				_ = m.raw.InProgress()
			}
		}
		c.queuedMu.Unlock()
		for i := range c.slots {
			s := &c.slots[i]
			s.mu.Lock()
			if s.msg != nil && now.Sub(s.since) >= every {
				_ = s.msg.InProgress()
			}
			s.mu.Unlock()
		}
		if ctx.Err() != nil && c.inFlight.Load() == 0 {
			return
		}
	}
}

func (c *Consumer) handle(ctx context.Context, s *slot, m *Msg) {
	handedOff := false // to the forwarder, which releases m
	defer func() {
		if !handedOff {
			c.release(m)
		}
	}()
	s.mu.Lock()
	s.msg, s.since = m.raw, time.Now()
	s.mu.Unlock()
	c.queuedMu.Lock()
	delete(c.queued, m)
	c.queuedMu.Unlock()
	defer func() {
		s.mu.Lock()
		s.msg = nil
		s.mu.Unlock()
	}()
	if m.Header.Get(HeaderWake) != "" {
		// A wake-up after a purge (PurgeAccount): it did its job by being
		// delivered.
		_ = m.raw.Ack()
		return
	}

	ctx = ExtractTrace(ctx, m.Header)
	var links []trace.Link
	if lt := m.Header.Get(HeaderLinkTraceparent); lt != "" {
		lctx := ExtractTrace(context.Background(), nats.Header{"traceparent": []string{lt}})
		if sc := trace.SpanContextFromContext(lctx); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{attribute.String("shardflow.link", "replay_of")}})
		}
	}
	ctx, span := c.tracer.Start(ctx, "process "+c.stream, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithLinks(links...))
	defer span.End()
	if span.IsRecording() {
		// Built only for a span that is kept: a dozen attributes a message
		// are a visible share of the runtime's cost when nothing records.
		span.SetAttributes(
			attrSystemNATS,
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingOperationName("process"),
			semconv.MessagingConsumerGroupName(c.spec.Name),
			semconv.MessagingDestinationSubscriptionName(c.spec.Name),
			semconv.MessagingDestinationName(m.raw.Subject()),
			semconv.MessagingMessageID(m.ID),
			attribute.String("messaging.nats.stream", c.stream),
			attribute.Int64("messaging.nats.stream_sequence", int64(m.Sequence)),
			attribute.Int("messaging.nats.delivery_count", m.Delivered),
			attribute.Int("shardflow.shard", c.cfg.Shard),
			attribute.String("shardflow.stage", c.spec.Name),
		)
	}
	if m.Delivered > 1 {
		c.m.redelivered.Add(ctx, 1, c.m.attrs)
	}

	start := time.Now()
	out := c.decide(ctx, m)
	for out.Kind == OutcomeUnavailable {
		out = c.hold(ctx, m, out)
	}
	c.m.duration.Record(ctx, time.Since(start).Seconds(), c.m.attrs)
	span.SetAttributes(attribute.String("shardflow.outcome", out.Kind.String()))
	if out.Err != nil {
		span.RecordError(out.Err)
		span.SetStatus(codes.Error, out.String())
	}
	if m.Subject.Account != "" { // parsed by decide
		span.SetAttributes(attribute.String("shardflow.account", m.Subject.Account))
	}
	if out.Kind == OutcomeForward {
		f, failed := c.startForward(ctx, m, out.Forward)
		if f != nil {
			// keepAlive covers it while its publish acks are awaited.
			c.queuedMu.Lock()
			c.queued[m] = time.Now()
			c.queuedMu.Unlock()
			handedOff = true
			c.fwd <- f
			return
		}
		out = failed
	}
	c.apply(ctx, m, out)
}

// decide runs the account gate and the handler.
func (c *Consumer) decide(ctx context.Context, m *Msg) Outcome {
	sub, err := ParseSubject(m.raw.Subject())
	if err != nil {
		return DeadLetter(ClassUndecodable, err)
	}
	m.Subject = sub
	if c.cfg.Gate != nil {
		status, gen, ok := c.cfg.Gate.AccountState(sub.Account)
		switch {
		case !ok:
			return Retry(fmt.Errorf("%w: %s not (yet) in the account directory", ErrUnknownAccount, sub.Account))
		case status == StatusDeleted || status == StatusDeleting || (m.Generation > 0 && m.Generation < gen):
			return Drop(ReasonAccountDeleted)
		case status == StatusSuspended:
			if err := c.park(ctx, m); err != nil {
				return Retry(fmt.Errorf("park message of suspended account: %w", err))
			}
			return Drop(ReasonAccountSuspended)
		}
	}
	return c.call(ctx, m)
}

func (c *Consumer) call(ctx context.Context, m *Msg) (out Outcome) {
	defer func() {
		if r := recover(); r != nil {
			c.log.ErrorContext(ctx, "handler panicked", "subject", m.raw.Subject(), "panic", r, "stack", string(debug.Stack()))
			out = Outcome{Kind: OutcomeRetry, Class: ClassPanic, Err: fmt.Errorf("handler panic: %v", r)}
		}
	}()
	out = c.cfg.Handler(ctx, m)
	if out.Kind == 0 {
		out = Retry(errors.New("handler returned a zero Outcome"))
	}
	return out
}

// hold keeps m (in progress, via keepAlive) while its dependency is down,
// and calls the handler again every probe interval.
func (c *Consumer) hold(ctx context.Context, m *Msg, out Outcome) Outcome {
	err := out.Err
	if err == nil {
		err = errors.New("dependency unavailable")
	}
	c.lastErr.Store(&err)
	if c.held.Add(1) == 1 {
		c.log.WarnContext(ctx, "dependency unavailable: holding messages, fetching paused", "err", err)
	}
	defer func() {
		if c.held.Add(-1) == 0 {
			c.log.InfoContext(ctx, "dependency back: fetching resumed")
		}
	}()
	t := time.NewTimer(c.cfg.ProbeInterval)
	defer t.Stop()
	select {
	case <-ctx.Done():
		// Stopping: leave the message unacked; it is redelivered later.
		return Outcome{Kind: OutcomeRetry, Class: ClassTransient, Err: context.Cause(ctx)}
	case <-t.C:
	}
	return c.call(ctx, m)
}

func (c *Consumer) apply(ctx context.Context, m *Msg, out Outcome) {
	switch out.Kind {
	case OutcomeAck:
		c.forget(m)
		if err := m.raw.Ack(); err != nil {
			c.log.WarnContext(ctx, "ack failed; the message will be redelivered", "seq", m.Sequence, "err", err)
			return
		}
		c.acked.Add(1)
		c.m.acked.Add(ctx, 1, c.m.attrs)
		c.noteOutcome(ctx, m, false)
	case OutcomeRetry:
		c.noteFailure(m)
		if m.Delivered >= c.maxDeliver {
			c.deadLetter(ctx, m, out.Class, out.Err)
			c.noteOutcome(ctx, m, true)
			return
		}
		if errors.Is(out.Err, ErrStopped) || errors.Is(out.Err, context.Canceled) {
			// Stopped mid-handling: leave it for redelivery after the ack wait.
			return
		}
		c.log.DebugContext(ctx, "retrying", "seq", m.Sequence, "delivered", m.Delivered, "err", out.Err)
		if err := m.raw.NakWithDelay(nakDelay(c.backoff, m.Delivered, out.Delay)); err != nil {
			c.log.WarnContext(ctx, "nak failed", "seq", m.Sequence, "err", err)
		}
		c.retried.Add(1)
		c.m.retried.Add(ctx, 1, c.m.attrs)
	case OutcomeDeadLetter:
		c.noteFailure(m)
		c.deadLetter(ctx, m, out.Class, out.Err)
		c.noteOutcome(ctx, m, true)
	case OutcomeDefer:
		if err := c.deferMsg(ctx, m, out.Delay); err != nil {
			c.log.WarnContext(ctx, "defer failed; retrying instead", "seq", m.Sequence, "err", err)
			_ = m.raw.NakWithDelay(nakDelay(c.backoff, m.Delivered, out.Delay))
			return
		}
		if err := m.raw.TermWithReason("deferred: " + out.Reason); err != nil {
			c.log.WarnContext(ctx, "term after defer failed; the copy is idempotent", "seq", m.Sequence, "err", err)
		}
		c.deferred.Add(1)
		c.m.deferred.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(append(c.m.base, attribute.String("reason", out.Reason))...)))
	case OutcomeDrop:
		c.forget(m)
		if err := m.raw.TermWithReason(out.Reason); err != nil {
			c.log.WarnContext(ctx, "term failed", "seq", m.Sequence, "err", err)
			return
		}
		c.dropped.Add(1)
		c.m.dropped.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(append(c.m.base, attribute.String("reason", out.Reason))...)))
	}
}

func (c *Consumer) noteFailure(m *Msg) {
	c.firstFailMu.Lock()
	if _, ok := c.firstFail[m.Sequence]; !ok {
		if len(c.firstFail) > 100_000 {
			clear(c.firstFail)
		}
		c.firstFail[m.Sequence] = time.Now()
	}
	c.firstFailMu.Unlock()
}

func (c *Consumer) forget(m *Msg) {
	if m.Delivered <= 1 {
		return
	}
	c.firstFailMu.Lock()
	delete(c.firstFail, m.Sequence)
	c.firstFailMu.Unlock()
}

// deadLetter publishes the envelope, then terminates the original. If the
// envelope cannot be stored the original is nak'ed (it is not lost).
func (c *Consumer) deadLetter(ctx context.Context, m *Msg, class string, cause error) {
	c.firstFailMu.Lock()
	first, ok := c.firstFail[m.Sequence]
	delete(c.firstFail, m.Sequence)
	c.firstFailMu.Unlock()
	if !ok {
		first = time.Now()
	}
	env := Envelope(m.raw.Subject(), m.Header, m.Data, c.stream, m.Sequence, c.spec.Name, class, cause, m.Delivered, first, time.Now())
	if err := PublishDeadLetter(ctx, c.cfg.JetStream, env); err != nil {
		c.log.ErrorContext(ctx, "dead-letter publish failed; will retry the message", "seq", m.Sequence, "err", err)
		_ = m.raw.NakWithDelay(c.backoff[0])
		return
	}
	c.log.WarnContext(ctx, "dead-lettered", "seq", m.Sequence, "account", env.Account, "class", class, "attempts", m.Delivered, "err", env.Error)
	if err := m.raw.TermWithReason("dead-lettered: " + class); err != nil {
		c.log.WarnContext(ctx, "term after dead-letter failed; the dead letter is idempotent", "seq", m.Sequence, "err", err)
	}
	c.deadLettered.Add(1)
	c.m.deadLettered.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(append(c.m.base, attribute.String("reason", class))...)))
}

// deferMsg stores a message schedule that puts a copy of m back on its
// subject after d. Its id (defer:<stream>:<seq>) makes a repeat harmless.
func (c *Consumer) deferMsg(ctx context.Context, m *Msg, d time.Duration) error {
	h := CopyHeaders(m.Header)
	at := time.Now().Add(max(d, time.Second)).UTC()
	h.Set("Nats-Schedule", "@at "+at.Format(time.RFC3339Nano))
	h.Set("Nats-Schedule-Target", m.raw.Subject())
	h.Set(HeaderDeferrals, strconv.Itoa(m.Deferrals+1))
	h.Set(jetstream.MsgIDHeader, "defer:"+c.stream+":"+strconv.FormatUint(m.Sequence, 10))
	subj := string(m.Subject.Kind) + "." + strconv.Itoa(m.Subject.Shard) + "." + m.Subject.Account + "." + deferredToken + "." + strconv.FormatUint(m.Sequence, 10)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := c.cfg.JetStream.PublishMsg(pctx, &nats.Msg{Subject: subj, Header: h, Data: m.Data})
	return err
}

// park stores a copy of a suspended account's message under its held
// subject, idempotently (Nats-Msg-Id held:<stream>:<seq>).
func (c *Consumer) park(ctx context.Context, m *Msg) error {
	h := CopyHeaders(m.Header)
	h.Set(HeaderOriginalSubject, m.raw.Subject())
	h.Set(jetstream.MsgIDHeader, "held:"+c.stream+":"+strconv.FormatUint(m.Sequence, 10))
	held := m.Subject
	held.Held = true
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := c.cfg.JetStream.PublishMsg(pctx, &nats.Msg{Subject: held.String(), Header: h, Data: m.Data})
	if err == nil {
		c.m.parked.Add(ctx, 1, c.m.attrs)
	}
	return err
}

// Envelope builds the dead-letter envelope of a message.
func Envelope(subject string, h nats.Header, data []byte, stream string, seq uint64, stage, class string, cause error, attempts int, first, last time.Time) schemas.DeadLetter {
	account, shard := "unknown", -1
	if s, err := ParseSubject(subject); err == nil {
		account, shard = s.Account, s.Shard
	} else if s, err := parseShard(stream); err == nil {
		shard = s
	}
	errText := ""
	if cause != nil {
		errText = cause.Error()
	}
	headers := make(map[string][]string, len(h))
	for k, v := range h {
		headers[k] = v
	}
	return schemas.DeadLetter{
		ID:              stream + ":" + strconv.FormatUint(seq, 10),
		OriginalSubject: subject,
		Headers:         headers,
		Payload:         data,
		Account:         account,
		Shard:           max(shard, 0),
		Stage:           stage,
		ErrorClass:      class,
		Error:           errText,
		Attempts:        max(attempts, 1),
		FirstFailure:    first.UTC(),
		LastFailure:     last.UTC(),
		OriginStream:    stream,
		OriginSeq:       seq,
		TraceID:         TraceID(h),
		DeadLetteredAt:  time.Now().UTC(),
	}
}

func parseShard(stream string) (int, error) {
	for i := len(stream) - 1; i >= 0; i-- {
		if stream[i] == '_' {
			return strconv.Atoi(stream[i+1:])
		}
	}
	return 0, fmt.Errorf("no shard in stream name %q", stream)
}

// PublishDeadLetter stores env in its shard's dead-letter stream under
// deadletter.<shard>.<account>.<stage>, with Nats-Msg-Id = env.ID, so
// writing the same dead letter twice is harmless.
func PublishDeadLetter(ctx context.Context, js jetstream.JetStream, env schemas.DeadLetter) error {
	data, err := json.Marshal(env)
	if err != nil {
		return fmt.Errorf("streams: encode dead letter %s: %w", env.ID, err)
	}
	account := env.Account
	if ValidateAccountID(account) != nil {
		account = "unknown"
	}
	subj := Subject{Kind: KindDeadLetter, Shard: env.Shard, Account: account, Type: env.Stage}
	h := nats.Header{}
	h.Set(jetstream.MsgIDHeader, env.ID)
	if tp := env.Headers["traceparent"]; len(tp) > 0 {
		h.Set("traceparent", tp[0])
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(pctx, &nats.Msg{Subject: subj.String(), Header: h, Data: data}); err != nil {
		return fmt.Errorf("streams: publish dead letter %s: %w", env.ID, err)
	}
	return nil
}
