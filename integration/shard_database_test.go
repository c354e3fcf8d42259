package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shardflow/shardflow/integration/harness"
	"github.com/shardflow/shardflow/streams"
)

// shardOutage is how long shard 0's database is down.
const shardOutage = 30 * time.Second

// idOnShard returns an account id starting with prefix that lands on shard.
func idOnShard(prefix string, shard, shards int) string {
	for i := 0; ; i++ {
		if id := fmt.Sprintf("%s-%d", prefix, i); harness.ShardOf(id, shards) == shard {
			return id
		}
	}
}

// steadyTraffic sends batches of n "Signed Up" events for an account every
// 100ms until ctx ends, counting what ingest accepted in sent.
func steadyTraffic(ctx context.Context, t *testing.T, s *harness.Stack, wg *sync.WaitGroup, a harness.Account, prefix string, sent *atomic.Int64) {
	const n = 20
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i += n {
			if code, body := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", prefix, i, n)); code != 200 {
				t.Errorf("ingest refused %s's batch (it needs no database): %d %s", a.ID, code, body)
				return
			}
			sent.Add(n)
			time.Sleep(100 * time.Millisecond)
		}
	}()
}

// notReadyForShard0Only checks what a stage's /readyz says while shard 0's
// database is down: not ready, a failing check naming shard 0's database,
// and nothing failing about shard 1.
func notReadyForShard0Only(p *harness.Proc) error {
	ready, failed := p.Readiness()
	if ready {
		return fmt.Errorf("%s still reports ready with shard 0's database down", p.Name)
	}
	if msg, ok := failed["postgres-shard-0"]; !ok || !strings.Contains(msg, "shard 0") {
		return fmt.Errorf("%s is not ready, but no check names shard 0's database: %v", p.Name, failed)
	}
	for name, msg := range failed {
		if strings.HasSuffix(name, "-1") || strings.Contains(msg, "shard 1") {
			return fmt.Errorf("%s reports shard 1 failing (%s: %s) while only shard 0's database is down", p.Name, name, msg)
		}
	}
	return nil
}

// TestShardDatabaseOutageIsolated: shards 0 and 1 keep their rows in two
// databases of their own. Shard 0's database goes away for 30 s under steady
// traffic to both: shard 1 keeps delivering everything sent to it, processor
// and sender report not-ready naming shard 0, nothing is dead-lettered; once
// the database returns, shard 0's backlog is delivered within a minute, and
// every event exactly once. The rows land in the databases configured.
func TestShardDatabaseOutageIsolated(t *testing.T) {
	s := startPipeline(t, harness.Options{ShardDatabases: []int{0, 1}})
	a0 := s.CreateAccountWith(map[string]any{"id": idOnShard("dbout", 0, s.Topo.Shards), "rate_limit": 1_000_000})
	a1 := s.CreateAccountWith(map[string]any{"id": idOnShard("dbok", 1, s.Topo.Shards), "rate_limit": 1_000_000})
	recv := harness.NewReceiver(t, secrets(t, s))
	for _, a := range []harness.Account{a0, a1} {
		s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())
		identify := []byte(`{"batch":[{"type":"identify","userId":"p1","messageId":"who-1","traits":{"plan":"pro"}}]}`)
		if code, body := s.Send("/v1/batch", a.WriteKey, identify); code != 200 {
			t.Fatalf("identify for %s: %d %s", a.ID, code, body)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sent0, sent1 atomic.Int64
	var wg sync.WaitGroup
	steadyTraffic(ctx, t, s, &wg, a0, "s0", &sent0)
	steadyTraffic(ctx, t, s, &wg, a1, "s1", &sent1)
	harness.Eventually(t, 30*time.Second, func() error {
		if d0, d1 := recv.Account(a0.ID), recv.Account(a1.ID); d0 < 100 || d1 < 100 {
			return fmt.Errorf("warming up: %d and %d delivered", d0, d1)
		}
		return nil
	})

	restore := s.StopShardDatabase(0)
	down := time.Now()
	harness.Eventually(t, 20*time.Second, func() error {
		for _, name := range []string{"processor", "sender"} {
			if err := notReadyForShard0Only(s.Proc(name)); err != nil {
				return err
			}
		}
		return nil
	})
	// Every few seconds of the outage, everything sent to shard 1 so far
	// must arrive within 10 s, while shard 0's database is still down.
	checkpoints := 0
	for time.Since(down) < shardOutage {
		want := sent1.Load()
		harness.Eventually(t, 10*time.Second, func() error {
			if d := recv.Account(a1.ID); int64(d) < want {
				return fmt.Errorf("shard 1 during shard 0's database outage (%v in): %d of %d delivered",
					time.Since(down).Round(time.Second), d, want)
			}
			return nil
		})
		checkpoints++
		time.Sleep(3 * time.Second) // paces the checkpoints
	}
	for _, name := range []string{"processor", "sender"} {
		if err := notReadyForShard0Only(s.Proc(name)); err != nil {
			t.Fatalf("at the outage's end: %v", err)
		}
	}
	atOutageEnd0, atOutageEnd1 := recv.Account(a0.ID), recv.Account(a1.ID)
	restore()
	back := time.Now()
	cancel()
	wg.Wait()

	harness.Eventually(t, time.Minute, func() error {
		d0, d1 := recv.Account(a0.ID), recv.Account(a1.ID)
		if int64(d0) < sent0.Load() || int64(d1) < sent1.Load() {
			return fmt.Errorf("%v after shard 0's database returned: shard 0 %d of %d delivered, shard 1 %d of %d",
				time.Since(back).Round(time.Second), d0, sent0.Load(), d1, sent1.Load())
		}
		return nil
	})
	t.Logf("outage %v, %d shard 1 checkpoints met; sent shard 0 %d (delivered %d by the outage's end), shard 1 %d (%d); all delivered %v after the database returned",
		back.Sub(down).Round(time.Second), checkpoints, sent0.Load(), atOutageEnd0, sent1.Load(), atOutageEnd1, time.Since(back).Round(time.Millisecond))

	// Exactly once: let any stray redelivery show itself first.
	waitEmpty(t, s, a0.Shard, 30*time.Second)
	waitEmpty(t, s, a1.Shard, 30*time.Second)
	distinct, total, bad := recv.Stats()
	if want := sent0.Load() + sent1.Load(); int64(distinct) != want || total != distinct || bad != 0 {
		t.Fatalf("%d sent, %d distinct delivered, %d deliveries, %d bad signatures: duplicates %v", want, distinct, total, bad, recv.Duplicates())
	}
	for _, shard := range []int{0, 1} {
		if n := s.StreamMsgs(streams.StreamName(streams.KindDeadLetter, shard)); n != 0 {
			t.Errorf("%d dead letters on shard %d because of shard 0's database outage", n, shard)
		}
	}
	if n := deadLetters(t, s, "true"); n != 0 {
		t.Errorf("%d dead letters indexed because of shard 0's database outage", n)
	}
	harness.Eventually(t, 20*time.Second, func() error {
		for _, name := range []string{"processor", "sender"} {
			if ready, failed := s.Proc(name).Readiness(); !ready {
				return fmt.Errorf("%s not ready again after shard 0's database returned: %v", name, failed)
			}
		}
		return nil
	})

	checkPlacement(t, s, a0, 0, sent0.Load())
	checkPlacement(t, s, a1, 1, sent1.Load())

	// Deleting shard 1's account clears its rows in its shard's database,
	// and the audit counts them.
	if code := s.Admin("DELETE", "/v1/accounts/"+a1.ID, nil, nil); code != 202 {
		t.Fatalf("DELETE %s: HTTP %d", a1.ID, code)
	}
	got := s.WaitStatus(a1.ID, "deleted", 30*time.Second)
	deletion, _ := got["deletion"].(map[string]any)
	audit, _ := deletion["audit"].(map[string]any)
	rows, _ := audit["rows_deleted"].(map[string]any)
	want := map[string]float64{"people": 1, "triggers": 1, "deliveries": float64(sent1.Load()), "dead_letters": 0}
	for table, n := range want {
		if rows[table] != n {
			t.Errorf("audit rows_deleted = %v, want %v", rows, want)
			break
		}
	}
	for _, table := range []string{"people", "triggers", "deliveries"} {
		if n := s.ShardCount(1, "SELECT count(*) FROM "+table+" WHERE account_id = $1", a1.ID); n != 0 {
			t.Errorf("%d %s rows of deleted %s left in shard 1's database", n, table, a1.ID)
		}
	}
}

// checkPlacement checks that an account's people, triggers and deliveries
// are in its shard's database (deliveries: one per event delivered) and
// none in the main database or the other shard's.
func checkPlacement(t *testing.T, s *harness.Stack, a harness.Account, shard int, delivered int64) {
	t.Helper()
	other := 1 - shard
	count := func(where string, table string) int {
		q := "SELECT count(*) FROM " + table + " WHERE account_id = $1"
		switch where {
		case "main":
			return s.Count(q, a.ID)
		case "own":
			return s.ShardCount(shard, q, a.ID)
		default:
			return s.ShardCount(other, q, a.ID)
		}
	}
	want := map[string]int{"people": 1, "triggers": 1, "deliveries": int(delivered)}
	for table, n := range want {
		if got := count("own", table); got != n {
			t.Errorf("%s (shard %d): %d %s rows in shard %d's database, want %d", a.ID, shard, got, table, shard, n)
		}
		if got := count("main", table); got != 0 {
			t.Errorf("%s (shard %d): %d %s rows in the main database, want none", a.ID, shard, got, table)
		}
		if got := count("other", table); got != 0 {
			t.Errorf("%s (shard %d): %d %s rows in shard %d's database, want none", a.ID, shard, got, table, other)
		}
	}
	if got := s.Count("SELECT count(*) FROM accounts WHERE id = $1", a.ID); got != 1 {
		t.Errorf("%s: %d accounts rows in the main database, want 1", a.ID, got)
	}
}
