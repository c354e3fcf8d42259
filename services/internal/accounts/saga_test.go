package accounts_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/shardflow/shardflow/services/internal/accounts"
	"github.com/shardflow/shardflow/streams"
)

func itoa(n int) string { return strconv.Itoa(n) }

func mustJSON(t *testing.T, raw []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
}

// published is how many messages the saga test stores per kind.
type published struct{ inbound, outbound, deadletter int }

func (p published) total() int { return p.inbound + p.outbound + p.deadletter }

// seedMessages stores an account's messages on its shard's stage and
// dead-letter streams (no consumer runs on them).
func (h *harness) seedMessages(account string, shard int, p published) {
	h.t.Helper()
	h.publish(streams.KindInbound, shard, account, "track", 1, p.inbound)
	h.publish(streams.KindOutbound, shard, account, "webhook", 1, p.outbound)
	h.publish(streams.KindDeadLetter, shard, account, "processor", 1, p.deadletter)
}

// accountCounts returns how many messages of an account each purged stream
// holds, held copies included.
func (h *harness) accountCounts(account string, shard int) published {
	h.t.Helper()
	return published{
		inbound:    int(h.count(streams.KindInbound, shard, streams.AccountFilter(streams.KindInbound, shard, account))),
		outbound:   int(h.count(streams.KindOutbound, shard, streams.AccountFilter(streams.KindOutbound, shard, account))),
		deadletter: int(h.count(streams.KindDeadLetter, shard, streams.AccountFilter(streams.KindDeadLetter, shard, account))),
	}
}

func checkAuditPurged(t *testing.T, got map[string]uint64, shard int, want published) {
	t.Helper()
	exp := map[string]uint64{
		streams.StreamName(streams.KindInbound, shard):    uint64(want.inbound),
		streams.StreamName(streams.KindOutbound, shard):   uint64(want.outbound),
		streams.StreamName(streams.KindDeadLetter, shard): uint64(want.deadletter),
	}
	if len(got) != len(exp) {
		t.Errorf("audit purged %v, want %v", got, exp)
	}
	var sum uint64
	for k, v := range exp {
		if got[k] != v {
			t.Errorf("audit purged[%s] = %d, want %d (all: %v)", k, got[k], v, got)
		}
		sum += got[k]
	}
	if sum != uint64(want.total()) {
		t.Errorf("audit purged %d in all, want %d", sum, want.total())
	}
}

func checkStepsInOrder(t *testing.T, d *accounts.Deletion) {
	t.Helper()
	if d == nil {
		t.Fatal("no deletion record")
	}
	if d.Step != accounts.StepDeleted || d.FinishedAt == nil {
		t.Errorf("deletion step %q finished %v, want %q and a time", d.Step, d.FinishedAt, accounts.StepDeleted)
	}
	for i, step := range accounts.Steps {
		at, ok := d.Audit.Steps[step]
		if !ok {
			t.Errorf("audit lacks step %s: %v", step, d.Audit.Steps)
			continue
		}
		if i > 0 && at.Before(d.Audit.Steps[accounts.Steps[i-1]]) {
			t.Errorf("step %s at %v, before %s at %v", step, at, accounts.Steps[i-1], d.Audit.Steps[accounts.Steps[i-1]])
		}
	}
}

func TestDeletionSaga(t *testing.T) {
	h := newHarness(t)
	a := h.create("acct-a")
	bID := sameShard("acct-b", a.Shard, h.topo.Shards)
	b := h.create(bID)
	shard := a.Shard

	for _, acct := range []string{a.ID, b.ID} {
		h.must(http.StatusOK, "PUT", "/v1/accounts/"+acct+"/triggers/welcome", map[string]any{"event": "Signed Up", "channel": "webhook", "url": "https://example.com/h"}, nil)
	}
	h.must(http.StatusOK, "PUT", "/v1/accounts/"+a.ID+"/triggers/mail", map[string]any{"event": "Order", "channel": "email", "url": "mailto:o@example.com"}, nil)
	h.seedRows(a.ID, shard, 3, 4, 2)
	h.seedRows(b.ID, shard, 2, 1, 1)

	pa := published{inbound: 3000, outbound: 1500, deadletter: 500}
	pb := published{inbound: 600, outbound: 300, deadletter: 100}
	h.seedMessages(a.ID, shard, pa)
	h.seedMessages(b.ID, shard, pb)
	if got := h.accountCounts(a.ID, shard); got != pa {
		t.Fatalf("seeded %+v for A, want %+v", got, pa)
	}

	// DELETE twice: the same answer, one deletion.
	var d1, d2 accounts.DeleteAccepted
	h.must(http.StatusAccepted, "DELETE", "/v1/accounts/"+a.ID, nil, &d1)
	if d1 != (accounts.DeleteAccepted{ID: a.ID, Status: streams.StatusDeleting, Generation: 2}) {
		t.Errorf("delete: %+v", d1)
	}
	h.must(http.StatusAccepted, "DELETE", "/v1/accounts/"+a.ID, nil, &d2)
	if d2 != d1 {
		t.Errorf("second delete: %+v, want %+v", d2, d1)
	}
	// Ingress is closed at once (the directory says deleting or deleted).
	h.waitDirectory(a.ID, func(e streams.Account, ok bool) bool {
		return ok && e.Generation == 2 && (e.Status == streams.StatusDeleting || e.Status == streams.StatusDeleted)
	})

	got := h.waitStatus(a.ID, streams.StatusDeleted)
	if got.Generation != 2 {
		t.Errorf("deleted at generation %d, want 2", got.Generation)
	}
	d := got.Deletion
	checkStepsInOrder(t, d)
	if d.Generation != 2 {
		t.Errorf("deletion generation %d, want 2", d.Generation)
	}
	checkAuditPurged(t, d.Audit.Purged, shard, pa)
	checkAuditPurged(t, d.Audit.SecondPurge, shard, published{})
	wantRows := map[string]int64{"people": 3, "triggers": 2, "deliveries": 4, "dead_letters": 2}
	for table, n := range wantRows {
		if d.Audit.RowsDeleted[table] != n {
			t.Errorf("audit rows_deleted[%s] = %d, want %d (all: %v)", table, d.Audit.RowsDeleted[table], n, d.Audit.RowsDeleted)
		}
		if left := h.rowCount(table, a.ID); left != 0 {
			t.Errorf("%d %s rows of A left", left, table)
		}
	}
	wantB := map[string]int{"people": 2, "triggers": 1, "deliveries": 1, "dead_letters": 1}
	for table, n := range wantB {
		if left := h.rowCount(table, b.ID); left != n {
			t.Errorf("B has %d %s rows, want %d (untouched)", left, table, n)
		}
	}
	for _, c := range []string{"INBOUND_" + itoa(shard) + "/processor", "OUTBOUND_" + itoa(shard) + "/sender"} {
		if pos, ok := d.Audit.Consumers[c]; !ok || !pos.Exists {
			t.Errorf("audit consumers[%s] = %+v, %v: want a recorded position (all: %v)", c, pos, ok, d.Audit.Consumers)
		}
	}
	if d.Audit.VerifyPurged != nil {
		t.Errorf("verification purged %v, want nothing left to purge", d.Audit.VerifyPurged)
	}

	if left := h.accountCounts(a.ID, shard); left != (published{}) {
		t.Errorf("A's messages left after deletion: %+v", left)
	}
	if left := h.accountCounts(b.ID, shard); left != pb {
		t.Errorf("B's messages %+v, want %+v untouched", left, pb)
	}
	e := h.waitDirectory(a.ID, func(e streams.Account, ok bool) bool { return ok && e.Status == streams.StatusDeleted })
	if e.Generation != 2 {
		t.Errorf("directory: deleted at generation %d, want 2", e.Generation)
	}
	var tomb int
	if err := h.pool.QueryRow(t.Context(), `SELECT count(*) FROM account_tombstones WHERE account_id = $1 AND generation = 2`, a.ID).Scan(&tomb); err != nil || tomb != 1 {
		t.Errorf("tombstones of A generation 2: %d (%v), want 1", tomb, err)
	}
	if m := h.purgedMetric(); m["inbound"] != int64(pa.inbound) || m["outbound"] != int64(pa.outbound) || m["deadletter"] != int64(pa.deadletter) {
		t.Errorf("metric %s = %v, want %+v", accounts.MetricMessagesPurged, m, pa)
	}

	// Deleting a deleted account is harmless and changes nothing.
	var d3 accounts.DeleteAccepted
	h.must(http.StatusOK, "DELETE", "/v1/accounts/"+a.ID, nil, &d3)
	if d3 != (accounts.DeleteAccepted{ID: a.ID, Status: streams.StatusDeleted, Generation: 2}) {
		t.Errorf("delete after deletion: %+v", d3)
	}
	h.wantError(http.StatusGone, "POST", "/v1/accounts/"+a.ID+"/suspend", nil, "deleted")
	h.wantError(http.StatusGone, "POST", "/v1/accounts/"+a.ID+"/restore", nil, "deleted")
	h.wantError(http.StatusGone, "PATCH", "/v1/accounts/"+a.ID, map[string]any{"rate_limit": 5}, "deleted")
	h.wantError(http.StatusGone, "PUT", "/v1/accounts/"+a.ID+"/triggers/x", map[string]any{"event": "E", "channel": "webhook", "url": "https://example.com"}, "deleted")

	// Re-create: generation 3, new keys, live again.
	re := h.create(a.ID)
	if re.Generation != 3 || re.Status != streams.StatusActive || re.WriteKey == a.WriteKey || !writeKeyRE.MatchString(re.WriteKey) {
		t.Errorf("re-created %+v (old write key %s)", re, a.WriteKey)
	}
	e = h.waitDirectory(a.ID, func(e streams.Account, ok bool) bool { return ok && e.Generation == 3 })
	if e.Status != streams.StatusActive || e.WriteKey != re.WriteKey {
		t.Errorf("directory after re-create: %+v", e)
	}
	if _, ok := h.dir.ByWriteKey(a.WriteKey); ok {
		t.Error("the old write key still resolves")
	}
	if g := h.get(a.ID); g.Deletion == nil || g.Deletion.Generation != 2 {
		t.Errorf("re-created account shows deletion %+v, want the generation-2 record", g.Deletion)
	}
}

// TestDeletionSagaResumes makes the saga fail right after the purge (as a
// crash would), and checks the redelivered event resumes it, with an audit
// that still counts what the first attempt purged.
func TestDeletionSagaResumes(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	failed := false
	h := newHarness(t, withAfterStep(func(_ context.Context, _ string, _ int64, step string) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, step)
		if step == accounts.StepPurged && !failed {
			failed = true
			return errors.New("injected crash after purged")
		}
		return nil
	}))
	a := h.create("acct-a")
	p := published{inbound: 200, outbound: 100, deadletter: 50}
	h.seedMessages(a.ID, a.Shard, p)
	h.seedRows(a.ID, a.Shard, 2, 1, 1)

	h.must(http.StatusAccepted, "DELETE", "/v1/accounts/"+a.ID, nil, nil)
	got := h.waitStatus(a.ID, streams.StatusDeleted)

	mu.Lock()
	steps := slices.Clone(seen)
	mu.Unlock()
	if !slices.Equal(steps, accounts.Steps) {
		t.Errorf("steps run %v, want each once: %v", steps, accounts.Steps)
	}
	h.mu.Lock()
	deliveries := h.maxDelivery
	h.mu.Unlock()
	if deliveries < 2 {
		t.Errorf("the deleted event was delivered %d time(s); the resume needs a redelivery", deliveries)
	}
	checkStepsInOrder(t, got.Deletion)
	checkAuditPurged(t, got.Deletion.Audit.Purged, a.Shard, p)
	if r := got.Deletion.Audit.RowsDeleted; r["people"] != 2 || r["deliveries"] != 1 || r["dead_letters"] != 1 {
		t.Errorf("rows deleted %v", r)
	}
	if left := h.accountCounts(a.ID, a.Shard); left != (published{}) {
		t.Errorf("messages left: %+v", left)
	}
}

// TestDeletionWaitsForSaga covers an account while its deletion is pending
// (the saga is not running yet): changes are refused, DELETE repeats, and the
// saga completes the deletion once it runs.
func TestDeletionWaitsForSaga(t *testing.T) {
	h := newHarness(t, withoutSaga())
	a := h.create("slow")
	h.publish(streams.KindInbound, a.Shard, a.ID, "track", 1, 10)

	var d1, d2 accounts.DeleteAccepted
	h.must(http.StatusAccepted, "DELETE", "/v1/accounts/slow", nil, &d1)
	h.must(http.StatusAccepted, "DELETE", "/v1/accounts/slow", nil, &d2)
	if d1 != d2 || d1.Status != streams.StatusDeleting || d1.Generation != 2 {
		t.Errorf("deletes: %+v then %+v", d1, d2)
	}
	h.waitDirectory("slow", func(e streams.Account, ok bool) bool {
		return ok && e.Status == streams.StatusDeleting && e.Generation == 2
	})

	h.wantError(http.StatusConflict, "POST", "/v1/accounts/slow/suspend", nil, "deletion in progress")
	h.wantError(http.StatusConflict, "POST", "/v1/accounts/slow/restore", nil, "deletion in progress")
	h.wantError(http.StatusConflict, "PATCH", "/v1/accounts/slow", map[string]any{"rate_limit": 5}, "deletion in progress")
	h.wantError(http.StatusConflict, "POST", "/v1/accounts", map[string]any{"id": "slow"}, "deletion in progress")
	h.wantError(http.StatusGone, "PUT", "/v1/accounts/slow/triggers/x", map[string]any{"event": "E", "channel": "webhook", "url": "https://example.com"}, "deleting")

	g := h.get("slow")
	if g.Status != streams.StatusDeleting || g.Deletion == nil || g.Deletion.Step != accounts.StepStarted || g.Deletion.FinishedAt != nil {
		t.Errorf("pending deletion: %+v %+v", g, g.Deletion)
	}
	// One event, despite the repeated DELETE (same Nats-Msg-Id).
	if n := h.count(streams.KindAccounts, a.Shard, fmt.Sprintf("accounts.%d.slow.deleted", a.Shard)); n != 1 {
		t.Errorf("deleted events: %d, want 1", n)
	}

	h.startSaga()
	got := h.waitStatus("slow", streams.StatusDeleted)
	checkStepsInOrder(t, got.Deletion)
	checkAuditPurged(t, got.Deletion.Audit.Purged, a.Shard, published{inbound: 10})
}

// TestCheckDeletionsRepublishes covers a deletion whose event was never
// published (a crash between the DELETE's commit and its publish): the
// start-up check finds it and publishes the event, and the saga completes it.
func TestCheckDeletionsRepublishes(t *testing.T) {
	h := newHarness(t)
	a := h.create("lost")
	h.publish(streams.KindOutbound, a.Shard, a.ID, "webhook", 1, 7)
	ctx := t.Context()
	// What the DELETE commits, without its publish, a while ago.
	if _, err := h.pool.Exec(ctx, `UPDATE accounts SET status = 'deleting', generation = 2 WHERE id = 'lost'`); err != nil {
		t.Fatal(err)
	}
	if _, err := h.pool.Exec(ctx, `INSERT INTO account_deletions (account_id, generation, started_at) VALUES ('lost', 2, now() - interval '5 minutes')`); err != nil {
		t.Fatal(err)
	}
	// A fresh deletion is left to its own event.
	h.create("fresh")
	if _, err := h.pool.Exec(ctx, `UPDATE accounts SET status = 'deleting', generation = 2 WHERE id = 'fresh'`); err != nil {
		t.Fatal(err)
	}
	if _, err := h.pool.Exec(ctx, `INSERT INTO account_deletions (account_id, generation) VALUES ('fresh', 2)`); err != nil {
		t.Fatal(err)
	}

	n, err := h.svc.CheckDeletions(ctx)
	if err != nil || n != 1 {
		t.Fatalf("CheckDeletions: %d, %v; want 1 stale deletion", n, err)
	}
	got := h.waitStatus("lost", streams.StatusDeleted)
	checkStepsInOrder(t, got.Deletion)
	checkAuditPurged(t, got.Deletion.Audit.Purged, a.Shard, published{outbound: 7})
	// The directory said active all along (the Put was "lost" too); the
	// saga closed it and then marked it deleted.
	h.waitDirectory("lost", func(e streams.Account, ok bool) bool {
		return ok && e.Status == streams.StatusDeleted && e.Generation == 2
	})
	if g := h.get("fresh"); g.Status != streams.StatusDeleting {
		t.Errorf("fresh deletion: status %s, want deleting (no event for it)", g.Status)
	}
}

func TestSyncDirectory(t *testing.T) {
	h := newHarness(t)
	c := h.create("acme")
	h.create("beta")
	h.waitDirectory("beta", func(e streams.Account, ok bool) bool { return ok })
	kv, err := streams.DirectoryKV(t.Context(), h.js)
	if err != nil {
		t.Fatal(err)
	}
	// A lost write: the directory lags Postgres.
	if err := kv.Delete(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	h.waitDirectory("acme", func(e streams.Account, ok bool) bool { return !ok })

	n, err := h.svc.SyncDirectory(t.Context())
	if err != nil || n != 1 {
		t.Fatalf("SyncDirectory: %d, %v; want 1 entry written", n, err)
	}
	e := h.waitDirectory("acme", func(e streams.Account, ok bool) bool { return ok })
	if e.WriteKey != c.WriteKey || e.Status != streams.StatusActive {
		t.Errorf("synced entry %+v", e)
	}
	if n, err := h.svc.SyncDirectory(t.Context()); err != nil || n != 0 {
		t.Errorf("second SyncDirectory: %d, %v; want nothing to write", n, err)
	}
}
