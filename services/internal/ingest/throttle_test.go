package ingest_test

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/shardflow/shardflow/services/internal/ingest"
	"github.com/shardflow/shardflow/streams"
)

// brakes is a settable ingest.Brakes.
type brakes struct {
	mu sync.Mutex
	m  map[string]float64
}

func (b *brakes) set(account string, rate float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rate == 0 {
		delete(b.m, account)
		return
	}
	b.m[account] = rate
}

func (b *brakes) Braked(account string) (float64, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.m[account]
	return r, ok
}

// An account a stage brakes is paced at the stage's rate: what fits is
// stored, the rest refused with 429, Retry-After and a message naming the
// rate — before its body is even parsed — and another account is never
// touched; once the stage lets go, so does ingest.
func TestBrakedAccountIsPacedAtItsStagesRate(t *testing.T) {
	f := setup(t)
	b := &brakes{m: map[string]float64{}}
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: f.js, Topology: f.topo})
	h, err := ingest.New(ingest.Config{Directory: f.dir, Publisher: pub, Topology: f.topo, DefaultRate: 1000, Brakes: b})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h.Routes())
	defer srv.Close()
	g := &fixture{srv: srv, js: f.js, dir: f.dir, topo: f.topo}

	batch := func(prefix string, n int) string {
		var s strings.Builder
		s.WriteString(`{"batch":[`)
		for i := range n {
			if i > 0 {
				s.WriteByte(',')
			}
			s.WriteString(`{"type":"track","userId":"u","event":"E","messageId":"` + prefix + strconv.Itoa(i) + `"}`)
		}
		s.WriteString(`]}`)
		return s.String()
	}
	b.set("acme", 0.1) // a tenth of an event a second: the burst (one full batch), then nothing
	if r := g.post(t, "/v1/batch", "wk_acme", batch("a", 600), "basic"); r.code != http.StatusOK {
		t.Fatalf("the first batch of a braked account (within its burst): %d %s", r.code, r.Error)
	}
	r := g.post(t, "/v1/batch", "wk_acme", batch("b", 600), "basic")
	if r.code != http.StatusTooManyRequests || !strings.Contains(r.Error, "slowed to 0.1 events/s") {
		t.Fatalf("over the braked pace: %d %q; want 429 naming the pace", r.code, r.Error)
	}
	if r := g.post(t, "/v1/batch", "wk_acme", batch("c", 400), "basic"); r.code != http.StatusOK {
		t.Fatalf("the rest of the burst: %d %s", r.code, r.Error)
	}
	before := f.stored(t, 0)
	r = g.post(t, "/v1/batch", "wk_acme", batch("d", 1), "basic")
	if r.code != http.StatusTooManyRequests {
		t.Fatalf("with the pace used up: %d %q; want 429", r.code, r.Error)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
		t.Fatalf("Retry-After %q, want whole seconds ≥ 1", r.header.Get("Retry-After"))
	}
	// Refused before parsing: a body that is not even JSON gets the 429,
	// not a 400.
	if r := g.post(t, "/v1/batch", "wk_acme", "{not json", "basic"); r.code != http.StatusTooManyRequests {
		t.Fatalf("a braked account's malformed body: %d %q; want 429 before any parsing", r.code, r.Error)
	}
	if r := g.post(t, "/v1/track", "wk_acme", `{"userId":"u","event":"E"}`, "basic"); r.code != http.StatusTooManyRequests {
		t.Fatalf("a braked account's single event: %d %q; want 429", r.code, r.Error)
	}
	if got := f.stored(t, 0); got != before {
		t.Fatalf("%d events stored while refused", got-before)
	}
	// Another account of the same shard is not slowed.
	if r := g.post(t, "/v1/batch", "wk_slow", batch("s", 1), "basic"); r.code != http.StatusOK {
		t.Fatalf("an account no stage brakes: %d %q", r.code, r.Error)
	}
	b.set("acme", 0)
	if r := g.post(t, "/v1/batch", "wk_acme", batch("e", 600), "basic"); r.code != http.StatusOK {
		t.Fatalf("after the stage let go: %d %q", r.code, r.Error)
	}
}
