package integration

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shardflow/shardflow/integration/harness"
	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/streams"
)

// TestKillNineMidBatch: SIGKILL the processor and then the sender while they
// hold unacked batches; restarted, every event has exactly one delivery
// (a webhook repeated after a kill carries the same Idempotency-Key, which
// is what the receiver dedupes on; Postgres holds one delivery row each).
func TestKillNineMidBatch(t *testing.T) {
	s := startPipeline(t, harness.Options{})
	a := s.CreateAccountWith(map[string]any{"id": "killed", "rate_limit": 1_000_000})
	recv := harness.NewReceiver(t, secrets(t, s))
	recv.Respond = func(*http.Request, *schemas.Outbound) int { time.Sleep(2 * time.Millisecond); return 200 }
	s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())
	const n = 5000
	for i := 0; i < n; i += 500 {
		if code, _ := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", "k", i, 500)); code != 200 {
			t.Fatal("send refused")
		}
	}
	inflight := func(stream string) int {
		c, err := s.JS.Consumer(context.Background(), stream, map[string]string{"INBOUND": streams.StageProcessor, "OUTBOUND": streams.StageSender}[stream[:len(stream)-2]])
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return info.NumAckPending
	}
	in := streams.StreamName(streams.KindInbound, a.Shard)
	out := streams.StreamName(streams.KindOutbound, a.Shard)
	harness.Eventually(t, 30*time.Second, func() error {
		if p := inflight(in); p < 10 {
			return fmt.Errorf("processor holds %d unacked", p)
		}
		return nil
	})
	t.Logf("SIGKILL processor holding %d unacked", inflight(in))
	s.Proc("processor").Kill()
	s.Proc("processor").Restart()
	harness.Eventually(t, 30*time.Second, func() error {
		if p := inflight(out); p < 10 {
			return fmt.Errorf("sender holds %d unacked", p)
		}
		return nil
	})
	t.Logf("SIGKILL sender holding %d unacked", inflight(out))
	s.Proc("sender").Kill()
	s.Proc("sender").Restart()
	harness.Eventually(t, 2*time.Minute, func() error {
		if d, _, _ := recv.Stats(); d < n {
			return fmt.Errorf("%d of %d delivered", d, n)
		}
		return nil
	})
	waitEmpty(t, s, a.Shard, 30*time.Second)
	distinct, total, bad := recv.Stats()
	if distinct != n || bad != 0 {
		t.Fatalf("%d distinct deliveries of %d (bad signatures %d)", distinct, n, bad)
	}
	if rows := s.Count(`SELECT count(*) FROM deliveries WHERE account_id = $1 AND status = 'delivered'`, a.ID); rows != n {
		t.Fatalf("%d delivery rows, want %d", rows, n)
	}
	if dl := deadLetters(t, s, "true"); dl != 0 {
		t.Fatalf("%d dead letters", dl)
	}
	t.Logf("%d events, %d distinct deliveries, %d repeated webhooks (same Idempotency-Key) after the kills", n, distinct, total-distinct)
}

// TestSIGTERMStopsInBoundedTime: each service stops within its timeout with
// in-flight work finished and acked, or left unacked — never acked without
// its effect (so nothing is lost across the restart).
func TestSIGTERMStopsInBoundedTime(t *testing.T) {
	s := startPipeline(t, harness.Options{})
	a := s.CreateAccountWith(map[string]any{"id": "termed", "rate_limit": 1_000_000})
	recv := harness.NewReceiver(t, secrets(t, s))
	recv.Respond = func(*http.Request, *schemas.Outbound) int { time.Sleep(20 * time.Millisecond); return 200 }
	s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())
	const n = 2000
	for i := 0; i < n; i += 500 {
		if code, _ := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", "t", i, 500)); code != 200 {
			t.Fatal("send refused")
		}
	}
	harness.Eventually(t, 30*time.Second, func() error {
		if d, _, _ := recv.Stats(); d < 100 {
			return fmt.Errorf("%d delivered", d)
		}
		return nil
	})
	const timeout = 10 * time.Second // SHARDFLOW_SHUTDOWN_TIMEOUT in the harness
	for _, name := range []string{"sender", "processor", "ingest", "deadletter", "accounts"} {
		took := s.Proc(name).Stop(timeout + 2*time.Second)
		if took > timeout {
			t.Errorf("%s took %v to stop (timeout %v)", name, took, timeout)
		}
		if code := s.Proc(name).ExitCode(); code != 0 {
			t.Errorf("%s exited with %d after SIGTERM:\n%s", name, code, s.Proc(name).Log())
		}
		t.Logf("%s stopped in %v", name, took.Round(time.Millisecond))
	}
	for _, name := range []string{"accounts", "ingest", "processor", "sender", "deadletter"} {
		s.Proc(name).Restart()
	}
	harness.Eventually(t, 2*time.Minute, func() error {
		if d, _, _ := recv.Stats(); d < n {
			return fmt.Errorf("%d of %d delivered after the restart", d, n)
		}
		return nil
	})
	// The webhook arrives before its row is marked delivered: wait for both.
	harness.Eventually(t, 30*time.Second, func() error {
		if rows := s.Count(`SELECT count(*) FROM deliveries WHERE account_id = $1 AND status = 'delivered'`, a.ID); rows != n {
			return fmt.Errorf("%d delivery rows, want %d", rows, n)
		}
		return nil
	})
	waitEmpty(t, s, a.Shard, 30*time.Second)
}

// TestReplayDeliversOnceAndOnlyOnce: dead letters replayed after the cause
// is fixed are delivered once; replaying them again sends nothing new.
func TestReplayDeliversOnceAndOnlyOnce(t *testing.T) {
	otlp := harness.NewOTLPReceiver(t)
	s := startPipeline(t, harness.Options{Env: otlp.Env()})
	a := s.CreateAccount("replayed")
	var broken atomic.Bool
	broken.Store(true)
	recv := harness.NewReceiver(t, secrets(t, s))
	recv.Respond = func(*http.Request, *schemas.Outbound) int {
		if broken.Load() {
			return 422 // e.g. the receiver rejects a payload it does not know yet
		}
		return 200
	}
	s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())
	if code, _ := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", "rp", 0, 40)); code != 200 {
		t.Fatal("send refused")
	}
	harness.Eventually(t, 30*time.Second, func() error {
		if n := deadLetters(t, s, "account_id = $1", a.ID); n != 40 {
			return fmt.Errorf("%d of 40 dead-lettered", n)
		}
		return nil
	})
	broken.Store(false) // the cause is fixed

	var dry map[string]any
	if code := s.Admin("POST", "/v1/deadletters/replay", map[string]any{"account": a.ID, "dry_run": true}, &dry); code != 200 || fmt.Sprint(dry["matched"]) != "40" {
		t.Fatalf("dry run: %d %v", code, dry)
	}
	if d, _, _ := recv.Stats(); d != 0 {
		t.Fatal("the dry run delivered something")
	}
	var res map[string]any
	if code := s.Admin("POST", "/v1/deadletters/replay", map[string]any{"account": a.ID}, &res); code != 200 || fmt.Sprint(res["replayed"]) != "40" {
		t.Fatalf("replay: %d %v", code, res)
	}
	harness.Eventually(t, 30*time.Second, func() error {
		if d, _, _ := recv.Stats(); d != 40 {
			return fmt.Errorf("%d of 40 replayed deliveries", d)
		}
		return nil
	})
	// Replaying again, by id, sends nothing new: the sender sees they were delivered.
	var list struct {
		DeadLetters []struct {
			ID      string `json:"id"`
			TraceID string `json:"trace_id"`
		} `json:"dead_letters"`
	}
	s.Admin("GET", "/v1/deadletters?account="+a.ID+"&limit=100", nil, &list)
	if len(list.DeadLetters) != 40 {
		t.Fatalf("listed %d dead letters", len(list.DeadLetters))
	}
	var ids []string
	for _, d := range list.DeadLetters {
		ids = append(ids, d.ID)
	}
	if code := s.Admin("POST", "/v1/deadletters/replay", map[string]any{"ids": ids}, &res); code != 200 {
		t.Fatalf("second replay: %d %v", code, res)
	}
	harness.Eventually(t, 30*time.Second, func() error {
		if n := s.Count(`SELECT count(*) FROM deliveries WHERE account_id = $1 AND attempts >= 2`, a.ID); n < 40 {
			return fmt.Errorf("second replay seen for %d of 40", n)
		}
		return nil
	})
	waitEmpty(t, s, a.Shard, 30*time.Second)
	if _, total, _ := recv.Stats(); total != 40 {
		t.Fatalf("%d successful webhooks, want exactly 40", total)
	}
	// The replayed message's trace links to the original.
	orig := list.DeadLetters[0].TraceID
	if orig == "" {
		t.Fatal("dead letter has no trace id")
	}
	harness.Eventually(t, 20*time.Second, func() error {
		for _, sp := range otlp.Spans() {
			for _, l := range sp.Links {
				if l == orig && sp.TraceID != orig {
					return nil
				}
			}
		}
		return fmt.Errorf("no span links to the original trace %s", orig)
	})
}

// TestShardIsolation: shard 0 flooded with poison while shard 1 runs normal
// traffic: all of shard 1's traffic is delivered meanwhile, none of it
// dead-lettered.
func TestShardIsolation(t *testing.T) {
	s := startPipeline(t, harness.Options{})
	var bad, good harness.Account
	for i := 0; good.ID == "" || bad.ID == ""; i++ {
		id := fmt.Sprintf("iso-%d", i)
		switch harness.ShardOf(id, s.Topo.Shards) {
		case 0:
			if bad.ID == "" {
				bad = s.CreateAccountWith(map[string]any{"id": id, "rate_limit": 1_000_000})
			}
		case 1:
			if good.ID == "" {
				good = s.CreateAccountWith(map[string]any{"id": id, "rate_limit": 1_000_000})
			}
		}
	}
	recv := harness.NewReceiver(t, secrets(t, s))
	s.SetTrigger(good.ID, "welcome", "Signed Up", recv.URL())
	// The poison account's client behaves as an analytics SDK does: a 429
	// means "later", and it sends the same batch again after Retry-After.
	var refused atomic.Int64
	flooded := make(chan error, 1)
	go func() {
		for i := 0; i < 10_000; i += 500 {
			for {
				code, body := s.Send("/v1/batch", bad.WriteKey, poisonBatch("p", i, 500))
				if code == 200 {
					break
				}
				if code != http.StatusTooManyRequests || !strings.Contains(body, "slowed") {
					flooded <- fmt.Errorf("poison batch %d: %d %s", i/500, code, body)
					return
				}
				refused.Add(1)
				time.Sleep(time.Second) // Retry-After is at least 1 s
			}
		}
		flooded <- nil
	}()
	// Nearly everything shard 0's processor handles is dead-lettered: its
	// brake engages, and shard 1's does not; ingest slows the poison
	// account at the source.
	harness.Eventually(t, 30*time.Second, func() error {
		m := s.Proc("processor").Metrics()
		if !braked(t, m, 0) {
			return fmt.Errorf("shard 0's processor is not braked")
		}
		if braked(t, m, 1) {
			t.Fatal("shard 1's processor is braked")
		}
		if refused.Load() == 0 {
			return fmt.Errorf("ingest has not refused the poison account yet")
		}
		return nil
	})
	start := time.Now()
	for i := 0; i < 2000; i += 100 {
		if code, body := s.Send("/v1/batch", good.WriteKey, harness.TrackBatch("Signed Up", "g", i, 100)); code != 200 {
			t.Fatalf("healthy account's send refused: %d %s", code, body)
		}
	}
	harness.Eventually(t, time.Minute, func() error {
		if d := recv.Account(good.ID); d < 2000 {
			return fmt.Errorf("shard 1: %d of 2000 delivered", d)
		}
		return nil
	})
	poisonLeft := s.StreamMsgs(streams.StreamName(streams.KindInbound, 0))
	t.Logf("shard 1 delivered 2000 in %v while shard 0 still had %d poison messages to go", time.Since(start).Round(time.Millisecond), poisonLeft)
	if n := s.StreamMsgs(streams.StreamName(streams.KindDeadLetter, 1)); n != 0 {
		t.Fatalf("%d dead letters on the healthy shard", n)
	}
	// Slowed, not lost: every poison event is taken in at the brake's pace
	// and ends dead-lettered.
	select {
	case err := <-flooded:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("the poison account's client could not send its 10000 events within 3 minutes")
	}
	harness.Eventually(t, 2*time.Minute, func() error {
		if n := deadLetters(t, s, "shard = 0"); n != 10_000 {
			return fmt.Errorf("shard 0: %d of 10000 poison dead-lettered", n)
		}
		return nil
	})
	t.Logf("ingest refused the poison account's batches %d times (429, slowed) on the way", refused.Load())
}

// braked reports whether the processor's metrics say its consumer of shard
// is braked.
func braked(t *testing.T, metrics string, shard int) bool {
	t.Helper()
	samples, err := parseProm(metrics)
	if err != nil {
		t.Fatal(err)
	}
	return sum(samples, "shardflow_stage_braked", map[string]string{"shard": strconv.Itoa(shard), "stage": "processor"}) == 1
}

// TestSlowReceiverDoesNotStallTheShard: account A's receiver hangs until the
// sender's timeout while B on the same shard delivers normally: B's messages
// are all delivered meanwhile; A's all delivered, once each, after its
// receiver recovers.
func TestSlowReceiverDoesNotStallTheShard(t *testing.T) {
	s := startPipeline(t, harness.Options{}, "SHARDFLOW_WEBHOOK_TIMEOUT=1s", "SHARDFLOW_BREAKER_COOLDOWN=2s")
	ids := harness.SameShardIDs("slow", 2, s.Topo.Shards)
	a := s.CreateAccountWith(map[string]any{"id": ids[0], "rate_limit": 1_000_000})
	b := s.CreateAccountWith(map[string]any{"id": ids[1], "rate_limit": 1_000_000})
	var hang atomic.Bool
	hang.Store(true)
	slow := harness.NewReceiver(t, secrets(t, s))
	slow.Respond = func(r *http.Request, _ *schemas.Outbound) int {
		if hang.Load() {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return 504
		}
		return 200
	}
	fast := harness.NewReceiver(t, secrets(t, s))
	s.SetTrigger(a.ID, "welcome", "Signed Up", slow.URL())
	s.SetTrigger(b.ID, "welcome", "Signed Up", fast.URL())
	for i := 0; i < 1000; i += 250 {
		if code, _ := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", "a", i, 250)); code != 200 {
			t.Fatal("send refused")
		}
	}
	start := time.Now()
	for i := 0; i < 1000; i += 100 {
		if code, _ := s.Send("/v1/batch", b.WriteKey, harness.TrackBatch("Signed Up", "b", i, 100)); code != 200 {
			t.Fatal("send refused")
		}
	}
	harness.Eventually(t, time.Minute, func() error {
		if d := fast.Account(b.ID); d < 1000 {
			return fmt.Errorf("B: %d of 1000 delivered while A's receiver hangs", d)
		}
		return nil
	})
	t.Logf("B delivered 1000 in %v while A's receiver hung", time.Since(start).Round(time.Millisecond))
	if d := slow.Account(a.ID); d != 0 {
		t.Fatalf("A delivered %d while hanging", d)
	}
	hang.Store(false)
	harness.Eventually(t, 2*time.Minute, func() error {
		if d := slow.Account(a.ID); d < 1000 {
			return fmt.Errorf("A: %d of 1000 delivered after recovery", d)
		}
		return nil
	})
	if dup := slow.Duplicates(); len(dup) != 0 {
		t.Fatalf("A delivered twice: %d keys", len(dup))
	}
	if n := deadLetters(t, s, "true"); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
}
