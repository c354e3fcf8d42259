package ingest_test

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

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

// An account a stage brakes is paced at the stage's rate from the moment it
// is braked: nothing gets in on credit, what exceeds the pace is refused
// with 429, Retry-After and a message naming the pace — before its body is
// even parsed — and another account is never touched; once the stage lets
// go, so does ingest.
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

	// Braked at a tenth of an event a second: nothing gets in.
	b.set("acme", 0.1)
	before := f.stored(t, 0)
	r := g.post(t, "/v1/batch", "wk_acme", batch("a", 1), "basic")
	if r.code != http.StatusTooManyRequests || !strings.Contains(r.Error, "slowed to 0.1 events/s") {
		t.Fatalf("the first event of a braked account: %d %q; want 429 naming the pace (no burst on credit)", r.code, r.Error)
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

	// Braked at 500 events/s: a batch of 300 gets in once the pace has
	// room for it (about 0.6 s), and the next one straight after does not.
	b.set("acme", 500)
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := g.post(t, "/v1/batch", "wk_acme", batch("b", 300), "basic")
		if r.code == http.StatusOK {
			break
		}
		if r.code != http.StatusTooManyRequests || time.Now().After(deadline) {
			t.Fatalf("a batch within the pace of 500/s: %d %q", r.code, r.Error)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := g.post(t, "/v1/batch", "wk_acme", batch("c", 300), "basic"); r.code != http.StatusTooManyRequests || !strings.Contains(r.Error, "slowed to 500 events/s") {
		t.Fatalf("a second batch at once: %d %q; want 429 naming the pace", r.code, r.Error)
	}

	b.set("acme", 0)
	if r := g.post(t, "/v1/batch", "wk_acme", batch("d", 600), "basic"); r.code != http.StatusOK {
		t.Fatalf("after the stage let go: %d %q", r.code, r.Error)
	}
}
