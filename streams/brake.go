package streams

import (
	"context"
	"sync"
	"time"
)

// Brake slows a consumer whose messages nearly all end dead-lettered.
//
// Dead-lettering costs as much as success: the handler's work, the
// envelope, the index. A shard flooded with poison would spend the CPU, the
// database and the server it shares with healthy shards on failing as fast
// as it can: in the isolation benchmark a healthy shard offered half its
// rate got two thirds of it through, with a p99 of seconds. Braked, the
// consumer fetches at most Rate messages a second; the poison still reaches
// the dead-letter stream, only later, and a run of successes releases the
// brake.
//
// It watches only final outcomes: an ack is a success, a dead letter a
// failure; retries, drops, deferrals and holds (an outage is not poison) do
// not count.
type Brake struct {
	// Above is the share of recent messages ended dead-lettered (a moving
	// average, weight 1/50 per message) over which the brake engages;
	// between 0 and 1. 0: never.
	Above float64
	// Rate is how many messages a second a braked consumer fetches.
	// Default 200.
	Rate float64
}

// brakeWeight is each message's weight in the moving failure share: from
// 0, about 115 dead letters in a row engage a brake at 0.9; from 1, about 5
// successes release it.
const brakeWeight = 1.0 / 50

// brakeState is a consumer's failure average and its braked pace.
type brakeState struct {
	cfg  Brake
	mu   sync.Mutex
	fail float64
	on   bool
	next time.Time // earliest next braked fetch
}

// observe records a final outcome and reports whether the brake changed.
func (b *brakeState) observe(failed bool) (changed, on bool) {
	if b.cfg.Above <= 0 {
		return false, false
	}
	x := 0.0
	if failed {
		x = 1
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fail += brakeWeight * (x - b.fail)
	was := b.on
	b.on = b.fail > b.cfg.Above
	return was != b.on, b.on
}

// pace returns how many messages the next fetch may take (at most free)
// and how long to wait before it; an unbraked consumer takes free at once.
func (b *brakeState) pace(free int) (int, time.Duration) {
	if b.cfg.Above <= 0 {
		return free, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.on {
		return free, 0
	}
	const tick = 100 * time.Millisecond
	now := time.Now()
	if wait := b.next.Sub(now); wait > 0 {
		return 0, wait
	}
	b.next = now.Add(tick)
	return min(free, max(1, int(b.cfg.Rate*tick.Seconds()))), 0
}

// braked reports whether the brake is on.
func (b *brakeState) braked() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.on
}

// noteOutcome feeds the brake and logs when it engages or lets go.
func (c *Consumer) noteOutcome(ctx context.Context, failed bool) {
	if changed, on := c.brake.observe(failed); changed {
		if on {
			c.log.WarnContext(ctx, "brake on: nearly every message ends dead-lettered; fetching slowly", "above", c.brake.cfg.Above, "rate", c.brake.cfg.Rate)
		} else {
			c.log.InfoContext(ctx, "brake off: messages succeed again")
		}
	}
}
