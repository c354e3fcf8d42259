package integration

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shardflow/shardflow/integration/harness"
	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/streams"
)

// poisonBatch builds identify events whose traits hold a NUL character:
// valid JSON that Postgres' jsonb can never store (SQLSTATE 22P05).
func poisonBatch(prefix string, from, n int) []byte {
	var b strings.Builder
	b.WriteString(`{"batch":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"type":"identify","userId":"p%d","messageId":"%s-%d","traits":{"name":"bad\u0000%d"}}`, from+i, prefix, from+i, from+i)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// mixedBatch interleaves n good track events and n poison identifies.
func mixedBatch(from, n int) []byte {
	var b strings.Builder
	b.WriteString(`{"batch":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"type":"track","userId":"u%d","event":"Signed Up","messageId":"good-%d"},`, from+i, from+i)
		fmt.Fprintf(&b, `{"type":"identify","userId":"p%d","messageId":"poison-%d","traits":{"name":"bad\u0000%d"}}`, from+i, from+i, from+i)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

func deadLetters(t *testing.T, s *harness.Stack, where string, args ...any) int {
	return s.Count("SELECT count(*) FROM dead_letters WHERE "+where, args...)
}

func waitEmpty(t *testing.T, s *harness.Stack, shard int, within time.Duration) {
	t.Helper()
	harness.Eventually(t, within, func() error {
		in := s.StreamMsgs(streams.StreamName(streams.KindInbound, shard))
		out := s.StreamMsgs(streams.StreamName(streams.KindOutbound, shard))
		if in+out != 0 {
			return fmt.Errorf("stage streams of shard %d hold %d inbound, %d outbound", shard, in, out)
		}
		return nil
	})
}

// TestPoisonFlood: 10,000 messages that always fail, mixed 1:1 with 10,000
// good ones on one shard: every poison message is dead-lettered and indexed
// (count, reason, attempts), every good one delivered exactly once, and the
// stage streams end empty.
func TestPoisonFlood(t *testing.T) {
	s := startPipeline(t, harness.Options{})
	a := s.CreateAccountWith(map[string]any{"id": "flooded", "rate_limit": 1_000_000})
	recv := harness.NewReceiver(t, secrets(t, s))
	s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())
	const n = 10_000
	for i := 0; i < n; i += 250 {
		if code, body := s.Send("/v1/batch", a.WriteKey, mixedBatch(i, 250)); code != 200 {
			t.Fatalf("send: %d %s", code, body)
		}
	}
	harness.Eventually(t, 3*time.Minute, func() error {
		d, _, _ := recv.Stats()
		dl := deadLetters(t, s, "account_id = $1", a.ID)
		if d < n || dl < n {
			return fmt.Errorf("%d of %d delivered, %d of %d dead letters indexed", d, n, dl, n)
		}
		return nil
	})
	waitEmpty(t, s, a.Shard, 30*time.Second)
	distinct, total, bad := recv.Stats()
	if distinct != n || total != n || bad != 0 {
		t.Fatalf("good: %d distinct, %d total, %d bad signatures", distinct, total, bad)
	}
	if got := deadLetters(t, s, "account_id = $1 AND stage = 'processor' AND error_class = $2 AND attempts = 1 AND error LIKE '%22P05%'", a.ID, streams.ClassPermanent); got != n {
		rows, _ := s.DB.Query(context.Background(), `SELECT stage, error_class, attempts, left(error, 120), count(*) FROM dead_letters WHERE account_id = $1 AND NOT (stage = 'processor' AND error_class = $2 AND attempts = 1 AND error LIKE '%22P05%') GROUP BY 1, 2, 3, 4`, a.ID, streams.ClassPermanent)
		var other []string
		for rows.Next() {
			var stage, class, errText string
			var attempts, count int
			_ = rows.Scan(&stage, &class, &attempts, &errText, &count)
			other = append(other, fmt.Sprintf("%d × %s/%s/%d: %s", count, stage, class, attempts, errText))
		}
		rows.Close()
		t.Fatalf("%d of %d dead letters carry stage, class, attempts and the SQLSTATE; the others: %v", got, n, other)
	}
	if got := s.StreamMsgs(streams.StreamName(streams.KindDeadLetter, a.Shard)); got != n {
		t.Fatalf("dead-letter stream holds %d, want %d", got, n)
	}
}

// TestCrashLoopIsDeadLetteredViaAdvisory: a message that makes the processor
// process exit every time is dead-lettered after MaxDeliver deliveries
// through the max-deliveries advisory, is gone from the stage stream, and
// the processor then runs normally.
func TestCrashLoopIsDeadLetteredViaAdvisory(t *testing.T) {
	s := harness.New(t, harness.Options{})
	s.Start("accounts")
	s.Start("ingest")
	s.Start("sender")
	s.Start("deadletter")
	a := s.CreateAccount("crashy")
	recv := harness.NewReceiver(t, secrets(t, s))
	s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())
	if code, _ := s.Send("/v1/track", a.WriteKey, []byte(`{"userId":"u","event":"Crash Me","messageId":"bomb"}`)); code != 200 {
		t.Fatal("send refused")
	}
	proc := s.Launch("processor", "SHARDFLOW_TEST_CRASH_EVENT=Crash Me")
	crashes := 0
	deadline := time.Now().Add(2 * time.Minute)
	for deadLetters(t, s, "account_id = $1", a.ID) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("not dead-lettered after %d crashes", crashes)
		}
		select {
		case <-proc.Exited():
			crashes++
			proc.Relaunch() // a supervisor (systemd, Kubernetes) would do this
		case <-time.After(100 * time.Millisecond):
		}
	}
	var cls string
	var attempts int
	if err := s.DB.QueryRow(context.Background(), `SELECT error_class, attempts FROM dead_letters WHERE account_id = $1`, a.ID).Scan(&cls, &attempts); err != nil {
		t.Fatal(err)
	}
	maxDeliver := s.Topo.Consumers[0].MaxDeliver
	if cls != streams.ClassMaxDeliver || attempts != maxDeliver || crashes < maxDeliver-1 {
		t.Fatalf("dead letter %s after %d attempts and %d crashes, want %s after %d", cls, attempts, crashes, streams.ClassMaxDeliver, maxDeliver)
	}
	waitEmpty(t, s, a.Shard, 10*time.Second)
	// The processor now runs normally.
	if code, _ := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", "after", 0, 20)); code != 200 {
		t.Fatal("send refused")
	}
	harness.Eventually(t, 30*time.Second, func() error {
		if d, _, _ := recv.Stats(); d != 20 {
			return fmt.Errorf("%d of 20 delivered after the crash loop", d)
		}
		return nil
	})
	t.Logf("processor crashed %d times; dead-lettered via the advisory after %d deliveries", crashes, attempts)
}

// TestPostgresOutage: the database refuses connections for 30 seconds under
// load. Nothing is lost, duplicated or dead-lettered, and everything is
// delivered within a minute of its return.
func TestPostgresOutage(t *testing.T) {
	s := startPipeline(t, harness.Options{OwnDatabase: true})
	a := s.CreateAccountWith(map[string]any{"id": "steady", "rate_limit": 1_000_000})
	recv := harness.NewReceiver(t, secrets(t, s))
	s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())

	ctx, cancel := context.WithCancel(context.Background())
	var sent atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i += 50 {
			if code, body := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", "o", i, 50)); code != 200 {
				t.Errorf("ingest refused during the outage (it needs no database): %d %s", code, body)
				return
			}
			sent.Add(50)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	harness.Eventually(t, 30*time.Second, func() error {
		if d, _, _ := recv.Stats(); d < 200 {
			return fmt.Errorf("warming up: %d delivered", d)
		}
		return nil
	})
	restore := s.StopDatabase()
	down := time.Now()
	harness.Eventually(t, 20*time.Second, func() error {
		for _, name := range []string{"processor", "sender"} {
			if s.Proc(name).Ready() {
				return fmt.Errorf("%s still reports ready with the database down", name)
			}
		}
		return nil
	})
	for time.Since(down) < 30*time.Second {
		time.Sleep(500 * time.Millisecond)
	}
	atOutageEnd, _, _ := recv.Stats()
	restore()
	back := time.Now()
	cancel()
	wg.Wait()
	harness.Eventually(t, time.Minute, func() error {
		if d, _, _ := recv.Stats(); int64(d) < sent.Load() {
			return fmt.Errorf("%d of %d delivered %v after the database returned", d, sent.Load(), time.Since(back).Round(time.Second))
		}
		return nil
	})
	t.Logf("%d events sent, %d delivered by the outage's end, all delivered %v after the database returned", sent.Load(), atOutageEnd, time.Since(back).Round(time.Millisecond))
	distinct, total, _ := recv.Stats()
	if int64(distinct) != sent.Load() || total != distinct {
		t.Fatalf("%d sent, %d distinct delivered, %d deliveries: duplicates %v", sent.Load(), distinct, total, recv.Duplicates())
	}
	if n := s.StreamMsgs(streams.StreamName(streams.KindDeadLetter, a.Shard)); n != 0 {
		t.Fatalf("%d dead letters because of an outage", n)
	}
	for _, name := range []string{"processor", "sender"} {
		if !s.Proc(name).Ready() {
			t.Fatalf("%s not ready again", name)
		}
	}
}

// TestReceiverOutage: the receiver answers 503 for 20 seconds, then 200:
// everything is delivered exactly once, nothing dead-lettered; a receiver
// answering 400 yields dead letters at once.
func TestReceiverOutage(t *testing.T) {
	s := startPipeline(t, harness.Options{}, "SHARDFLOW_BREAKER_COOLDOWN=1s")
	ids := harness.SameShardIDs("rcv", 2, s.Topo.Shards)
	a := s.CreateAccountWith(map[string]any{"id": ids[0], "rate_limit": 1_000_000})
	refuser := s.CreateAccountWith(map[string]any{"id": ids[1], "rate_limit": 1_000_000})
	var outage atomic.Bool
	outage.Store(true)
	recv := harness.NewReceiver(t, secrets(t, s))
	recv.Respond = func(r *http.Request, out *schemas.Outbound) int {
		if outage.Load() {
			return 503
		}
		return 200
	}
	s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())
	const n = 500
	for i := 0; i < n; i += 100 {
		if code, _ := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", "r", i, 100)); code != 200 {
			t.Fatal("send refused")
		}
	}
	time.Sleep(20 * time.Second) // the outage's length is the scenario, not a wait for a result
	if d, _, _ := recv.Stats(); d != 0 {
		t.Fatalf("%d delivered during the outage", d)
	}
	outage.Store(false)
	harness.Eventually(t, time.Minute, func() error {
		if d, _, _ := recv.Stats(); d < n {
			return fmt.Errorf("%d of %d delivered after the receiver recovered", d, n)
		}
		return nil
	})
	if distinct, total, _ := recv.Stats(); distinct != n || total != n {
		t.Fatalf("%d distinct, %d total", distinct, total)
	}
	if got := deadLetters(t, s, "true"); got != 0 {
		t.Fatalf("%d dead letters because of an outage", got)
	}

	// A receiver that refuses (400) yields dead letters at once.
	refusing := harness.NewReceiver(t, secrets(t, s))
	refusing.Respond = func(*http.Request, *schemas.Outbound) int { return 400 }
	s.SetTrigger(refuser.ID, "welcome", "Signed Up", refusing.URL())
	if code, _ := s.Send("/v1/batch", refuser.WriteKey, harness.TrackBatch("Signed Up", "x", 0, 10)); code != 200 {
		t.Fatal("send refused")
	}
	harness.Eventually(t, 30*time.Second, func() error {
		if got := deadLetters(t, s, "account_id = $1 AND error_class = $2 AND attempts = 1", refuser.ID, streams.ClassReceiver4xx); got != 10 {
			return fmt.Errorf("%d of 10 dead-lettered after one attempt", got)
		}
		return nil
	})
	if r := refusing.Requests(); r != 10 {
		t.Fatalf("a refused message was sent %d times (want once each)", r)
	}
}
