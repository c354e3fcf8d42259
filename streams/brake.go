package streams

import (
	"context"
	"encoding/json"
	"strconv"
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
	// Announce also judges every account by its own messages (the same
	// moving share, kept per account) and publishes a BrakeAdvisory on
	// core NATS (BrakeSubject) when an account's share goes over Above,
	// again every second while it stays there, and once when it falls back.
	//
	// The consumer's own brake slows only the stage: the poison is still
	// accepted at the edge at whatever rate its sender manages, and on
	// shared machines that intake (validation, storage) is what the healthy
	// shards lose. An ingress that watches the advisories (WatchBrakes)
	// slows the account itself at the source — ingest answers 429 with
	// Retry-After, so clients keep their data and send it later — and it
	// judges one account, so a healthy account of the same shard is never
	// slowed. Needs Above > 0.
	Announce bool
}

// BrakeAdvisory says that a stage brakes an account: nearly all of the
// account's recent messages ended dead-lettered there. Braked false ends
// it. An advisory is good for TTL after it was sent; a stage repeats it
// every second while the brake lasts, so a stage that stops or dies stops
// braking the account within TTL.
type BrakeAdvisory struct {
	Stage   string `json:"stage"`
	Shard   int    `json:"shard"`
	Account string `json:"account"`
	Braked  bool   `json:"braked"`
	// Share is the account's moving share of dead-lettered messages.
	Share float64 `json:"share"`
	// Rate is the pace, in messages a second, the stage takes a braked
	// account's messages at: what an ingress should let through.
	Rate float64 `json:"rate"`
	// TTL is how long the advisory holds, in milliseconds.
	TTL int64 `json:"ttl_ms"`
}

// BrakeSubjectAll matches every brake advisory.
const BrakeSubjectAll = "shardflow.brake.>"

// BrakeSubject is the core NATS subject of the brake advisories for an
// account of a shard: shardflow.brake.<shard>.<account>.
func BrakeSubject(shard int, account string) string {
	return "shardflow.brake." + strconv.Itoa(shard) + "." + account
}

// announceEvery is how often a braked account is announced again;
// announceTTL how long one announcement holds (three missed ones).
const (
	announceEvery = time.Second
	announceTTL   = 3 * announceEvery
	// accountForget: an account whose moving share is under this and that
	// is not braked is forgotten (as if it had never failed).
	accountForget = 0.01
	// accountIdle: an account not seen for this long is forgotten too, so
	// the table holds only accounts that keep failing.
	accountIdle = time.Minute
)

// brakeWeight is each message's weight in the moving failure share: from
// 0, about 115 dead letters in a row engage a brake at 0.9; from 1, about 5
// successes release it.
const brakeWeight = 1.0 / 50

// brakeState is a consumer's failure average and its braked pace, and,
// with Announce, each failing account's own average.
type brakeState struct {
	cfg Brake
	mu  sync.Mutex
	share
	next  time.Time // earliest next braked fetch
	accts map[string]*accountShare
}

// share is a moving share of dead-lettered messages and whether it is over
// the brake's threshold.
type share struct {
	fail float64
	on   bool
}

// add records one outcome and reports whether on changed.
func (s *share) add(failed bool, above float64) bool {
	x := 0.0
	if failed {
		x = 1
	}
	s.fail += brakeWeight * (x - s.fail)
	was := s.on
	s.on = s.fail > above
	return was != s.on
}

type accountShare struct {
	share
	seen time.Time
}

// observe records a final outcome of an account's message and reports
// whether the consumer's brake changed and whether the account's did
// (with Announce).
func (b *brakeState) observe(account string, failed bool) (changed, acctChanged bool) {
	if b.cfg.Above <= 0 {
		return false, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	changed = b.add(failed, b.cfg.Above)
	if !b.cfg.Announce {
		return changed, false
	}
	a := b.accts[account]
	if a == nil {
		if !failed {
			return changed, false // an account that never failed costs nothing
		}
		if b.accts == nil {
			b.accts = map[string]*accountShare{}
		}
		a = &accountShare{}
		b.accts[account] = a
	}
	a.seen = time.Now()
	acctChanged = a.add(failed, b.cfg.Above)
	if !a.on && a.fail < accountForget {
		delete(b.accts, account)
	}
	return changed, acctChanged
}

// accountAdvisories returns an advisory for every braked account and
// forgets accounts idle for accountIdle.
func (b *brakeState) accountAdvisories(stage string, shard int) []BrakeAdvisory {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []BrakeAdvisory
	now := time.Now()
	for id, a := range b.accts {
		switch {
		case a.on:
			out = append(out, b.advisory(stage, shard, id, a.share))
		case now.Sub(a.seen) > accountIdle:
			delete(b.accts, id)
		}
	}
	return out
}

// accountAdvisory returns the advisory for one account's current state.
func (b *brakeState) accountAdvisory(stage string, shard int, account string) BrakeAdvisory {
	b.mu.Lock()
	defer b.mu.Unlock()
	var s share
	if a := b.accts[account]; a != nil {
		s = a.share
	}
	return b.advisory(stage, shard, account, s)
}

func (b *brakeState) advisory(stage string, shard int, account string, s share) BrakeAdvisory {
	return BrakeAdvisory{Stage: stage, Shard: shard, Account: account, Braked: s.on, Share: s.fail,
		Rate: b.cfg.Rate, TTL: announceTTL.Milliseconds()}
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

// noteOutcome feeds the brake and logs when it engages or lets go; an
// account whose brake changed is announced at once.
func (c *Consumer) noteOutcome(ctx context.Context, m *Msg, failed bool) {
	changed, acctChanged := c.brake.observe(m.Subject.Account, failed)
	if changed {
		if c.brake.braked() {
			c.log.WarnContext(ctx, "brake on: nearly every message ends dead-lettered; fetching slowly", "above", c.brake.cfg.Above, "rate", c.brake.cfg.Rate)
		} else {
			c.log.InfoContext(ctx, "brake off: messages succeed again")
		}
	}
	if acctChanged {
		a := c.brake.accountAdvisory(c.cfg.Stage, c.cfg.Shard, m.Subject.Account)
		if a.Braked {
			c.log.WarnContext(ctx, "account braked: nearly all its messages end dead-lettered; announcing it", "account", a.Account, "share", a.Share)
		} else {
			c.log.InfoContext(ctx, "account brake off: its messages succeed again", "account", a.Account)
		}
		c.announce(ctx, a)
	}
}

// announce publishes a brake advisory (core NATS: best effort; a lost one
// is repeated within a second, or expires).
func (c *Consumer) announce(ctx context.Context, a BrakeAdvisory) {
	data, err := json.Marshal(a)
	if err == nil {
		err = c.cfg.JetStream.Conn().Publish(BrakeSubject(a.Shard, a.Account), data)
	}
	if err != nil {
		c.log.WarnContext(ctx, "brake advisory not sent", "account", a.Account, "err", err)
	}
}

// announceLoop repeats the advisory of every braked account each
// announceEvery until ctx ends; then it ends them, so an ingress stops
// slowing accounts this consumer no longer judges.
func (c *Consumer) announceLoop(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(announceEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			for _, a := range c.brake.accountAdvisories(c.cfg.Stage, c.cfg.Shard) {
				a.Braked = false
				c.announce(context.WithoutCancel(ctx), a)
			}
			return
		case <-t.C:
			for _, a := range c.brake.accountAdvisories(c.cfg.Stage, c.cfg.Shard) {
				c.announce(ctx, a)
			}
		}
	}
}
