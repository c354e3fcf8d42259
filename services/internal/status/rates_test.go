package status

import (
	"math"
	"testing"
	"time"
)

func TestRate(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before, after uint64
		dt            float64
		want          float64
	}{
		{"advancing", 500, 700, 2, 100},
		{"still", 5, 5, 2, 0},
		{"recreated consumer (floor went back)", 900, 3, 2, 0},
		{"no window", 0, 10, 0, 0},
		{"negative window", 0, 10, -1, 0},
		{"fractional", 0, 1, 4, 0.25},
	} {
		if got := Rate(tc.before, tc.after, tc.dt); got != tc.want {
			t.Errorf("%s: Rate(%d, %d, %v) = %v, want %v", tc.name, tc.before, tc.after, tc.dt, got, tc.want)
		}
	}
}

func TestDrainETA(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pending uint64
		rate    float64
		eta     string
		secs    float64 // -1: nil
	}{
		{"idle, nothing moving", 0, 0, "idle", -1},
		{"idle while the floor moves", 0, 50, "idle", -1},
		{"stuck", 10, 0, "∞", -1},
		{"NaN rate is stuck, not a number", 10, math.NaN(), "∞", -1},
		{"draining", 900, 100, "9s", 9},
		{"sub-second", 1, 4, "300ms", 0.25}, // rounded to tenths for display, exact in seconds
		{"minutes", 6000, 40, "2m30s", 150},
		{"one message a day", 1 << 40, 1.0 / 86400, "277777h46m40s", float64(1<<40) * 86400},
	} {
		eta, secs := DrainETA(tc.pending, tc.rate)
		if eta != tc.eta {
			t.Errorf("%s: ETA %q, want %q", tc.name, eta, tc.eta)
		}
		switch {
		case tc.secs < 0 && secs != nil:
			t.Errorf("%s: seconds %v, want null", tc.name, *secs)
		case tc.secs >= 0 && (secs == nil || math.Abs(*secs-tc.secs) > 1e-9*tc.secs):
			t.Errorf("%s: seconds %v, want %v", tc.name, secs, tc.secs)
		}
	}
}

func TestWithRates(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	c := func(stream, name string, pending uint64, ackPending int, floor uint64) ConsumerStatus {
		return ConsumerStatus{Stream: stream, Name: name, NumPending: pending, NumAckPending: ackPending, AckFloorSeq: floor}
	}
	snap := func(at time.Time, cs ...ConsumerStatus) Snapshot {
		return Snapshot{At: at, Shards: []ShardStatus{{Consumers: cs}}}
	}
	for _, tc := range []struct {
		name      string
		prev, cur []ConsumerStatus
		rates     []float64 // per consumer; NaN: nil
		etas      []string
		shardETA  string
		shardSecs float64 // -1: nil
	}{
		{
			name:  "one draining, one idle: the shard ETA is the draining one's",
			prev:  []ConsumerStatus{c("INBOUND_0", "processor", 0, 0, 100), c("OUTBOUND_0", "sender", 1000, 100, 500)},
			cur:   []ConsumerStatus{c("INBOUND_0", "processor", 0, 0, 100), c("OUTBOUND_0", "sender", 800, 100, 700)},
			rates: []float64{0, 100}, etas: []string{"idle", "9s"}, shardETA: "9s", shardSecs: 9,
		},
		{
			name:  "the slowest consumer wins",
			prev:  []ConsumerStatus{c("INBOUND_0", "processor", 100, 0, 0), c("OUTBOUND_0", "sender", 100, 0, 0)},
			cur:   []ConsumerStatus{c("INBOUND_0", "processor", 100, 0, 200), c("OUTBOUND_0", "sender", 100, 0, 20)},
			rates: []float64{100, 10}, etas: []string{"1s", "10s"}, shardETA: "10s", shardSecs: 10,
		},
		{
			name:  "one stuck makes the shard ∞",
			prev:  []ConsumerStatus{c("INBOUND_0", "processor", 100, 0, 0), c("OUTBOUND_0", "sender", 5, 0, 7)},
			cur:   []ConsumerStatus{c("INBOUND_0", "processor", 100, 0, 200), c("OUTBOUND_0", "sender", 5, 0, 7)},
			rates: []float64{100, 0}, etas: []string{"1s", "∞"}, shardETA: "∞", shardSecs: -1,
		},
		{
			name:  "all idle",
			prev:  []ConsumerStatus{c("INBOUND_0", "processor", 0, 0, 7), c("OUTBOUND_0", "sender", 0, 0, 7)},
			cur:   []ConsumerStatus{c("INBOUND_0", "processor", 0, 0, 7), c("OUTBOUND_0", "sender", 0, 0, 9)},
			rates: []float64{0, 1}, etas: []string{"idle", "idle"}, shardETA: "idle", shardSecs: -1,
		},
		{
			name:  "ack-pending alone is pending work",
			prev:  []ConsumerStatus{c("OUTBOUND_0", "sender", 0, 40, 0)},
			cur:   []ConsumerStatus{c("OUTBOUND_0", "sender", 0, 40, 0)},
			rates: []float64{0}, etas: []string{"∞"}, shardETA: "∞", shardSecs: -1,
		},
		{
			name:  "re-created consumer: no progress, not a huge negative one",
			prev:  []ConsumerStatus{c("INBOUND_0", "processor", 0, 0, 900)},
			cur:   []ConsumerStatus{c("INBOUND_0", "processor", 5, 0, 0)},
			rates: []float64{0}, etas: []string{"∞"}, shardETA: "∞", shardSecs: -1,
		},
		{
			name:  "a consumer absent from the previous sample has no rate, so neither has the shard",
			prev:  []ConsumerStatus{c("INBOUND_0", "processor", 0, 0, 0)},
			cur:   []ConsumerStatus{c("INBOUND_0", "processor", 0, 0, 0), c("OUTBOUND_0", "sender", 3, 0, 0)},
			rates: []float64{0, math.NaN()}, etas: []string{"idle", ""}, shardETA: "", shardSecs: -1,
		},
		{
			name: "a missing consumer is left out of the shard ETA",
			prev: []ConsumerStatus{c("INBOUND_0", "processor", 10, 0, 0), {Stream: "OUTBOUND_0", Name: "sender", Missing: true}},
			cur:  []ConsumerStatus{c("INBOUND_0", "processor", 10, 0, 20), {Stream: "OUTBOUND_0", Name: "sender", Missing: true}},
			// 10 pending at 10/s.
			rates: []float64{10, math.NaN()}, etas: []string{"1s", ""}, shardETA: "1s", shardSecs: 1,
		},
	} {
		got := WithRates(snap(t0, tc.prev...), snap(t0.Add(2*time.Second), tc.cur...))
		if got.WindowSeconds != 2 {
			t.Errorf("%s: window %v, want 2", tc.name, got.WindowSeconds)
		}
		sh := got.Shards[0]
		for i, cs := range sh.Consumers {
			switch want := tc.rates[i]; {
			case math.IsNaN(want):
				if cs.ProcessedPerSec != nil {
					t.Errorf("%s: %s rate %v, want none", tc.name, cs.Name, *cs.ProcessedPerSec)
				}
			case cs.ProcessedPerSec == nil || *cs.ProcessedPerSec != want:
				t.Errorf("%s: %s rate %v, want %v", tc.name, cs.Name, cs.ProcessedPerSec, want)
			}
			if cs.DrainETA != tc.etas[i] {
				t.Errorf("%s: %s ETA %q, want %q", tc.name, cs.Name, cs.DrainETA, tc.etas[i])
			}
			if cs.DrainETASeconds != nil && (math.IsInf(*cs.DrainETASeconds, 0) || *cs.DrainETASeconds <= 0) {
				t.Errorf("%s: %s ETA seconds %v: must be finite and positive when set", tc.name, cs.Name, *cs.DrainETASeconds)
			}
		}
		if sh.DrainETA != tc.shardETA {
			t.Errorf("%s: shard ETA %q, want %q", tc.name, sh.DrainETA, tc.shardETA)
		}
		switch {
		case tc.shardSecs < 0 && sh.DrainETASeconds != nil:
			t.Errorf("%s: shard ETA seconds %v, want null", tc.name, *sh.DrainETASeconds)
		case tc.shardSecs >= 0 && (sh.DrainETASeconds == nil || *sh.DrainETASeconds != tc.shardSecs):
			t.Errorf("%s: shard ETA seconds %v, want %v", tc.name, sh.DrainETASeconds, tc.shardSecs)
		}
	}
}

func TestWithRatesNeedsALaterSample(t *testing.T) {
	t0 := time.Now()
	cs := []ConsumerStatus{{Stream: "INBOUND_0", Name: "processor", NumPending: 4, AckFloorSeq: 1}}
	prev := Snapshot{At: t0, Shards: []ShardStatus{{Consumers: cs}}}
	for _, at := range []time.Time{t0, t0.Add(-time.Second)} {
		cur := Snapshot{At: at, Shards: []ShardStatus{{Consumers: append([]ConsumerStatus(nil), cs...)}}}
		got := WithRates(prev, cur)
		if got.WindowSeconds != 0 || got.Shards[0].Consumers[0].ProcessedPerSec != nil || got.Shards[0].DrainETA != "" {
			t.Errorf("samples %v apart: got rates %+v", at.Sub(t0), got.Shards[0])
		}
	}
}
