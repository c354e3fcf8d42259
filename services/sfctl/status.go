package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
)

// StatusCmd is `sfctl status`.
type StatusCmd struct {
	Watch  time.Duration `name:"watch" help:"Refresh at this interval until interrupted (e.g. 2s); rates are computed between refreshes."`
	Sample time.Duration `name:"sample" default:"1s" help:"Without --watch: the gap between the two samples rates are computed from."`
}

// Snapshot is the state of every shard's streams and stage consumers at one
// moment, with rates when it was compared with an earlier sample.
type Snapshot struct {
	At time.Time `json:"at"`
	// WindowSeconds is the time between the two samples the rates come
	// from; 0 when the snapshot has no rates.
	WindowSeconds float64       `json:"window_seconds"`
	Shards        []ShardStatus `json:"shards"`
}

// ShardStatus is one shard.
type ShardStatus struct {
	Shard     int              `json:"shard"`
	Streams   []StreamStatus   `json:"streams"`
	Consumers []ConsumerStatus `json:"consumers"`
	// DeadLetters is the message count of the shard's dead-letter stream.
	DeadLetters uint64 `json:"dead_letters"`
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
	DrainETA        string   `json:"drain_eta,omitempty"`
	DrainETASeconds *float64 `json:"drain_eta_seconds,omitempty"`
}

// Pending is what the consumer still has to get through.
func (c ConsumerStatus) Pending() uint64 { return c.NumPending + uint64(max(c.NumAckPending, 0)) }

// collect takes one sample of every stream and stage consumer of topo.
// Missing streams and consumers are reported as such, not as errors.
func collect(ctx context.Context, js jetstream.JetStream, topo streams.Topology) (Snapshot, error) {
	snap := Snapshot{At: time.Now()}
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
				var c jetstream.Consumer
				if !st.Missing {
					c, err = js.Consumer(ctx, name, spec.Name)
				} else {
					err = jetstream.ErrConsumerNotFound
				}
				switch {
				case errors.Is(err, jetstream.ErrConsumerNotFound):
					cs.Missing = true
				case err != nil:
					return snap, fmt.Errorf("status: consumer %s on %s: %w", spec.Name, name, err)
				default:
					info := c.CachedInfo()
					cs.NumPending, cs.NumAckPending, cs.NumRedelivered, cs.NumWaiting = info.NumPending, info.NumAckPending, info.NumRedelivered, info.NumWaiting
					cs.DeliveredSeq, cs.AckFloorSeq, cs.Paused = info.Delivered.Consumer, info.AckFloor.Consumer, info.Paused
				}
				ss.Consumers = append(ss.Consumers, cs)
			}
		}
		snap.Shards = append(snap.Shards, ss)
	}
	return snap, nil
}

// withRates fills cur's rates and drain ETAs from the earlier sample prev.
func withRates(prev, cur Snapshot) Snapshot {
	dt := cur.At.Sub(prev.At).Seconds()
	if dt <= 0 {
		return cur
	}
	before := map[string]ConsumerStatus{}
	for _, sh := range prev.Shards {
		for _, c := range sh.Consumers {
			before[c.Stream+"/"+c.Name] = c
		}
	}
	cur.WindowSeconds = dt
	for i := range cur.Shards {
		for j := range cur.Shards[i].Consumers {
			c := &cur.Shards[i].Consumers[j]
			p, ok := before[c.Stream+"/"+c.Name]
			if !ok || c.Missing || p.Missing {
				continue
			}
			var done float64
			if c.AckFloorSeq > p.AckFloorSeq { // a recreated consumer starts again at 0
				done = float64(c.AckFloorSeq - p.AckFloorSeq)
			}
			rate := done / dt
			c.ProcessedPerSec = &rate
			switch pending := c.Pending(); {
			case pending == 0:
				c.DrainETA = "idle"
			case rate == 0:
				c.DrainETA = "∞"
			default:
				secs := float64(pending) / rate
				c.DrainETASeconds = &secs
				c.DrainETA = (time.Duration(math.Min(secs, 1e9)) * time.Second).String()
			}
		}
	}
	return cur
}

// render prints a snapshot as tables, one per shard.
func render(w io.Writer, s Snapshot) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "at %s", s.At.Format(time.RFC3339))
	if s.WindowSeconds > 0 {
		fmt.Fprintf(tw, " (rates over %.1fs)", s.WindowSeconds)
	}
	fmt.Fprintln(tw)
	for _, sh := range s.Shards {
		fmt.Fprintf(tw, "\nshard %d\tdead letters: %d\n", sh.Shard, sh.DeadLetters)
		fmt.Fprintln(tw, "  STREAM\tMESSAGES\tBYTES\t")
		for _, st := range sh.Streams {
			if st.Missing {
				fmt.Fprintf(tw, "  %s\tMISSING\t-\t\n", st.Name)
				continue
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t\n", st.Name, st.Messages, st.Bytes)
		}
		fmt.Fprintln(tw, "  CONSUMER\tPENDING\tACK_PENDING\tREDELIVERED\tPROCESSED/S\tDRAIN_ETA\t")
		for _, c := range sh.Consumers {
			name := c.Stream + "/" + c.Name
			if c.Missing {
				fmt.Fprintf(tw, "  %s\tMISSING\t-\t-\t-\t-\t\n", name)
				continue
			}
			rate, eta := "-", "-"
			if c.ProcessedPerSec != nil {
				rate, eta = fmt.Sprintf("%.1f", *c.ProcessedPerSec), c.DrainETA
			}
			if c.Paused {
				eta += " (paused)"
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%s\t%s\t\n", name, c.NumPending, c.NumAckPending, c.NumRedelivered, rate, eta)
		}
	}
	return tw.Flush()
}

// Run prints the status once (from two samples) or, with --watch, until
// interrupted.
func (c *StatusCmd) Run(a *app) error {
	ctx := a.ctx
	if c.Watch < 0 || c.Sample < 0 {
		return errors.New("status: --watch and --sample cannot be negative")
	}
	topo := a.cli.Topology()
	if err := topo.Validate(); err != nil {
		return err
	}
	nc, js, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	show := func(s Snapshot) error {
		if a.cli.JSON {
			return writeJSON(a.out, s)
		}
		return render(a.out, s)
	}
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	prev, err := collect(ctx, js, topo)
	if err != nil {
		return err
	}
	if c.Watch == 0 {
		if c.Sample > 0 && !wait(c.Sample) {
			return ctx.Err()
		}
		cur, err := collect(ctx, js, topo)
		if err != nil {
			return err
		}
		if c.Sample > 0 {
			cur = withRates(prev, cur)
		}
		return show(cur)
	}
	if err := show(prev); err != nil {
		return err
	}
	for wait(c.Watch) {
		cur, err := collect(ctx, js, topo)
		if err != nil {
			return err
		}
		cur = withRates(prev, cur)
		if !a.cli.JSON {
			fmt.Fprintln(a.out)
		}
		if err := show(cur); err != nil {
			return err
		}
		prev = cur
	}
	return nil // interrupted: a normal end of --watch
}
