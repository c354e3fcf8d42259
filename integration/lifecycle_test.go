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

var tables = []string{"people", "triggers", "deliveries", "dead_letters"}

// assertAccountGone checks the account has nothing left anywhere.
func assertAccountGone(t *testing.T, s *harness.Stack, id string, shard int) {
	t.Helper()
	for _, k := range []streams.Kind{streams.KindInbound, streams.KindOutbound, streams.KindDeadLetter} {
		if n := s.AccountMessages(k, shard, id); n != 0 {
			t.Fatalf("%d messages of %s left in %s", n, id, streams.StreamName(k, shard))
		}
	}
	for _, tbl := range tables {
		if n := s.Count("SELECT count(*) FROM "+tbl+" WHERE account_id = $1", id); n != 0 {
			t.Fatalf("%d rows of %s left in %s", n, id, tbl)
		}
	}
}

// TestIncidentReplayed is the postmortem, replayed: account A floods a shard
// and has a large backlog while B sends normal traffic on the same shard.
// Deleting A mid-flood closes its ingress at once, leaves nothing of it in
// any stream or table, delivers nothing for it after the deletion began,
// delivers every B event exactly once, and the shard keeps moving.
func TestIncidentReplayed(t *testing.T) {
	s := harness.New(t, harness.Options{Env: []string{"SHARDFLOW_DELETION_GRACE=1s"}})
	s.Start("accounts")
	s.Start("ingest")
	ids := harness.SameShardIDs("tenant", 2, s.Topo.Shards)
	a := s.CreateAccountWith(map[string]any{"id": ids[0], "rate_limit": 1_000_000})
	b := s.CreateAccountWith(map[string]any{"id": ids[1], "rate_limit": 1_000_000})
	if a.Shard != b.Shard {
		t.Fatalf("accounts on shards %d and %d", a.Shard, b.Shard)
	}
	recv := harness.NewReceiver(t, secrets(t, s))
	s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())
	s.SetTrigger(b.ID, "welcome", "Signed Up", recv.URL())

	// A's backlog: 30,000 events while no processor runs.
	const backlog = 30_000
	for i := 0; i < backlog; i += 500 {
		if code, body := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", "a", i, 500)); code != 200 {
			t.Fatalf("A backlog: %d %s", code, body)
		}
	}
	s.Start("processor")
	s.Start("sender")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var aAccepted, aGone atomic.Int64
	var bSent atomic.Int64
	wg.Add(2)
	go func() { // A keeps flooding until refused
		defer wg.Done()
		for i := backlog; ctx.Err() == nil; i += 200 {
			code, _ := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", "a", i, 200))
			switch code {
			case 200:
				aAccepted.Add(200)
			case 410:
				aGone.Add(1)
			}
		}
	}()
	go func() { // B: normal traffic, 20 events every 50ms
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i += 20 {
			if code, body := s.Send("/v1/batch", b.WriteKey, harness.TrackBatch("Signed Up", "b", i, 20)); code != 200 {
				t.Errorf("B refused: %d %s", code, body)
				return
			}
			bSent.Add(20)
			time.Sleep(50 * time.Millisecond)
		}
	}()

	// Mid-flood, with A's backlog still large, delete A.
	harness.Eventually(t, 30*time.Second, func() error {
		if recv.Account(a.ID) < 200 {
			return fmt.Errorf("A delivered %d so far", recv.Account(a.ID))
		}
		return nil
	})
	backlogAtDelete := s.AccountMessages(streams.KindInbound, a.Shard, a.ID)
	var del map[string]any
	if code := s.Admin("DELETE", "/v1/accounts/"+a.ID, nil, &del); code != 202 {
		t.Fatalf("DELETE: %d", code)
	}
	deletedAt := time.Now()
	deliveredAtDelete := recv.Account(a.ID)
	t.Logf("deleting %s with %d inbound messages pending, %d delivered", a.ID, backlogAtDelete, deliveredAtDelete)
	if backlogAtDelete < 1000 {
		t.Fatalf("backlog at deletion only %d: the test did not replay a flood", backlogAtDelete)
	}

	// Ingress closes at once.
	harness.Eventually(t, 5*time.Second, func() error {
		code, _ := s.Send("/v1/track", a.WriteKey, []byte(`{"userId":"u","event":"Signed Up"}`))
		if code != 410 {
			return fmt.Errorf("ingest answered %d for the deleted account", code)
		}
		return nil
	})
	t.Logf("ingress closed %v after DELETE", time.Since(deletedAt))

	st := s.WaitStatus(a.ID, "deleted", 60*time.Second)
	t.Logf("saga done %v after DELETE; audit %v", time.Since(deletedAt), st["deletion"])
	// Keep B flowing a little after the saga, then stop the traffic.
	bAtSaga := recv.Account(b.ID)
	harness.Eventually(t, 30*time.Second, func() error {
		if recv.Account(b.ID) <= bAtSaga+100 {
			return fmt.Errorf("shard stalled: B delivered %d (was %d at saga end)", recv.Account(b.ID), bAtSaga)
		}
		return nil
	})
	cancel()
	wg.Wait()

	assertAccountGone(t, s, a.ID, a.Shard)
	if last := recv.LastAt(a.ID); last.After(deletedAt.Add(time.Second)) {
		t.Fatalf("a webhook for %s arrived %v after the DELETE", a.ID, last.Sub(deletedAt))
	}
	harness.Eventually(t, 60*time.Second, func() error {
		if got := recv.Account(b.ID); int64(got) < bSent.Load() {
			return fmt.Errorf("B: %d of %d delivered", got, bSent.Load())
		}
		return nil
	})
	if d := recv.Duplicates(); len(d) > 0 {
		t.Fatalf("duplicate deliveries: %v", d)
	}
	if got := recv.Account(b.ID); int64(got) != bSent.Load() {
		t.Fatalf("B: %d delivered, %d sent", got, bSent.Load())
	}
	if n := s.StreamMsgs(streams.StreamName(streams.KindDeadLetter, a.Shard)); n != 0 {
		t.Fatalf("%d dead letters on the shard: stragglers must be dropped, not dead-lettered", n)
	}
	if aGone.Load() == 0 {
		t.Fatal("A's flood never saw a 410")
	}
	t.Logf("A: %d accepted during the flood, %d delivered before deletion; B: %d delivered exactly once", aAccepted.Load(), recv.Account(a.ID), bSent.Load())
}

// TestDeletionSagaResumesAfterCrash: the accounts service is killed after the
// purge and before the row deletion; restarted, it completes the saga and the
// audit is right.
func TestDeletionSagaResumesAfterCrash(t *testing.T) {
	s := harness.New(t, harness.Options{Env: []string{"SHARDFLOW_DELETION_GRACE=200ms"}})
	acc := s.Start("accounts", "SHARDFLOW_TEST_CRASH_AFTER_STEP=purged")
	s.Start("ingest")
	a := s.CreateAccount("doomed")
	for i := 0; i < 2000; i += 500 {
		if code, _ := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", "d", i, 500)); code != 200 {
			t.Fatalf("send: %d", code)
		}
	}
	if _, err := s.DB.Exec(context.Background(), `INSERT INTO people (account_id, user_id) VALUES ($1, 'u1'), ($1, 'u2')`, a.ID); err != nil {
		t.Fatal(err)
	}
	if code := s.Admin("DELETE", "/v1/accounts/"+a.ID, nil, nil); code != 202 {
		t.Fatalf("DELETE: %d", code)
	}
	select {
	case <-acc.Exited():
		if acc.ExitCode() != 3 {
			t.Fatalf("accounts exited with %d, want the crash hook's 3:\n%s", acc.ExitCode(), acc.Log())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the crash hook did not fire")
	}
	if n := s.Count(`SELECT count(*) FROM people WHERE account_id = $1`, a.ID); n != 2 {
		t.Fatalf("rows deleted before the crash point: %d left", n)
	}
	acc.Restart() // same environment minus nothing: the hook must not fire twice for a finished step
	st := s.WaitStatus(a.ID, "deleted", 60*time.Second)
	assertAccountGone(t, s, a.ID, a.Shard)
	del, _ := st["deletion"].(map[string]any)
	audit, _ := del["audit"].(map[string]any)
	purged, _ := audit["purged"].(map[string]any)
	inbound := fmt.Sprint(purged[streams.StreamName(streams.KindInbound, a.Shard)])
	if inbound != "2000" {
		t.Fatalf("audit purged %v, want 2000 from INBOUND: %v", purged, audit)
	}
	rows, _ := audit["rows_deleted"].(map[string]any)
	if fmt.Sprint(rows["people"]) != "2" {
		t.Fatalf("audit rows_deleted %v", rows)
	}
	steps, _ := audit["steps"].(map[string]any)
	for _, step := range []string{"ingress_closed", "purged", "rows_deleted", "verified", "second_purge"} {
		if steps[step] == nil {
			t.Fatalf("audit has no time for step %s: %v", step, steps)
		}
	}
}

// TestDeletionRace: messages for A published concurrently with the deletion
// (as ingest instances that have not seen the directory change yet would)
// never produce a delivery, and none is left after the second purge.
func TestDeletionRace(t *testing.T) {
	s := startPipeline(t, harness.Options{}, "SHARDFLOW_DELETION_GRACE=1s")
	a := s.CreateAccount("racer")
	recv := harness.NewReceiver(t, secrets(t, s))
	s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())
	pub, err := streams.NewPublisher(streams.PublisherConfig{JetStream: s.JS, Topology: s.Topo})
	if err != nil {
		t.Fatal(err)
	}
	// Deletion begins: from now on nothing of A may be delivered.
	if code := s.Admin("DELETE", "/v1/accounts/"+a.ID, nil, nil); code != 202 {
		t.Fatalf("DELETE: %d", code)
	}
	deadline := time.Now().Add(700 * time.Millisecond)
	n := 0
	for time.Now().Before(deadline) {
		_, err := pub.Publish(context.Background(), streams.Message{
			Subject: streams.Subject{Kind: streams.KindInbound, Shard: a.Shard, Account: a.ID, Type: "track"},
			ID:      streams.MessageID(a.ID, a.Generation, fmt.Sprintf("late-%d", n)), Generation: a.Generation,
			Data: []byte(`{"type":"track","userId":"u","event":"Signed Up","messageId":"late"}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	s.WaitStatus(a.ID, "deleted", 60*time.Second)
	assertAccountGone(t, s, a.ID, a.Shard)
	if got := recv.Account(a.ID); got != 0 {
		t.Fatalf("%d of %d racing messages were delivered", got, n)
	}
	if !strings.Contains(fmt.Sprint(s.AccountStatus(a.ID)["deletion"]), "second_purge") {
		t.Fatalf("no second purge recorded: %v", s.AccountStatus(a.ID))
	}
	t.Logf("%d racing messages published during the deletion, none delivered", n)
}

// TestRecreateInsideDuplicateWindow: an account deleted and re-created with
// the same id at once can send the same client messageIds again: they are
// accepted and delivered (ids carry the generation).
func TestRecreateInsideDuplicateWindow(t *testing.T) {
	s := startPipeline(t, harness.Options{}, "SHARDFLOW_DELETION_GRACE=100ms")
	recv := harness.NewReceiver(t, secrets(t, s))
	a := s.CreateAccount("phoenix")
	s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())
	if code, _ := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", "same", 0, 50)); code != 200 {
		t.Fatal("first life refused")
	}
	harness.Eventually(t, 30*time.Second, func() error {
		if recv.Account(a.ID) < 50 {
			return fmt.Errorf("first life: %d of 50", recv.Account(a.ID))
		}
		return nil
	})
	s.Admin("DELETE", "/v1/accounts/"+a.ID, nil, nil)
	s.WaitStatus(a.ID, "deleted", 30*time.Second)
	a2 := s.CreateAccount("phoenix")
	if a2.Generation <= a.Generation || a2.WriteKey == a.WriteKey {
		t.Fatalf("re-created account: generation %d (was %d), write key changed %v", a2.Generation, a.Generation, a2.WriteKey != a.WriteKey)
	}
	s.SetTrigger(a2.ID, "welcome", "Signed Up", recv.URL())
	if code, body := s.Send("/v1/batch", a2.WriteKey, harness.TrackBatch("Signed Up", "same", 0, 50)); code != 200 {
		t.Fatalf("second life refused: %d %s", code, body)
	}
	harness.Eventually(t, 30*time.Second, func() error {
		if recv.Account(a.ID) < 100 {
			return fmt.Errorf("second life: %d of 50 delivered", recv.Account(a.ID)-50)
		}
		return nil
	})
	if d := recv.Duplicates(); len(d) != 0 {
		t.Fatalf("a key was delivered twice: %v", d)
	}
}

// TestSuspendAndRestore: suspending an account with messages in flight
// closes ingress (403), delivers nothing and loses nothing; restoring it
// delivers every held message exactly once.
func TestSuspendAndRestore(t *testing.T) {
	s := harness.New(t, harness.Options{})
	s.Start("accounts")
	s.Start("ingest")
	recv := harness.NewReceiver(t, secrets(t, s))
	b := s.CreateAccount("sleepy")
	s.SetTrigger(b.ID, "welcome", "Signed Up", recv.URL())
	if code, _ := s.Send("/v1/batch", b.WriteKey, harness.TrackBatch("Signed Up", "h", 0, 300)); code != 200 {
		t.Fatal("send refused")
	}
	if code := s.Admin("POST", "/v1/accounts/"+b.ID+"/suspend", nil, nil); code != 200 {
		t.Fatalf("suspend: %d", code)
	}
	harness.Eventually(t, 5*time.Second, func() error {
		if code, _ := s.Send("/v1/track", b.WriteKey, []byte(`{"userId":"u","event":"Signed Up"}`)); code != 403 {
			return fmt.Errorf("ingest answered %d for a suspended account", code)
		}
		return nil
	})
	s.Start("processor")
	s.Start("sender")
	// The processor parks every message of the suspended account.
	harness.Eventually(t, 30*time.Second, func() error {
		held, _ := streams.CountSubject(context.Background(), s.JS, streams.StreamName(streams.KindInbound, b.Shard), streams.HeldFilter(streams.KindInbound, b.Shard, b.ID))
		if held != 300 {
			return fmt.Errorf("%d of 300 parked", held)
		}
		return nil
	})
	if got := recv.Account(b.ID); got != 0 {
		t.Fatalf("%d delivered while suspended", got)
	}
	if code := s.Admin("POST", "/v1/accounts/"+b.ID+"/restore", nil, nil); code != 200 {
		t.Fatalf("restore: %d", code)
	}
	harness.Eventually(t, 60*time.Second, func() error {
		if got := recv.Account(b.ID); got < 300 {
			return fmt.Errorf("%d of 300 delivered after restore", got)
		}
		return nil
	})
	if d := recv.Duplicates(); len(d) != 0 {
		t.Fatalf("duplicates: %v", d)
	}
	if code, _ := s.Send("/v1/track", b.WriteKey, []byte(`{"userId":"u","event":"Signed Up","messageId":"after"}`)); code != 200 {
		t.Fatalf("ingress not reopened: %d", code)
	}
}

// TestRateLimitIsolatesAccounts: an account over its limit gets 429 with
// Retry-After; another account on the same shard sees no change.
func TestRateLimitIsolatesAccounts(t *testing.T) {
	s := harness.New(t, harness.Options{})
	s.Start("accounts")
	s.Start("ingest")
	ids := harness.SameShardIDs("rl", 2, s.Topo.Shards)
	noisy := s.CreateAccountWith(map[string]any{"id": ids[0], "rate_limit": 100})
	calm := s.CreateAccountWith(map[string]any{"id": ids[1], "rate_limit": 100_000})
	limited := 0
	for i := 0; i < 30; i++ {
		code, _ := s.Send("/v1/batch", noisy.WriteKey, harness.TrackBatch("e", "n", i*100, 100))
		if code == 429 {
			limited++
		}
		if code, body := s.Send("/v1/batch", calm.WriteKey, harness.TrackBatch("e", "c", i*100, 100)); code != 200 {
			t.Fatalf("calm account refused while the noisy one floods: %d %s", code, body)
		}
	}
	if limited == 0 {
		t.Fatal("the noisy account was never limited")
	}
	req := harness.TrackBatch("e", "n", 99999, 100)
	code, body := s.Send("/v1/batch", noisy.WriteKey, req)
	if code != 429 || !strings.Contains(body, "rate limit") {
		t.Fatalf("want 429 naming the rate limit, got %d %s", code, body)
	}
}
