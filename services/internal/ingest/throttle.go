package ingest

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/time/rate"

	"github.com/shardflow/shardflow/streams"
)

// Brakes reports the accounts a stage brakes because nearly all their
// recent events ended dead-lettered there (streams.BrakeWatch).
type Brakes interface {
	Braked(account string) (rate float64, ok bool)
}

// brakeLimiter paces a braked account at the rate its stage takes its
// events.
type brakeLimiter struct {
	l    *rate.Limiter
	rate float64
}

// brakeLimiterFor returns the account's brake limiter while a stage brakes
// it, else nil (and forgets the one it had).
func (h *Handler) brakeLimiterFor(acct streams.Account) (*brakeLimiter, float64) {
	if h.cfg.Brakes == nil {
		return nil, 0
	}
	perS, ok := h.cfg.Brakes.Braked(acct.ID)
	h.mu.Lock()
	defer h.mu.Unlock()
	if !ok {
		delete(h.brakes, acct.ID)
		return nil, 0
	}
	perS = max(perS, 0.1) // a pace, never a stop: Retry-After stays finite
	b := h.brakes[acct.ID]
	if b == nil || b.rate != perS {
		// Burst: one full batch, so a batch is never refused for its size.
		// The bucket starts empty: the account gets the brake's pace from
		// the moment it is braked, not a batch's worth on top.
		burst := max(int(perS), streams.MaxBatch)
		b = &brakeLimiter{l: rate.NewLimiter(rate.Limit(perS), burst), rate: perS}
		b.l.AllowN(time.Now(), burst)
		h.brakes[acct.ID] = b
	}
	return b, perS
}

// admitBraked refuses, with 429 and Retry-After, a request of a braked
// account that its pace has no room for. It runs twice: before the body is
// decoded with n = 0 (is there room for anything? — so a braked client's
// requests cost no parsing or validation), and after, with the request's n
// events, which it takes from the pace.
//
// A braked account's events are refused, never dropped: its clients keep
// them and send them again later, as analytics SDKs do on 429. The stage
// still takes what it is sent at the brake's rate, so the account's data
// keeps flowing, and once its events succeed again the stage lets go of it
// and so does ingest (within a second or two).
func (h *Handler) admitBraked(w http.ResponseWriter, r *http.Request, acct streams.Account, n int) bool {
	b, perS := h.brakeLimiterFor(acct)
	if b == nil {
		return true
	}
	now := time.Now()
	var wait time.Duration
	if n == 0 {
		if tokens := b.l.TokensAt(now); tokens < 1 {
			wait = time.Duration((1 - tokens) / perS * float64(time.Second))
		}
	} else {
		res := b.l.ReserveN(now, n)
		if wait = res.DelayFrom(now); wait > 0 {
			res.CancelAt(now)
		}
	}
	if wait <= 0 {
		return true
	}
	if h.braked != nil {
		h.braked.Add(r.Context(), 1, metric.WithAttributes(attribute.Int("shard", acct.Shard)))
	}
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
	h.fail(w, r, http.StatusTooManyRequests, fmt.Sprintf(
		"account %s is slowed to %g events/s: nearly all its recent events were dead-lettered downstream (see GET /v1/deadletters?account=%s); retry later",
		acct.ID, perS, acct.ID), nil)
	return false
}
