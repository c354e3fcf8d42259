package streams

import (
	"cmp"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stage names of the built-in consumers.
const (
	StageProcessor  = "processor"
	StageSender     = "sender"
	StageIndexer    = "indexer"
	StageAccounts   = "accounts"
	headerAllowance = 4 << 10 // room for headers (ids, trace context, generation)
)

// Topology declares every stream and consumer of the pipeline. It is the one
// place where sizes, retention and delivery policy are decided; provisioning,
// the start-up limit check, the publisher and the consumer runtime all read
// it. The zero value is not usable: start from DefaultTopology.
type Topology struct {
	// Shards is the number of shards. Default 4.
	Shards int
	// Replicas is the replication factor of every stream: 1 for a single
	// server, 3 in production. Default 1.
	Replicas int
	// Storage is the stream storage. Default jetstream.FileStorage.
	Storage jetstream.StorageType
	// MaxEventBytes is THE size limit (failure F2 of the design): the largest
	// event payload a client may send. Every other size is derived from it:
	// a stage stream accepts MaxEventBytes plus header room, an outbound
	// message a little more, a dead letter twice that (base64) — see
	// MaxMsgSize. Default 32 KiB (Segment's per-event limit).
	MaxEventBytes int
	// DuplicateWindow is the stage streams' Nats-Msg-Id window. Default 2m.
	DuplicateWindow time.Duration
	// DeadLetterMaxAge is how long dead letters are kept. Default 14 days.
	DeadLetterMaxAge time.Duration
	// AccountEventsMaxAge is how long lifecycle events are kept. Default 30 days.
	AccountEventsMaxAge time.Duration
	// PlacementTags, when set, returns the placement tags of a shard's
	// streams, so shards can be spread over servers. Default: none.
	PlacementTags func(shard int) []string
	// Consumers are the stage consumers, one per shard each.
	// Default: DefaultConsumers().
	Consumers []ConsumerSpec
}

// ConsumerSpec declares one durable pull consumer, created on every shard's
// stream of its Kind.
type ConsumerSpec struct {
	// Name is the durable name, also the stage name in dead letters.
	Name string
	// Kind is the stream it reads.
	Kind Kind
	// MaxDeliver bounds deliveries of a message; never unlimited. Default 5.
	MaxDeliver int
	// BackOff is the redelivery schedule, used both by the server (for a
	// handler that never answers) and by the runtime (for Retry outcomes).
	// Its first entry is the ack wait. Default 1s, 5s, 15s, 30s.
	BackOff []time.Duration
	// MaxAckPending bounds the messages delivered and not yet acknowledged:
	// the runtime never holds more. Default 1000.
	MaxAckPending int
	// MaxRequestMaxBytes bounds the bytes one pull request may ask for.
	// Default 8 MiB.
	MaxRequestMaxBytes int
}

// DefaultBackOff is the retry schedule of the default consumers.
var DefaultBackOff = []time.Duration{time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second}

// DefaultConsumers returns the stage consumers of the pipeline.
func DefaultConsumers() []ConsumerSpec {
	return []ConsumerSpec{
		{Name: StageProcessor, Kind: KindInbound},
		{Name: StageSender, Kind: KindOutbound},
		{Name: StageIndexer, Kind: KindDeadLetter},
		// The deletion saga: a crashed saga resumes after the first step
		// (the runtime keeps a long step alive with in-progress acks), and
		// many attempts are allowed, since a saga must finish.
		{Name: StageAccounts, Kind: KindAccounts, MaxDeliver: 20, BackOff: []time.Duration{2 * time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second}, MaxAckPending: 16},
	}
}

// DefaultTopology returns the topology with every default filled in.
func DefaultTopology() Topology { return Topology{}.WithDefaults() }

// WithDefaults returns t with every zero field set to its default.
func (t Topology) WithDefaults() Topology {
	t.Shards = cmp.Or(t.Shards, 4)
	t.Replicas = cmp.Or(t.Replicas, 1)
	t.MaxEventBytes = cmp.Or(t.MaxEventBytes, 32<<10)
	t.DuplicateWindow = cmp.Or(t.DuplicateWindow, 2*time.Minute)
	t.DeadLetterMaxAge = cmp.Or(t.DeadLetterMaxAge, 14*24*time.Hour)
	t.AccountEventsMaxAge = cmp.Or(t.AccountEventsMaxAge, 30*24*time.Hour)
	if t.Consumers == nil {
		t.Consumers = DefaultConsumers()
	}
	cs := make([]ConsumerSpec, len(t.Consumers))
	for i, c := range t.Consumers {
		c.MaxDeliver = cmp.Or(c.MaxDeliver, 5)
		if len(c.BackOff) == 0 {
			c.BackOff = DefaultBackOff
		}
		c.MaxAckPending = cmp.Or(c.MaxAckPending, 1000)
		c.MaxRequestMaxBytes = cmp.Or(c.MaxRequestMaxBytes, 8<<20)
		cs[i] = c
	}
	t.Consumers = cs
	return t
}

// Validate checks the invariants the runtime relies on.
func (t Topology) Validate() error {
	if t.Shards < 1 {
		return fmt.Errorf("streams: topology: Shards must be at least 1, got %d", t.Shards)
	}
	if t.Replicas != 1 && t.Replicas != 3 && t.Replicas != 5 {
		return fmt.Errorf("streams: topology: Replicas must be 1, 3 or 5, got %d", t.Replicas)
	}
	if t.MaxEventBytes < 1024 {
		return fmt.Errorf("streams: topology: MaxEventBytes must be at least 1024, got %d", t.MaxEventBytes)
	}
	if t.DuplicateWindow <= 0 {
		return fmt.Errorf("streams: topology: DuplicateWindow must be positive")
	}
	seen := map[string]bool{}
	for _, c := range t.Consumers {
		if err := validateToken("consumer name", c.Name); err != nil {
			return err
		}
		if seen[c.Name] {
			return fmt.Errorf("streams: topology: consumer %q declared twice", c.Name)
		}
		seen[c.Name] = true
		if c.MaxDeliver < 1 {
			return fmt.Errorf("streams: topology: consumer %q: MaxDeliver must be at least 1 (never unlimited)", c.Name)
		}
		if len(c.BackOff) == 0 || len(c.BackOff) > c.MaxDeliver {
			return fmt.Errorf("streams: topology: consumer %q: BackOff needs 1..MaxDeliver (%d) entries, got %d", c.Name, c.MaxDeliver, len(c.BackOff))
		}
		for _, d := range c.BackOff {
			if d < 10*time.Millisecond {
				return fmt.Errorf("streams: topology: consumer %q: BackOff entry %v is under 10ms", c.Name, d)
			}
		}
		if c.MaxAckPending < 1 {
			return fmt.Errorf("streams: topology: consumer %q: MaxAckPending must be bounded (≥1)", c.Name)
		}
		if c.MaxRequestMaxBytes < t.MaxMsgSize(c.Kind) {
			return fmt.Errorf("streams: topology: consumer %q: MaxRequestMaxBytes %d cannot carry one message of %d bytes", c.Name, c.MaxRequestMaxBytes, t.MaxMsgSize(c.Kind))
		}
	}
	return nil
}

// MaxMsgSize is the largest message (payload plus headers) a kind's stream
// accepts, derived from MaxEventBytes.
func (t Topology) MaxMsgSize(kind Kind) int {
	switch kind {
	case KindInbound:
		return t.MaxEventBytes + headerAllowance
	case KindOutbound:
		// The outbound message embeds the event plus its routing fields.
		return t.MaxEventBytes + 2*headerAllowance
	case KindDeadLetter:
		// The envelope carries the original (base64, 4/3) plus headers.
		return 2*(t.MaxEventBytes+2*headerAllowance) + headerAllowance
	default:
		return 64 << 10
	}
}

// RequiredMaxPayload is the smallest server max_payload that carries every
// stream's largest message.
func (t Topology) RequiredMaxPayload() int {
	m := 0
	for _, k := range Kinds {
		m = max(m, t.MaxMsgSize(k))
	}
	return m
}

// Consumer returns the spec of a named consumer.
func (t Topology) Consumer(name string) (ConsumerSpec, bool) {
	for _, c := range t.Consumers {
		if c.Name == name {
			return c, true
		}
	}
	return ConsumerSpec{}, false
}

// StreamConfig is the declared configuration of a kind's stream on a shard.
//
// Retention: the stage streams (inbound, outbound) hold work, not history, so
// they use work-queue retention: a message leaves the stream once it is acked,
// terminated (dropped or dead-lettered) or purged, exactly one stage consumer
// may read a subject (the server refuses an overlapping one), and a parked
// copy of a suspended account's message stays stored with no consumer until
// it is released. Account events and dead letters are history: limits
// retention with a max age, so they can be browsed and read by several
// consumers.
func (t Topology) StreamConfig(kind Kind, shard int) jetstream.StreamConfig {
	cfg := jetstream.StreamConfig{
		Name:       StreamName(kind, shard),
		Subjects:   []string{ShardSubjects(kind, shard)},
		Storage:    t.Storage,
		Replicas:   t.Replicas,
		MaxMsgSize: int32(t.MaxMsgSize(kind)),
		Duplicates: t.DuplicateWindow,
		Discard:    jetstream.DiscardOld,
	}
	switch kind {
	case KindInbound, KindOutbound:
		cfg.Retention = jetstream.WorkQueuePolicy
		cfg.Description = fmt.Sprintf("shard %d %s work (work-queue: leaves once acked, terminated or purged)", shard, kind)
		// No size or count limit is set on stage streams, so no accepted work
		// is ever discarded; DiscardOld is what message schedules require.
		cfg.AllowAtomicPublish = kind == KindInbound
		// Deferred messages (Defer outcome) come back through a JetStream
		// message schedule, which needs schedules and roll-ups enabled.
		cfg.AllowMsgSchedules = true
		cfg.AllowRollup = true
	case KindAccounts:
		cfg.Retention = jetstream.LimitsPolicy
		cfg.MaxAge = t.AccountEventsMaxAge
		cfg.Description = fmt.Sprintf("shard %d account lifecycle events (history)", shard)
	case KindDeadLetter:
		cfg.Retention = jetstream.LimitsPolicy
		cfg.MaxAge = t.DeadLetterMaxAge
		cfg.Description = fmt.Sprintf("shard %d dead letters (history, browsable)", shard)
	}
	if cfg.MaxAge > 0 && cfg.Duplicates > cfg.MaxAge {
		cfg.Duplicates = cfg.MaxAge
	}
	if t.PlacementTags != nil {
		if tags := t.PlacementTags(shard); len(tags) > 0 {
			cfg.Placement = &jetstream.Placement{Tags: tags}
		}
	}
	return cfg
}

// ConsumerConfig is the declared configuration of a consumer on a shard.
func (t Topology) ConsumerConfig(c ConsumerSpec, shard int) jetstream.ConsumerConfig {
	filter := StageFilter(c.Kind, shard)
	if c.Kind == KindDeadLetter || c.Kind == KindAccounts {
		filter = ShardSubjects(c.Kind, shard)
	}
	return jetstream.ConsumerConfig{
		Durable:            c.Name,
		Description:        fmt.Sprintf("shardflow %s stage, shard %d", c.Name, shard),
		FilterSubject:      filter,
		AckPolicy:          jetstream.AckExplicitPolicy,
		AckWait:            c.BackOff[0],
		MaxDeliver:         c.MaxDeliver,
		BackOff:            c.BackOff,
		MaxAckPending:      c.MaxAckPending,
		MaxRequestMaxBytes: c.MaxRequestMaxBytes,
		DeliverPolicy:      jetstream.DeliverAllPolicy,
	}
}

// StreamNames lists every stream of the topology.
func (t Topology) StreamNames() []string {
	var names []string
	for shard := 0; shard < t.Shards; shard++ {
		for _, k := range Kinds {
			names = append(names, StreamName(k, shard))
		}
	}
	return names
}
