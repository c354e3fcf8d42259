package streams_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/shardflow/shardflow/streams"
)

func groupPublisher(t *testing.T, e *env, slots int) *streams.Publisher {
	t.Helper()
	p, err := streams.NewPublisher(streams.PublisherConfig{JetStream: e.js, Topology: e.topo, GroupCommit: slots})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func inboundBatch(account, prefix string, from, n int) []streams.Message {
	msgs := make([]streams.Message, 0, n)
	for i := from; i < from+n; i++ {
		msgs = append(msgs, streams.Message{
			Subject:    streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: account, Type: "track"},
			ID:         streams.MessageID(account, 1, fmt.Sprintf("%s%d", prefix, i)),
			Generation: 1,
			Data:       []byte(`{}`),
		})
	}
	return msgs
}

// batchIDs returns how many distinct atomic batches stored the stream's
// messages (the server keeps the Nats-Batch-Id header), and how many
// messages each id holds.
func batchIDs(t *testing.T, e *env, stream string) map[string]int {
	t.Helper()
	s, err := e.js.Stream(t.Context(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		ids[m.Header.Get("Nats-Batch-Id")]++
	}
	return ids
}

// Concurrent calls share batches, every message is stored once, and the
// runner goroutines are gone afterwards (TestMain checks for leaks).
func TestGroupCommitMergesConcurrentBatchesAndStoresEachOnce(t *testing.T) {
	e := setup(t, fastTopology())
	p := groupPublisher(t, e, 1)
	const calls, per = 32, 50
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- p.PublishBatch(t.Context(), inboundBatch("acct", fmt.Sprintf("c%d-", c), 0, per))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := streamMsgs(t, e.js, "INBOUND_0"); got != calls*per {
		t.Fatalf("INBOUND_0 holds %d messages, want %d", got, calls*per)
	}
	batches := batchIDs(t, e, "INBOUND_0")
	if len(batches) >= calls {
		t.Fatalf("%d calls were stored as %d batches: nothing was merged", calls, len(batches))
	}
	for id, n := range batches {
		if id == "" || n%per != 0 || n > streams.MaxBatch {
			t.Fatalf("batch %q holds %d messages: want whole calls of %d, at most %d", id, n, per, streams.MaxBatch)
		}
	}
	t.Logf("%d calls of %d stored in %d batches", calls, per, len(batches))
}

// The same id from two concurrent calls (a client retrying while its first
// try is in flight) must not land in one batch, which the server would
// refuse whole; and a call holding ids already stored still succeeds.
func TestGroupCommitKeepsDuplicatesApartAndStoresRetries(t *testing.T) {
	e := setup(t, fastTopology())
	p := groupPublisher(t, e, 1)
	if err := p.PublishBatch(t.Context(), inboundBatch("acct", "m", 0, 10)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 24)
	for c := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Every call holds m5..m14: m5..m9 were stored before, m10..m14
			// are new and shared by all calls; plus ids of its own.
			msgs := append(inboundBatch("acct", "m", 5, 10), inboundBatch("acct", fmt.Sprintf("own%d-", c), 0, 5)...)
			errs <- p.PublishBatch(t.Context(), msgs)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got, want := streamMsgs(t, e.js, "INBOUND_0"), uint64(15+24*5); got != want {
		t.Fatalf("INBOUND_0 holds %d messages, want %d (each id once)", got, want)
	}
}

func TestGroupCommitRefusesMoreSlotsThanTheServerAllows(t *testing.T) {
	e := setup(t, fastTopology())
	_, err := streams.NewPublisher(streams.PublisherConfig{JetStream: e.js, Topology: e.topo, GroupCommit: 51})
	if err == nil {
		t.Fatal("GroupCommit 51 was accepted")
	}
}
