package streams

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// NoGate is an AccountGate that admits every account's messages. Set it as
// StageConfig.Gate to run a stage on inbound or outbound work without the
// account directory (the default there is the Directory).
var NoGate AccountGate = noGate{}

type noGate struct{}

func (noGate) AccountState(string) (AccountStatus, int64, bool) { return StatusActive, 0, true }

// StageConfig configures a Stage: one consumer of the topology, run on a set
// of shards, one Consumer per shard. Only Conn (or JetStream), Stage and
// Handler are required.
type StageConfig struct {
	// Conn is the NATS connection. Required unless JetStream is set.
	Conn *nats.Conn
	// JetStream is the client to use. Default: jetstream.New(Conn).
	JetStream jetstream.JetStream
	// Topology is the declared topology; it must declare the consumer named
	// Stage (see ConsumerSpec and, for a team's own consumer, the package
	// documentation). Default DefaultTopology().
	Topology Topology
	// Stage is the consumer's name in Topology.Consumers. Required.
	Stage string
	// Shards are the shards this instance consumes. Default: every shard of
	// the topology. Run one instance per shard subset to scale out, or
	// several instances on the same shards: JetStream shares a durable pull
	// consumer's messages between them.
	Shards []int
	// Handler is called for every message. Required.
	Handler Handler
	// Gate is asked for the account's state before the handler runs (see
	// ConsumerConfig.Gate). Default: for inbound and outbound stages, the
	// account Directory, opened by NewStage and closed when Run returns, so
	// messages of deleted accounts are dropped and those of suspended ones
	// parked; for account-event and dead-letter stages, none, since their
	// messages concern closed accounts too (a "deleted" lifecycle event must
	// reach its consumers). NoGate turns the default gate off.
	Gate AccountGate
	// Concurrency is the number of handler goroutines per shard. Default
	// min(MaxInFlight, 64). Concurrency 1 handles a shard's messages one at
	// a time, in stream order (a retried message still comes back after the
	// ones behind it).
	Concurrency int
	// MaxInFlight bounds the messages held per shard. Default and maximum:
	// the consumer's MaxAckPending.
	MaxInFlight int
	// MaxInFlightBytes bounds the bytes held per shard. Default 16 MiB.
	MaxInFlightBytes int
	// StopTimeout bounds a graceful stop: in-flight handlers get this long
	// to finish once Run's context ends, then their context is cancelled
	// (cause ErrStopped) and what they did not finish is left unacked, to be
	// redelivered. Default 10s.
	StopTimeout time.Duration
	// ProbeInterval is how often a message held for an Unavailable
	// dependency is retried. Default 1s.
	ProbeInterval time.Duration
	// Logger receives one line per failure. Default slog.Default().
	Logger *slog.Logger
	// TracerProvider and MeterProvider default to the otel globals.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
}

// Stage runs one consumer of the topology over a set of shards. Create it
// with NewStage, run it with Run, and serve Ready from a health endpoint.
// RunStage does all of it in one call.
type Stage struct {
	cfg       StageConfig
	spec      ConsumerSpec
	nc        *nats.Conn
	consumers []*Consumer
	dir       *Directory // opened by NewStage (default gate), closed by Run or Close
	running   atomic.Bool
	ran       atomic.Bool
	closeOnce sync.Once
}

// NewStage checks cfg, verifies that the server's and the streams' size
// limits can carry the topology's (refusing a mismatch, as a service must:
// ErrLimitMismatch), opens the default gate and binds one Consumer per
// shard. The consumer must have been provisioned (Provision, or
// ProvisionConsumer for a team's own consumer).
func NewStage(ctx context.Context, cfg StageConfig) (*Stage, error) {
	if cfg.Handler == nil || cfg.Stage == "" {
		return nil, errors.New("streams: StageConfig needs Stage and Handler")
	}
	js := cfg.JetStream
	if js == nil {
		if cfg.Conn == nil {
			return nil, errors.New("streams: StageConfig needs Conn (or JetStream)")
		}
		var err error
		if js, err = jetstream.New(cfg.Conn); err != nil {
			return nil, fmt.Errorf("streams: stage %s: %w", cfg.Stage, err)
		}
	}
	if cfg.Topology.Shards == 0 {
		cfg.Topology = DefaultTopology()
	}
	if err := cfg.Topology.Validate(); err != nil {
		return nil, err
	}
	spec, ok := cfg.Topology.Consumer(cfg.Stage)
	if !ok {
		return nil, fmt.Errorf("streams: stage %q is not declared in the topology (add a ConsumerSpec to Topology.Consumers)", cfg.Stage)
	}
	shards := slices.Clone(cfg.Shards)
	if len(shards) == 0 {
		for i := range cfg.Topology.Shards {
			shards = append(shards, i)
		}
	}
	seen := map[int]bool{}
	for _, n := range shards {
		if n < 0 || n >= cfg.Topology.Shards {
			return nil, fmt.Errorf("streams: stage %s: shard %d out of range 0..%d", cfg.Stage, n, cfg.Topology.Shards-1)
		}
		if seen[n] {
			return nil, fmt.Errorf("streams: stage %s: shard %d listed twice", cfg.Stage, n)
		}
		seen[n] = true
	}
	if err := CheckLimits(ctx, js, cfg.Topology, spec.Kind, KindDeadLetter); err != nil {
		return nil, fmt.Errorf("streams: stage %s refuses to start: %w", cfg.Stage, err)
	}
	cfg.JetStream, cfg.Shards = js, shards
	s := &Stage{cfg: cfg, spec: spec, nc: js.Conn()}
	gate := cfg.Gate
	switch {
	case gate == NoGate:
		gate = nil
	case gate == nil && (spec.Kind == KindInbound || spec.Kind == KindOutbound):
		dir, err := OpenDirectory(ctx, js, cfg.Logger)
		if err != nil {
			return nil, fmt.Errorf("streams: stage %s: account gate: %w", cfg.Stage, err)
		}
		s.dir, gate = dir, dir
	}
	for _, shard := range shards {
		c, err := NewConsumer(ctx, ConsumerConfig{
			JetStream: js, Topology: cfg.Topology, Stage: cfg.Stage, Shard: shard, Handler: cfg.Handler, Gate: gate,
			MaxInFlight: cfg.MaxInFlight, MaxInFlightBytes: cfg.MaxInFlightBytes, Concurrency: cfg.Concurrency,
			StopTimeout: cfg.StopTimeout, ProbeInterval: cfg.ProbeInterval,
			Logger: cfg.Logger, TracerProvider: cfg.TracerProvider, MeterProvider: cfg.MeterProvider,
		})
		if err != nil {
			s.Close()
			return nil, err
		}
		s.consumers = append(s.consumers, c)
	}
	return s, nil
}

// RunStage is NewStage followed by Run: it runs the stage until ctx ends,
// stops it gracefully and returns nil, or returns the error that kept it
// from starting.
func RunStage(ctx context.Context, cfg StageConfig) error {
	s, err := NewStage(ctx, cfg)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// Run consumes every shard of the stage until ctx ends, then stops
// gracefully (see Consumer.Run: fetching stops, in-flight handlers get
// StopTimeout to finish, the rest is left for redelivery) and returns nil.
// It closes the gate NewStage opened. Run may be called once.
func (s *Stage) Run(ctx context.Context) error {
	if !s.ran.CompareAndSwap(false, true) {
		return fmt.Errorf("streams: stage %s: Run called twice", s.spec.Name)
	}
	defer s.Close()
	s.running.Store(true)
	defer s.running.Store(false)
	var wg sync.WaitGroup
	errs := make([]error, len(s.consumers))
	for i, c := range s.consumers {
		wg.Go(func() { errs[i] = c.Run(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close releases what NewStage opened (the default gate's directory watch)
// for a Stage that will not Run. Run calls it when it returns.
func (s *Stage) Close() {
	s.closeOnce.Do(func() {
		if s.dir != nil {
			s.dir.Close()
		}
	})
}

// Ready returns nil while the stage is running, connected, and fetching on
// every shard; otherwise an error saying why (not running, NATS
// disconnected, or a shard holding its messages because its handler reports
// a dependency Unavailable). Serve it as the readiness check.
func (s *Stage) Ready() error {
	if !s.running.Load() {
		return fmt.Errorf("stage %s: not running", s.spec.Name)
	}
	if !s.nc.IsConnected() {
		return fmt.Errorf("stage %s: nats %s", s.spec.Name, s.nc.Status())
	}
	var errs []error
	for _, c := range s.consumers {
		if err := c.Ready(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Name returns the stage (consumer) name; Kind the kind of stream it reads;
// Shards the shards it consumes.
func (s *Stage) Name() string { return s.spec.Name }

// Kind returns the kind of stream the stage reads.
func (s *Stage) Kind() Kind { return s.spec.Kind }

// Shards returns the shards the stage consumes.
func (s *Stage) Shards() []int { return slices.Clone(s.cfg.Shards) }

// Stats returns the counters of every shard's consumer, summed (peaks are
// the largest of any shard).
func (s *Stage) Stats() Stats {
	var t Stats
	for _, c := range s.consumers {
		st := c.Stats()
		t.Acked += st.Acked
		t.Retried += st.Retried
		t.DeadLettered += st.DeadLettered
		t.Dropped += st.Dropped
		t.Held += st.Held
		t.Deferred += st.Deferred
		t.InFlight += st.InFlight
		t.InFlightBytes += st.InFlightBytes
		t.PeakInFlight = max(t.PeakInFlight, st.PeakInFlight)
		t.PeakInFlightBytes = max(t.PeakInFlightBytes, st.PeakInFlightBytes)
	}
	return t
}

// Consumers returns the per-shard consumers, in the order of Shards.
func (s *Stage) Consumers() []*Consumer { return slices.Clone(s.consumers) }
