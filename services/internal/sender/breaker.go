package sender

import (
	"sync"
	"time"
)

// breakers is a circuit breaker per destination (scheme://host:port). A
// destination that fails Threshold times in a row (5xx, 408, 429, timeouts,
// connection errors) is opened for Cooldown; then one probe is let through:
// success closes it, failure opens it again. While a destination is open
// its messages are deferred (they neither use up attempts nor hold slots
// the other destinations of the shard need); if every destination seen
// recently is open, the receivers are down for everyone and the sender
// reports Unavailable, which pauses fetching.
type breakers struct {
	threshold int
	cooldown  time.Duration
	mu        sync.Mutex
	dest      map[string]*breaker
}

type breaker struct {
	failures  int
	openUntil time.Time
	probing   bool
	lastSeen  time.Time
}

// state says what to do with a message for dest now.
type state int

const (
	stateClosed state = iota // send
	stateProbe               // send: the one probe of a half-open breaker
	stateOpen                // do not send
)

func newBreakers(threshold int, cooldown time.Duration) *breakers {
	return &breakers{threshold: threshold, cooldown: cooldown, dest: map[string]*breaker{}}
}

func (b *breakers) get(dest string, now time.Time) *breaker {
	br, ok := b.dest[dest]
	if !ok {
		br = &breaker{}
		b.dest[dest] = br
	}
	br.lastSeen = now
	return br
}

// admit says whether a message for dest may be sent now.
func (b *breakers) admit(dest string) state {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	br := b.get(dest, now)
	switch {
	case br.failures < b.threshold:
		return stateClosed
	case now.Before(br.openUntil) || br.probing:
		return stateOpen
	default:
		br.probing = true
		return stateProbe
	}
}

// result records the outcome of a send; it returns true if dest is (now) open.
func (b *breakers) result(dest string, ok bool) bool {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	br := b.get(dest, now)
	br.probing = false
	if ok {
		br.failures, br.openUntil = 0, time.Time{}
		return false
	}
	br.failures++
	if br.failures >= b.threshold {
		br.openUntil = now.Add(b.cooldown)
		return true
	}
	return false
}

// retryIn is how long until dest may be probed.
func (b *breakers) retryIn(dest string) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	br := b.get(dest, time.Now())
	return max(time.Until(br.openUntil), 0)
}

// allOpen reports whether every destination seen in the last window is
// open, and there were at least two: the receivers are down for everyone
// (the sender's own network, say). One failing destination alone is that
// destination's problem, whatever else is in flight.
func (b *breakers) allOpen(window time.Duration) bool {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := 0
	for _, br := range b.dest {
		if now.Sub(br.lastSeen) > window {
			continue
		}
		seen++
		if br.failures < b.threshold {
			return false
		}
	}
	return seen >= 2
}
