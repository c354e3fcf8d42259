package streams

import (
	"cmp"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// BrakeWatch keeps the accounts that some stage currently brakes, from the
// stages' brake advisories (Brake.Announce). An ingress asks it per request
// (Braked) and slows those accounts at the source.
//
// It is soft state: an advisory holds for its TTL and the stages repeat it
// every second, so a lost advisory, a stage that dies or a watcher that
// starts late all settle within a few seconds, and no account stays slowed
// once no stage judges it.
type BrakeWatch struct {
	sub *nats.Subscription
	log *slog.Logger
	now func() time.Time

	mu sync.Mutex
	// accounts maps an account to the advisories of the stages braking it.
	accounts map[string]map[string]brakeEntry
}

type brakeEntry struct {
	rate  float64
	until time.Time
}

// WatchBrakes subscribes to every brake advisory on nc until Close.
func WatchBrakes(nc *nats.Conn, log *slog.Logger) (*BrakeWatch, error) {
	w := &BrakeWatch{log: cmp.Or(log, slog.Default()), now: time.Now, accounts: map[string]map[string]brakeEntry{}}
	sub, err := nc.Subscribe(BrakeSubjectAll, func(m *nats.Msg) {
		var a BrakeAdvisory
		if err := json.Unmarshal(m.Data, &a); err != nil || a.Account == "" {
			w.log.Warn("brake advisory ignored: not one", "subject", m.Subject, "err", err)
			return
		}
		w.apply(a)
	})
	if err != nil {
		return nil, fmt.Errorf("streams: watch brakes: %w", err)
	}
	w.sub = sub
	return w, nil
}

// apply records an advisory.
func (w *BrakeWatch) apply(a BrakeAdvisory) {
	key := fmt.Sprintf("%s/%d", a.Stage, a.Shard)
	w.mu.Lock()
	defer w.mu.Unlock()
	stages := w.accounts[a.Account]
	if !a.Braked {
		delete(stages, key)
		if len(stages) == 0 {
			delete(w.accounts, a.Account)
		}
		return
	}
	if stages == nil {
		stages = map[string]brakeEntry{}
		w.accounts[a.Account] = stages
	}
	ttl := time.Duration(a.TTL) * time.Millisecond
	if ttl <= 0 {
		ttl = announceTTL
	}
	stages[key] = brakeEntry{rate: a.Rate, until: w.now().Add(ttl)}
}

// Braked reports whether a stage brakes account, and the slowest rate (in
// messages a second) any stage braking it takes its messages at.
func (w *BrakeWatch) Braked(account string) (rate float64, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	stages := w.accounts[account]
	if len(stages) == 0 {
		return 0, false
	}
	now := w.now()
	for key, e := range stages {
		if now.After(e.until) {
			delete(stages, key)
			continue
		}
		if !ok || e.rate < rate {
			rate, ok = e.rate, true
		}
	}
	if len(stages) == 0 {
		delete(w.accounts, account)
	}
	return rate, ok
}

// Close ends the subscription.
func (w *BrakeWatch) Close() {
	if w.sub != nil {
		_ = w.sub.Unsubscribe()
	}
}
