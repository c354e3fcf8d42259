package accounts_test

import (
	"errors"
	"net/http"
	"sync"
	"testing"

	"github.com/shardflow/shardflow/services/internal/accounts"
	"github.com/shardflow/shardflow/streams"
)

// A shard with a database of its own holds its accounts' triggers, and the
// saga deletes its people, triggers and deliveries there and the dead letters
// in the main database, with exact counts; the other shard is untouched.
func TestShardDatabaseHoldsItsAccountsRows(t *testing.T) {
	h := newHarness(t, withShardDatabase(1))
	a0 := h.create(sameShard("main", 0, h.topo.Shards))
	a1 := h.create(sameShard("own", 1, h.topo.Shards))
	for _, id := range []string{a0.ID, a1.ID} {
		h.must(http.StatusOK, "PUT", "/v1/accounts/"+id+"/triggers/welcome", map[string]any{"event": "Signed Up", "channel": "webhook", "url": "https://example.com/h"}, nil)
	}
	own := h.shardPools.For(1)
	if in, main := countIn(t, own, "triggers", a1.ID), countIn(t, h.pool, "triggers", a1.ID); in != 1 || main != 0 {
		t.Errorf("shard 1's trigger: %d in its database, %d in the main one; want 1 and 0", in, main)
	}
	if in, main := countIn(t, own, "triggers", a0.ID), countIn(t, h.pool, "triggers", a0.ID); in != 0 || main != 1 {
		t.Errorf("shard 0's trigger: %d in shard 1's database, %d in the main one; want 0 and 1", in, main)
	}
	var list accounts.Triggers
	h.must(http.StatusOK, "GET", "/v1/accounts/"+a1.ID+"/triggers", nil, &list)
	if len(list.Triggers) != 1 || list.Triggers[0].Name != "welcome" {
		t.Errorf("triggers of %s: %+v", a1.ID, list.Triggers)
	}

	h.seedRows(a1.ID, 1, 3, 2, 2)
	h.must(http.StatusAccepted, "DELETE", "/v1/accounts/"+a1.ID, nil, nil)
	got := h.waitStatus(a1.ID, streams.StatusDeleted)
	want := map[string]int64{"people": 3, "triggers": 1, "deliveries": 2, "dead_letters": 2}
	for table, n := range want {
		if got.Deletion.Audit.RowsDeleted[table] != n {
			t.Errorf("audit rows_deleted = %v, want %v", got.Deletion.Audit.RowsDeleted, want)
		}
		if left := h.rowCount(table, a1.ID); left != 0 {
			t.Errorf("%d %s rows of %s left", left, table, a1.ID)
		}
	}
	if n := countIn(t, own, "deletion_receipts", a1.ID); n != 2 {
		t.Errorf("%d deletion receipts in shard 1's database, want 2 (rows_deleted, second_purge)", n)
	}
	if n := h.rowCount("triggers", a0.ID); n != 1 {
		t.Errorf("shard 0's account has %d triggers after shard 1's deletion, want 1", n)
	}
}

// A crash between the shard database's commit and the main one's (the
// hook fails once there) loses no count: the resumed saga reads the
// receipt instead of deleting (and counting) again.
func TestDeletionCountsSurviveACrashBetweenDatabases(t *testing.T) {
	for name, opt := range map[string]func(*harnessOptions){
		"own database":    withShardDatabase(1),
		"main database":   func(*harnessOptions) {},
		"main pool alone": withSharedPool(),
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, opt, withoutSaga())
			var mu sync.Mutex
			calls := map[string]int{}
			accounts.SetAfterShardRowsDeleted(h.svc, func(step string) error {
				mu.Lock()
				defer mu.Unlock()
				calls[step]++
				if step == accounts.StepRowsDeleted && calls[step] == 1 {
					return errors.New("injected crash between the shard's and the main database's commits")
				}
				return nil
			})
			h.startSaga()
			a := h.create(sameShard("crash", 1, h.topo.Shards))
			h.must(http.StatusOK, "PUT", "/v1/accounts/"+a.ID+"/triggers/welcome", map[string]any{"event": "E", "channel": "webhook", "url": "https://example.com/h"}, nil)
			h.seedRows(a.ID, 1, 2, 1, 1)
			h.must(http.StatusAccepted, "DELETE", "/v1/accounts/"+a.ID, nil, nil)
			got := h.waitStatus(a.ID, streams.StatusDeleted)
			want := map[string]int64{"people": 2, "triggers": 1, "deliveries": 1, "dead_letters": 1}
			for table, n := range want {
				if got.Deletion.Audit.RowsDeleted[table] != n {
					t.Errorf("audit rows_deleted = %v, want %v", got.Deletion.Audit.RowsDeleted, want)
					break
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if calls[accounts.StepRowsDeleted] != 2 {
				t.Errorf("the row-deleting step reached the main database %d times, want 2 (the crash, then the resume)", calls[accounts.StepRowsDeleted])
			}
		})
	}
}

// With shard 1's database down, its accounts' trigger requests are answered
// 503 (a dependency outage: retry later) naming the shard, and shard 0's
// accounts are served.
func TestShardDatabaseDownIsNamedAndIsolated(t *testing.T) {
	h := newHarness(t, withShardDatabase(1), withoutSaga())
	a0 := h.create(sameShard("up", 0, h.topo.Shards))
	a1 := h.create(sameShard("down", 1, h.topo.Shards))
	h.shardPools.For(1).Close()
	trig := map[string]any{"event": "E", "channel": "webhook", "url": "https://example.com/h"}
	h.wantError(http.StatusServiceUnavailable, "PUT", "/v1/accounts/"+a1.ID+"/triggers/t", trig, "database unavailable", "shard 1 database")
	h.wantError(http.StatusServiceUnavailable, "GET", "/v1/accounts/"+a1.ID+"/triggers", nil, "database unavailable", "shard 1 database")
	h.must(http.StatusOK, "PUT", "/v1/accounts/"+a0.ID+"/triggers/t", trig, nil)
	h.must(http.StatusOK, "GET", "/v1/accounts/"+a1.ID, nil, nil) // the account itself is in the main database
}
