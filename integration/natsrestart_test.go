package integration

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shardflow/shardflow/integration/harness"
	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/streams"
)

// outageProbe is one single event sent while NATS is down, never retried.
type outageProbe struct {
	id         string
	start, end time.Time
	code       int
	body       string
}

type outageProbes struct {
	mu     sync.Mutex
	probes []outageProbe
}

// run sends a probe every `every` (each in its own goroutine, so a slow
// answer does not hold the next) until stop; the returned channel closes
// once every probe has been answered.
func (ps *outageProbes) run(s *harness.Stack, writeKey string, every time.Duration, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		defer wg.Wait()
		for i := 0; ; i++ {
			id := fmt.Sprintf("probe-%d", i)
			wg.Go(func() {
				p := outageProbe{id: id, start: time.Now()}
				body := fmt.Sprintf(`{"type":"track","userId":"p%d","event":"Signed Up","messageId":%q}`, i, id)
				p.code, p.body = s.Send("/v1/track", writeKey, []byte(body))
				p.end = time.Now()
				ps.mu.Lock()
				ps.probes = append(ps.probes, p)
				ps.mu.Unlock()
			})
			select {
			case <-stop:
				return
			case <-time.After(every):
			}
		}
	}()
	return done
}

func (ps *outageProbes) all() []outageProbe {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return append([]outageProbe(nil), ps.probes...)
}

func (ps *outageProbes) count(f func(outageProbe) bool) int {
	n := 0
	for _, p := range ps.all() {
		if f(p) {
			n++
		}
	}
	return n
}

// hookKeyCounts counts webhook deliveries per Idempotency-Key
// (<account>:<generation>:<messageId>:<trigger>).
type hookKeyCounts struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *hookKeyCounts) add(key string) {
	h.mu.Lock()
	h.n[key]++
	h.mu.Unlock()
}

// tally returns the distinct batch events delivered, the accepted probes
// delivered, and the refused probes delivered anyway.
func (h *hookKeyCounts) tally(ps *outageProbes) (batchKeys, okProbes, ghosts int) {
	code := map[string]int{}
	for _, p := range ps.all() {
		code[p.id] = p.code
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for key := range h.n {
		parts := strings.Split(key, ":")
		if len(parts) < 4 {
			continue
		}
		msgID := parts[2]
		switch {
		case strings.HasPrefix(msgID, "nr-"):
			batchKeys++
		case strings.HasPrefix(msgID, "probe-"):
			if code[msgID] == 200 {
				okProbes++
			} else {
				ghosts++
			}
		}
	}
	return
}

// batchAttempt is one POST /v1/batch.
type batchAttempt struct {
	batch      int
	start, end time.Time
	code       int
	body       string
}

// retryingBatchClient sends batches of track events the way a Segment client does:
// a refused batch is sent again, same messageIds, until it is accepted.
type retryingBatchClient struct {
	t        *testing.T
	s        *harness.Stack
	writeKey string
	size     int

	mu       sync.Mutex
	attempts []batchAttempt
	accepted int // batches answered 200
	stop     chan struct{}
	done     chan struct{}
	err      error
}

func startRetryingBatchClient(t *testing.T, s *harness.Stack, writeKey string, size int, every time.Duration) *retryingBatchClient {
	b := &retryingBatchClient{t: t, s: s, writeKey: writeKey, size: size, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-b.stop:
				return
			case <-tick.C:
			}
			body := harness.TrackBatch("Signed Up", "nr", n*size, size)
			giveUp := time.Now().Add(45 * time.Second)
			for {
				a := batchAttempt{batch: n, start: time.Now()}
				a.code, a.body = s.Send("/v1/batch", writeKey, body)
				a.end = time.Now()
				b.mu.Lock()
				b.attempts = append(b.attempts, a)
				if a.code == 200 {
					b.accepted++
				}
				b.mu.Unlock()
				if a.code == 200 {
					break
				}
				if time.Now().After(giveUp) {
					b.mu.Lock()
					b.err = fmt.Errorf("batch %d still refused after 45s: %d %s", n, a.code, a.body)
					b.mu.Unlock()
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
	}()
	t.Cleanup(func() { b.halt(60 * time.Second) })
	return b
}

// halt stops the client after its current batch is accepted.
func (b *retryingBatchClient) halt(within time.Duration) error {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	select {
	case <-b.done:
	case <-time.After(within):
		return fmt.Errorf("batch client did not stop within %v", within)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// snapshot returns a copy of the attempts and the accepted batch count.
func (b *retryingBatchClient) snapshot() ([]batchAttempt, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]batchAttempt(nil), b.attempts...), b.accepted
}

// TestNATSRestartUnderServices (T3): restart the NATS server (same port and
// store) under the running services while events flow end to end. While it
// is down ingest refuses events with 503, never 200; once it is back every
// service continues without being restarted, is ready again, and every
// accepted event is delivered exactly once.
func TestNATSRestartUnderServices(t *testing.T) {
	s := startPipeline(t, harness.Options{SyncAlways: true})
	a := s.CreateAccountWith(map[string]any{"id": "restarted", "rate_limit": 1_000_000})
	recv := harness.NewReceiver(t, secrets(t, s))
	hooks := &hookKeyCounts{n: map[string]int{}}
	recv.Respond = func(r *http.Request, _ *schemas.Outbound) int {
		hooks.add(r.Header.Get("Idempotency-Key"))
		return 200
	}
	s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())
	procs := []string{"accounts", "ingest", "processor", "sender", "deadletter"}

	const size = 20
	client := startRetryingBatchClient(t, s, a.WriteKey, size, 50*time.Millisecond)
	harness.Eventually(t, 30*time.Second, func() error {
		if d, _, _ := recv.Stats(); d < 200 {
			return fmt.Errorf("%d webhooks before the restart, want 200", d)
		}
		return nil
	})

	stopAt := time.Now()
	s.StopNATS()
	downAt := time.Now()
	t.Logf("nats stopped (shutdown took %v)", downAt.Sub(stopAt).Round(time.Millisecond))

	// Probes: single events sent every 250ms while NATS is down, each on
	// its own and never retried, so a refused event that was nevertheless
	// stored (an "unknown" in Jepsen's terms) shows up as a delivered probe.
	probes := &outageProbes{}
	probeStop := make(chan struct{})
	probesDone := probes.run(s, a.WriteKey, 250*time.Millisecond, probeStop)

	// While NATS is down: ingest reports not ready, and refuses events
	// with 503 (the client's retries keep arriving).
	harness.Eventually(t, 10*time.Second, func() error {
		if s.Proc("ingest").Ready() {
			return fmt.Errorf("ingest still ready with NATS down")
		}
		return nil
	})
	harness.Eventually(t, 20*time.Second, func() error {
		refused := probes.count(func(p outageProbe) bool { return p.code == 503 })
		if refused < 3 {
			return fmt.Errorf("%d probes refused with 503 so far (down %v)", refused, time.Since(downAt).Round(time.Millisecond))
		}
		return nil
	})
	for _, name := range procs {
		select {
		case <-s.Proc(name).Exited():
			t.Fatalf("%s exited while NATS was down (code %d):\n%s", name, s.Proc(name).ExitCode(), s.Proc(name).Log())
		default:
		}
	}

	close(probeStop)
	startAt := time.Now()
	s.StartNATS()
	t.Logf("nats restarted after %v down", startAt.Sub(downAt).Round(time.Millisecond))
	<-probesDone

	// Nothing was accepted while the server was down: a request sent after
	// the server was gone and answered before it was back must be a 503.
	// (One answered 200 after the restart is fine: its buffered publish
	// reached the restarted server within the publish timeout, and it must
	// then be delivered like any accepted event.)
	codes := map[int]int{}
	judge := func(what string, start, end time.Time, code int, body string) {
		if !start.After(downAt) || !end.Before(startAt) {
			return
		}
		codes[code]++
		if code != 503 {
			t.Errorf("%s sent at down%+v answered %d (%s) at down%+v while NATS was down, want 503",
				what, start.Sub(downAt).Round(time.Millisecond), code, strings.TrimSpace(body), end.Sub(downAt).Round(time.Millisecond))
		}
	}
	atts, _ := client.snapshot()
	for _, at := range atts {
		judge(fmt.Sprintf("batch %d", at.batch), at.start, at.end, at.code, at.body)
	}
	for _, p := range probes.all() {
		judge("probe "+p.id, p.start, p.end, p.code, p.body)
	}
	t.Logf("answers to requests sent and answered while NATS was down: %v", codes)

	// The services continue without a restart: accepted after the restart.
	harness.Eventually(t, 30*time.Second, func() error {
		atts, _ := client.snapshot()
		n := 0
		for _, at := range atts {
			if at.start.After(startAt) && at.code == 200 {
				n++
			}
		}
		if n < 10 {
			return fmt.Errorf("%d batches accepted after the restart", n)
		}
		return nil
	})
	if err := client.halt(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	atts, accepted := client.snapshot()
	firstAfter := time.Time{}
	retried := 0
	for _, at := range atts {
		if at.code != 200 {
			retried++
		}
		if at.code == 200 && at.start.After(startAt) && firstAfter.IsZero() {
			firstAfter = at.end
		}
	}
	events := accepted * size
	t.Logf("%d batches (%d events) accepted, %d refused attempts retried; first accepted %v after the restart",
		accepted, events, retried, firstAfter.Sub(startAt).Round(time.Millisecond))

	// Every accepted event is delivered, once.
	probesOK := probes.count(func(p outageProbe) bool { return p.code == 200 })
	probesRefused := probes.count(func(p outageProbe) bool { return p.code == 503 })
	for _, p := range probes.all() {
		if p.code != 200 && p.code != 503 {
			t.Errorf("probe %s answered %d (%s), want 200 or 503", p.id, p.code, strings.TrimSpace(p.body))
		}
	}
	harness.Eventually(t, 60*time.Second, func() error {
		batchKeys, okProbes, _ := hooks.tally(probes)
		if batchKeys < events || okProbes < probesOK {
			return fmt.Errorf("%d of %d batch events and %d of %d accepted probes delivered", batchKeys, events, okProbes, probesOK)
		}
		return nil
	})
	harness.Eventually(t, 30*time.Second, func() error {
		n := s.StreamMsgs(streams.StreamName(streams.KindInbound, a.Shard)) + s.StreamMsgs(streams.StreamName(streams.KindOutbound, a.Shard))
		if n != 0 {
			return fmt.Errorf("%d messages left in the stage streams", n)
		}
		return nil
	})
	batchKeys, okProbes, ghosts := hooks.tally(probes)
	t.Logf("probes: %d sent, %d accepted (all delivered: %d), %d refused with 503 of which %d were stored and delivered anyway",
		len(probes.all()), probesOK, okProbes, probesRefused, ghosts)
	if ghosts > 0 {
		// Ingest connects without a reconnect buffer (service.StartEdge), so
		// a publish refused while NATS is down is never flushed to the
		// restarted server behind the client's back.
		t.Errorf("%d events answered 503 while NATS was down were stored after the restart", ghosts)
	}
	if batchKeys != events {
		t.Errorf("%d batch events delivered, want %d", batchKeys, events)
	}
	distinct, total, bad := recv.Stats()
	events += okProbes + ghosts
	dups := recv.Duplicates()
	if len(dups) > 0 {
		keys := make([]string, 0, len(dups))
		for k, n := range dups {
			keys = append(keys, fmt.Sprintf("%s×%d", k, n))
		}
		sort.Strings(keys)
		t.Logf("repeated webhooks: %v", keys[:min(len(keys), 20)])
	}
	if distinct != events || total != events || bad != 0 {
		t.Errorf("webhooks: %d distinct, %d total, %d bad signatures; want %d each (0 bad)", distinct, total, bad, events)
	}
	if rows := s.Count(`SELECT count(*) FROM deliveries WHERE account_id = $1 AND status = 'delivered'`, a.ID); rows != events {
		t.Errorf("%d delivery rows, want %d", rows, events)
	}
	if dl := s.StreamMsgs(streams.StreamName(streams.KindDeadLetter, a.Shard)); dl != 0 {
		t.Errorf("%d dead letters", dl)
	}

	// Every service is ready again and none exited.
	harness.Eventually(t, 30*time.Second, func() error {
		for _, name := range procs {
			p := s.Proc(name)
			select {
			case <-p.Exited():
				return fmt.Errorf("%s exited (code %d)", name, p.ExitCode())
			default:
			}
			if !p.Ready() {
				return fmt.Errorf("%s not ready", name)
			}
		}
		return nil
	})
	for _, name := range procs {
		p := s.Proc(name)
		t.Logf("%s: %d disconnects, %d reconnects logged", name, len(p.LogLines("nats disconnected")), len(p.LogLines("nats reconnected")))
		if len(p.LogLines("nats reconnected")) == 0 {
			t.Errorf("%s never logged a reconnect", name)
		}
	}
}
