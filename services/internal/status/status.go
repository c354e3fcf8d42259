package status

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
)

// Snapshot is the state of every shard's streams and stage consumers at one
// moment, with rates when it was compared with an earlier sample.
type Snapshot struct {
	At time.Time `json:"at"`
	// WindowSeconds is the time between the two samples the rates come
	// from; 0 when the snapshot has no rates.
	WindowSeconds float64 `json:"window_seconds"`
	// Sources names what the numbers come from: "jetstream", "postgres",
	// and "metrics <url>" per scraped endpoint.
	Sources []string `json:"sources"`
	// Warnings lists optional sources that failed for this snapshot.
	Warnings []string      `json:"warnings,omitempty"`
	Shards   []ShardStatus `json:"shards"`
}

// ShardStatus is one shard.
type ShardStatus struct {
	Shard int `json:"shard"`
	// InboundPending and OutboundPending are the pending work (num_pending +
	// num_ack_pending) of the processor on INBOUND_n and of the sender on
	// OUTBOUND_n.
	InboundPending  uint64 `json:"inbound_pending"`
	OutboundPending uint64 `json:"outbound_pending"`
	// ProcessedPerSec is each stage consumer's ack-floor rate, by stage
	// (nil without a previous sample).
	ProcessedPerSec map[string]float64 `json:"processed_per_sec"`
	// DrainETA and DrainETASeconds are those of the slowest consumer of the
	// shard (see the package documentation).
	DrainETA        string   `json:"drain_eta,omitempty"`
	DrainETASeconds *float64 `json:"drain_eta_seconds"`
	// DeadLetters is the message count of the shard's dead-letter stream.
	DeadLetters uint64 `json:"dead_letters"`
	// DeadLettersByClass counts the shard's indexed dead letters by error
	// class (Postgres; nil without a pool).
	DeadLettersByClass map[string]uint64 `json:"dead_letters_by_class"`
	// DeadLettered, Dropped and Redeliveries sum the runtime's counters of
	// every stage of the shard, by reason (Prometheus; nil without metrics
	// endpoints).
	DeadLettered map[string]uint64 `json:"dead_lettered"`
	Dropped      map[string]uint64 `json:"dropped"`
	Redeliveries *uint64           `json:"redeliveries"`
	// NumRedelivered sums the consumers' num_redelivered (JetStream).
	NumRedelivered int              `json:"num_redelivered"`
	Streams        []StreamStatus   `json:"streams"`
	Consumers      []ConsumerStatus `json:"consumers"`
}

// StreamStatus is one stream.
type StreamStatus struct {
	Name     string       `json:"name"`
	Kind     streams.Kind `json:"kind"`
	Messages uint64       `json:"messages"`
	Bytes    uint64       `json:"bytes"`
	Missing  bool         `json:"missing,omitempty"`
}

// ConsumerStatus is one stage consumer.
type ConsumerStatus struct {
	Stream         string `json:"stream"`
	Name           string `json:"name"`
	NumPending     uint64 `json:"num_pending"`
	NumAckPending  int    `json:"num_ack_pending"`
	NumRedelivered int    `json:"num_redelivered"`
	NumWaiting     int    `json:"num_waiting"`
	// DeliveredSeq and AckFloorSeq are consumer sequences: the last
	// delivered, and the last below which everything was acknowledged.
	DeliveredSeq uint64 `json:"delivered_consumer_seq"`
	AckFloorSeq  uint64 `json:"ack_floor_consumer_seq"`
	Paused       bool   `json:"paused,omitempty"`
	Missing      bool   `json:"missing,omitempty"`
	// ProcessedPerSec is the ack-floor advance per second between two
	// samples (nil without a previous sample).
	ProcessedPerSec *float64 `json:"processed_per_sec,omitempty"`
	// DrainETA is "idle" (nothing pending), "∞" (pending, not advancing),
	// or the time (pending ÷ processed/s) to drain; "" without a rate.
	// DrainETASeconds is set only for a finite, non-idle ETA.
	DrainETA        string   `json:"drain_eta,omitempty"`
	DrainETASeconds *float64 `json:"drain_eta_seconds,omitempty"`
	// Counters are the runtime's counters for this shard and stage, from
	// the metrics endpoints (nil without them).
	Counters *StageCounters `json:"counters,omitempty"`
}

// Pending is what the consumer still has to get through.
func (c ConsumerStatus) Pending() uint64 { return c.NumPending + uint64(max(c.NumAckPending, 0)) }

// StageCounters are the consumer runtime's counters of one shard and stage,
// summed over the scraped processes (see streams.Metric*).
type StageCounters struct {
	Acked        uint64            `json:"acked"`
	Retried      uint64            `json:"retried"`
	Redeliveries uint64            `json:"redeliveries"`
	Parked       uint64            `json:"parked"`
	DeadLettered map[string]uint64 `json:"dead_lettered"`
	Dropped      map[string]uint64 `json:"dropped"`
	Deferred     map[string]uint64 `json:"deferred"`
}

// Config configures a Collector.
type Config struct {
	// JetStream is the client the streams and consumers are read with
	// (STREAM.INFO and CONSUMER.INFO). Required.
	JetStream jetstream.JetStream
	// Topology is the declared topology. Default streams.DefaultTopology().
	Topology streams.Topology
	// Pool, when set, adds dead letters by error class from the
	// dead_letters table.
	Pool *pgxpool.Pool
	// MetricsURLs, when set, are the /metrics endpoints (processor and
	// sender instances) whose shardflow_stage_* counters are summed. An
	// entry without a scheme is taken as host:port of a health address:
	// http://host:port/metrics.
	MetricsURLs []string
	// HTTPClient scrapes the metrics. Default: a client with a 5s timeout.
	HTTPClient *http.Client
}

// Collector takes snapshots.
type Collector struct {
	cfg     Config
	metrics []string
}

// New checks cfg and returns a Collector.
func New(cfg Config) (*Collector, error) {
	if cfg.JetStream == nil {
		return nil, errors.New("status: Config.JetStream is required")
	}
	if cfg.Topology.Shards == 0 {
		cfg.Topology = streams.DefaultTopology()
	}
	if err := cfg.Topology.Validate(); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 5 * time.Second}
	}
	c := &Collector{cfg: cfg}
	for _, u := range cfg.MetricsURLs {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		if !strings.Contains(u, "://") {
			u = "http://" + strings.TrimSuffix(u, "/") + "/metrics"
		}
		if !slices.Contains(c.metrics, u) {
			c.metrics = append(c.metrics, u)
		}
	}
	return c, nil
}

// ParseList splits a comma- or space-separated list (of metrics URLs, say).
func ParseList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' })
}

// Sample takes two snapshots gap apart and returns the second with rates.
// A gap of 0 returns one snapshot without rates.
func (c *Collector) Sample(ctx context.Context, gap time.Duration) (Snapshot, error) {
	prev, err := c.Collect(ctx)
	if err != nil || gap <= 0 {
		return prev, err
	}
	t := time.NewTimer(gap)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return Snapshot{}, ctx.Err()
	case <-t.C:
	}
	cur, err := c.Collect(ctx)
	if err != nil {
		return cur, err
	}
	return WithRates(prev, cur), nil
}

// Collect takes one sample of every stream and stage consumer, plus the
// optional sources. Missing streams and consumers are reported as such, not
// as errors; an optional source that fails becomes a warning.
func (c *Collector) Collect(ctx context.Context) (Snapshot, error) {
	snap, err := collectJetStream(ctx, c.cfg.JetStream, c.cfg.Topology)
	if err != nil {
		return snap, err
	}
	snap.Sources = []string{"jetstream"}
	if c.cfg.Pool != nil {
		counts, err := deadLetterCounts(ctx, c.cfg.Pool)
		if err != nil {
			snap.Warnings = append(snap.Warnings, "postgres: "+err.Error())
		} else {
			snap.Sources = append(snap.Sources, "postgres")
			for i := range snap.Shards {
				m := counts[snap.Shards[i].Shard]
				if m == nil {
					m = map[string]uint64{}
				}
				snap.Shards[i].DeadLettersByClass = m
			}
		}
	}
	if len(c.metrics) > 0 {
		series, ok, warnings := c.scrapeAll(ctx)
		snap.Warnings = append(snap.Warnings, warnings...)
		for _, u := range ok {
			snap.Sources = append(snap.Sources, "metrics "+u)
		}
		if len(ok) > 0 {
			applyCounters(&snap, series)
		}
	}
	return snap, nil
}

// collectJetStream reads every stream and stage consumer of topo.
func collectJetStream(ctx context.Context, js jetstream.JetStream, topo streams.Topology) (Snapshot, error) {
	snap := Snapshot{At: time.Now(), Shards: []ShardStatus{}}
	for shard := range topo.Shards {
		ss := ShardStatus{Shard: shard, Streams: []StreamStatus{}, Consumers: []ConsumerStatus{}}
		for _, kind := range streams.Kinds {
			name := streams.StreamName(kind, shard)
			st := StreamStatus{Name: name, Kind: kind}
			s, err := js.Stream(ctx, name)
			switch {
			case errors.Is(err, jetstream.ErrStreamNotFound):
				st.Missing = true
			case err != nil:
				return snap, fmt.Errorf("status: stream %s: %w", name, err)
			default:
				info := s.CachedInfo()
				st.Messages, st.Bytes = info.State.Msgs, info.State.Bytes
			}
			ss.Streams = append(ss.Streams, st)
			if kind == streams.KindDeadLetter {
				ss.DeadLetters = st.Messages
			}
			for _, spec := range topo.Consumers {
				if spec.Kind != kind {
					continue
				}
				cs := ConsumerStatus{Stream: name, Name: spec.Name}
				var cons jetstream.Consumer
				if !st.Missing {
					cons, err = js.Consumer(ctx, name, spec.Name)
				} else {
					err = jetstream.ErrConsumerNotFound
				}
				switch {
				case errors.Is(err, jetstream.ErrConsumerNotFound):
					cs.Missing = true
				case err != nil:
					return snap, fmt.Errorf("status: consumer %s on %s: %w", spec.Name, name, err)
				default:
					info := cons.CachedInfo()
					cs.NumPending, cs.NumAckPending, cs.NumRedelivered, cs.NumWaiting = info.NumPending, info.NumAckPending, info.NumRedelivered, info.NumWaiting
					cs.DeliveredSeq, cs.AckFloorSeq, cs.Paused = info.Delivered.Consumer, info.AckFloor.Consumer, info.Paused
				}
				ss.NumRedelivered += cs.NumRedelivered
				switch {
				case kind == streams.KindInbound && spec.Name == streams.StageProcessor:
					ss.InboundPending += cs.Pending()
				case kind == streams.KindOutbound && spec.Name == streams.StageSender:
					ss.OutboundPending += cs.Pending()
				}
				ss.Consumers = append(ss.Consumers, cs)
			}
		}
		snap.Shards = append(snap.Shards, ss)
	}
	return snap, nil
}

// deadLetterCounts counts the indexed dead letters an operator did not
// drop, by shard and error class.
func deadLetterCounts(ctx context.Context, pool *pgxpool.Pool) (map[int]map[string]uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := pool.Query(ctx, `SELECT shard, error_class, count(*) FROM dead_letters WHERE dropped_at IS NULL GROUP BY shard, error_class`)
	if err != nil {
		return nil, fmt.Errorf("dead letter counts: %w", err)
	}
	defer rows.Close()
	out := map[int]map[string]uint64{}
	for rows.Next() {
		var (
			shard int
			class string
			n     int64
		)
		if err := rows.Scan(&shard, &class, &n); err != nil {
			return nil, fmt.Errorf("dead letter counts: %w", err)
		}
		if out[shard] == nil {
			out[shard] = map[string]uint64{}
		}
		out[shard][class] = uint64(n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("dead letter counts: %w", err)
	}
	return out, nil
}
