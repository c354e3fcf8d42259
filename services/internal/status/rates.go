package status

import (
	"math"
	"time"
)

// ETA words.
const (
	ETAIdle  = "idle" // nothing pending
	ETAStuck = "∞"    // pending, and nothing advanced
)

// maxETASeconds caps a printed ETA (a rate of a few messages a day would
// overflow a time.Duration).
const maxETASeconds = 1e9

// WithRates fills cur's rates and drain ETAs from the earlier sample prev.
// cur is returned unchanged when it is not later than prev.
func WithRates(prev, cur Snapshot) Snapshot {
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
		sh := &cur.Shards[i]
		for j := range sh.Consumers {
			c := &sh.Consumers[j]
			p, ok := before[c.Stream+"/"+c.Name]
			if !ok || c.Missing || p.Missing {
				continue
			}
			rate := Rate(p.AckFloorSeq, c.AckFloorSeq, dt)
			c.ProcessedPerSec = &rate
			c.DrainETA, c.DrainETASeconds = DrainETA(c.Pending(), rate)
			if sh.ProcessedPerSec == nil {
				sh.ProcessedPerSec = map[string]float64{}
			}
			sh.ProcessedPerSec[c.Name] += rate
		}
		sh.DrainETA, sh.DrainETASeconds = shardETA(sh.Consumers)
	}
	return cur
}

// Rate is the advance of an ack floor from before to after in dt seconds,
// per second. A floor that went back (a re-created consumer starts again at
// 0) counts as no progress.
func Rate(before, after uint64, dt float64) float64 {
	if dt <= 0 || after <= before {
		return 0
	}
	return float64(after-before) / dt
}

// DrainETA is pending ÷ rate: "idle" with no seconds when nothing is
// pending, "∞" with no seconds when something is pending and the rate is 0,
// else the duration and its seconds.
func DrainETA(pending uint64, rate float64) (string, *float64) {
	switch {
	case pending == 0:
		return ETAIdle, nil
	case rate <= 0 || math.IsNaN(rate):
		return ETAStuck, nil
	}
	secs := float64(pending) / rate
	return formatSeconds(secs), &secs
}

// formatSeconds renders an ETA: whole seconds above a minute, tenths below.
func formatSeconds(secs float64) string {
	d := time.Duration(math.Min(secs, maxETASeconds) * float64(time.Second))
	if d >= time.Minute {
		return d.Round(time.Second).String()
	}
	return d.Round(100 * time.Millisecond).String()
}

// shardETA is the ETA of the slowest consumer: "" when any has no rate,
// "∞" when any is stuck, "idle" when all are idle.
func shardETA(cs []ConsumerStatus) (string, *float64) {
	var worst *float64
	stuck, idle, known := false, true, 0
	for _, c := range cs {
		if c.Missing {
			continue
		}
		switch c.DrainETA {
		case "":
			return "", nil
		case ETAStuck:
			stuck, idle = true, false
		case ETAIdle:
		default:
			idle = false
			if c.DrainETASeconds != nil && (worst == nil || *c.DrainETASeconds > *worst) {
				v := *c.DrainETASeconds
				worst = &v
			}
		}
		known++
	}
	switch {
	case known == 0:
		return "", nil
	case stuck:
		return ETAStuck, nil
	case idle:
		return ETAIdle, nil
	case worst == nil:
		return "", nil
	}
	return formatSeconds(*worst), worst
}
