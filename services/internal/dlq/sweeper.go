package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow/streams"
)

// MetricSwept counts messages the Sweeper dead-lettered (Prometheus:
// shardflow_deadletter_swept_total), labelled path (advisory or sweep),
// shard and stage.
const MetricSwept = "shardflow_deadletter_swept"

// Sweep paths (the path label of MetricSwept).
const (
	PathAdvisory = "advisory"
	PathSweep    = "sweep"
)

// DefaultSweepInterval is how often the Sweeper looks for messages left
// behind when no advisory reached it.
const DefaultSweepInterval = 30 * time.Second

// instrumentationName names the package's meter and tracer.
const instrumentationName = "github.com/shardflow/shardflow/services/internal/dlq"

// SweeperConfig configures a Sweeper.
type SweeperConfig struct {
	// NATS receives the max-deliveries advisories. Required.
	NATS *nats.Conn
	// JetStream reads, dead-letters and deletes the messages. Required.
	JetStream jetstream.JetStream
	// Topology names the stage streams and consumers (the consumers on
	// inbound and outbound streams: processor and sender). Default
	// streams.DefaultTopology().
	Topology streams.Topology
	// Shards are the shards to watch. Default: every shard of the topology.
	Shards []int
	// Interval is the period of the sweep. Default DefaultSweepInterval.
	Interval time.Duration
	// Logger receives one line per message dead-lettered and per failure.
	// Default slog.Default().
	Logger *slog.Logger
	// MeterProvider records MetricSwept. Default: the global one.
	MeterProvider metric.MeterProvider
}

// stageTarget is one stage consumer on one shard's stage stream.
type stageTarget struct {
	stream   string
	consumer string
	filter   string
	shard    int
}

// Sweeper dead-letters messages that reached MaxDeliver without any handler
// outcome (a consumer that crashes or hangs on a message every time).
// JetStream keeps such a message in its work-queue stream for ever; its only
// trace is a core-NATS max-deliveries advisory carrying the stream and
// sequence. The Sweeper acts on those advisories as they come and, because an
// advisory sent while it is down is lost, also sweeps periodically: a message
// still stored at or below its stage consumer's ack floor was max-delivered
// and left behind. Each is dead-lettered with streams.DeadLetterBySequence
// (class max_deliver): idempotent, since the dead letter's id is
// <stream>:<seq>.
type Sweeper struct {
	cfg     SweeperConfig
	log     *slog.Logger
	targets map[string]stageTarget // by stream name
	swept   metric.Int64Counter
	sub     atomic.Pointer[nats.Subscription] // the advisory subscription while Run runs
}

// NewSweeper returns a Sweeper; Run starts it.
func NewSweeper(cfg SweeperConfig) (*Sweeper, error) {
	if cfg.NATS == nil || cfg.JetStream == nil {
		return nil, errors.New("dlq: SweeperConfig.NATS and JetStream are required")
	}
	if cfg.Topology.Shards == 0 {
		cfg.Topology = streams.DefaultTopology()
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultSweepInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = otel.GetMeterProvider()
	}
	if len(cfg.Shards) == 0 {
		for shard := range cfg.Topology.Shards {
			cfg.Shards = append(cfg.Shards, shard)
		}
	}
	s := &Sweeper{cfg: cfg, log: cfg.Logger, targets: map[string]stageTarget{}}
	for _, shard := range cfg.Shards {
		if shard < 0 || shard >= cfg.Topology.Shards {
			return nil, fmt.Errorf("dlq: sweeper: shard %d not in 0..%d", shard, cfg.Topology.Shards-1)
		}
		for _, c := range cfg.Topology.Consumers {
			if c.Kind != streams.KindInbound && c.Kind != streams.KindOutbound {
				continue
			}
			name := streams.StreamName(c.Kind, shard)
			s.targets[name] = stageTarget{stream: name, consumer: c.Name, filter: streams.StageFilter(c.Kind, shard), shard: shard}
		}
	}
	var err error
	s.swept, err = cfg.MeterProvider.Meter(instrumentationName).Int64Counter(MetricSwept,
		metric.WithDescription("Messages dead-lettered after reaching MaxDeliver without a handler outcome, by path (advisory, sweep)."))
	if err != nil {
		return nil, fmt.Errorf("dlq: sweeper: %w", err)
	}
	return s, nil
}

// Ready returns nil while the advisory subscription is active (a readiness
// check): Run is running and the connection is up.
func (s *Sweeper) Ready() error {
	sub := s.sub.Load()
	if sub == nil || !sub.IsValid() {
		return errors.New("max-deliveries advisory subscription not active")
	}
	if !s.cfg.NATS.IsConnected() {
		return fmt.Errorf("max-deliveries advisory subscription: nats %s", s.cfg.NATS.Status())
	}
	return nil
}

// Run listens to the max-deliveries advisories and sweeps at start and every
// Interval, until ctx ends. It returns nil after a stop.
func (s *Sweeper) Run(ctx context.Context) error {
	// The buffer absorbs bursts; when it overflows the client drops
	// advisories (slow consumer) and the next sweep catches those messages.
	advisories := make(chan *nats.Msg, 4096)
	// A queue group per shard set: instances watching the same shards share
	// the work; an instance with other shards still sees every advisory.
	queue := "shardflow-deadletter-sweeper-" + shardKey(s.cfg.Shards)
	sub, err := s.cfg.NATS.ChanQueueSubscribe(streams.MaxDeliverAdvisorySubject, queue, advisories)
	if err != nil {
		return fmt.Errorf("dlq: sweeper: subscribe to advisories: %w", err)
	}
	defer func() {
		s.sub.Store(nil)
		_ = sub.Unsubscribe()
	}()
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = s.cfg.NATS.FlushWithContext(fctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("dlq: sweeper: subscribe to advisories: %w", err)
	}
	s.sub.Store(sub)
	s.log.InfoContext(ctx, "sweeper started", "shards", s.cfg.Shards, "interval", s.cfg.Interval)

	if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
		s.log.WarnContext(ctx, "sweep failed; retrying at the next interval", "err", err)
	}
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-advisories:
			s.handleAdvisory(ctx, m)
		case <-tick.C:
			if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
				s.log.WarnContext(ctx, "sweep failed; retrying at the next interval", "err", err)
			}
		}
	}
}

func shardKey(shards []int) string {
	ss := slices.Clone(shards)
	slices.Sort(ss)
	parts := make([]string, len(ss))
	for i, n := range ss {
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, "_")
}

func (s *Sweeper) handleAdvisory(ctx context.Context, m *nats.Msg) {
	var adv streams.MaxDeliverAdvisory
	if err := json.Unmarshal(m.Data, &adv); err != nil {
		s.log.WarnContext(ctx, "undecodable max-deliveries advisory", "subject", m.Subject, "err", err)
		return
	}
	t, ok := s.targets[adv.Stream]
	if !ok || adv.Consumer != t.consumer {
		// Not a stage stream of ours (another shard, or a history stream
		// such as DEADLETTER_n, whose messages stay browsable anyway).
		s.log.DebugContext(ctx, "max-deliveries advisory ignored", "stream", adv.Stream, "consumer", adv.Consumer, "seq", adv.StreamSeq)
		return
	}
	if _, err := s.deadLetter(ctx, t, adv, PathAdvisory); err != nil && ctx.Err() == nil {
		s.log.WarnContext(ctx, "dead-lettering a max-delivered message failed; the next sweep retries",
			"stream", adv.Stream, "seq", adv.StreamSeq, "err", err)
	}
}

func (s *Sweeper) deadLetter(ctx context.Context, t stageTarget, adv streams.MaxDeliverAdvisory, path string) (bool, error) {
	reason := fmt.Errorf("no handler outcome after %d deliveries (crash or hang)", adv.Deliveries)
	found, err := streams.DeadLetterBySequence(ctx, s.cfg.JetStream, adv, streams.ClassMaxDeliver, reason)
	if err != nil {
		return found, err
	}
	if found {
		s.swept.Add(ctx, 1, metric.WithAttributes(
			attribute.String("path", path),
			attribute.Int("shard", t.shard),
			attribute.String("stage", t.consumer)))
		s.log.WarnContext(ctx, "max-delivered message dead-lettered",
			"path", path, "stream", adv.Stream, "seq", adv.StreamSeq, "stage", adv.Consumer, "deliveries", adv.Deliveries)
	}
	return found, nil
}

// Sweep looks once through every watched stage stream for messages left
// behind after MaxDeliver and dead-letters them; it returns how many it
// dead-lettered. For each stage consumer it reads the ack floor: every
// message of the stage's filter still stored at or below it was neither
// acked nor terminated, yet the consumer moved past it, so it was
// max-delivered. (The server moves the ack floor past such a message once
// a later message is acknowledged; the advisory path covers the moment
// before.)
func (s *Sweeper) Sweep(ctx context.Context) (int, error) {
	names := make([]string, 0, len(s.targets))
	for name := range s.targets {
		names = append(names, name)
	}
	slices.Sort(names)
	total := 0
	var errs []error
	for _, name := range names {
		if ctx.Err() != nil {
			return total, ctx.Err()
		}
		n, err := s.sweepStream(ctx, s.targets[name])
		total += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

func (s *Sweeper) sweepStream(ctx context.Context, t stageTarget) (int, error) {
	cons, err := s.cfg.JetStream.Consumer(ctx, t.stream, t.consumer)
	if err != nil {
		return 0, fmt.Errorf("dlq: sweep %s/%s: %w", t.stream, t.consumer, err)
	}
	ci := cons.CachedInfo()
	floor := ci.AckFloor.Stream
	if floor == 0 {
		return 0, nil
	}
	stream, err := s.cfg.JetStream.Stream(ctx, t.stream)
	if err != nil {
		return 0, fmt.Errorf("dlq: sweep %s: %w", t.stream, err)
	}
	first := stream.CachedInfo().State.FirstSeq
	n := 0
	for seq := max(first, 1); seq <= floor; {
		raw, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(t.filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) || isNoMessage(err) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("dlq: sweep %s from %d: %w", t.stream, seq, err)
		}
		if raw.Sequence > floor {
			break
		}
		adv := streams.MaxDeliverAdvisory{Stream: t.stream, Consumer: t.consumer, StreamSeq: raw.Sequence, Deliveries: ci.Config.MaxDeliver}
		found, err := s.deadLetter(ctx, t, adv, PathSweep)
		if err != nil {
			return n, err
		}
		if found {
			n++
		}
		seq = raw.Sequence + 1
	}
	return n, nil
}

// isNoMessage reports a "no message at or after that sequence" answer.
func isNoMessage(err error) bool {
	var apiErr *jetstream.APIError
	return err != nil && (errors.Is(err, jetstream.ErrMsgNotFound) ||
		(errors.As(err, &apiErr) && (apiErr.ErrorCode == 10037 || apiErr.ErrorCode == 10057)))
}
