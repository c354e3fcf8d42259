package streams_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shardflow/shardflow/streams"
)

// PurgeAccount removes every message of the account, and only those, from a
// stream longer than one purge step (it purges a range of sequences at a
// time), and counts them exactly.
func TestPurgeAccountInStepsRemovesExactlyTheAccount(t *testing.T) {
	e := setup(t, fastTopology())
	const each = 20_000 // 40,000 messages: more than two steps of 16,384
	p := e.publisher(t)
	batch := make([]streams.Message, 0, 1000)
	for i := range each {
		for _, acct := range []string{"victim", "other"} {
			batch = append(batch, streams.Message{
				Subject: streams.Subject{Kind: streams.KindInbound, Shard: 1, Account: acct, Type: "track"},
				ID:      streams.MessageID(acct, 1, fmt.Sprintf("m%d", i)), Generation: 1, Data: []byte("x"),
			})
		}
		if len(batch) == cap(batch) {
			if err := p.PublishBatch(t.Context(), batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	var requests atomic.Int64
	sub, err := e.nc.Subscribe("$JS.API.STREAM.PURGE.INBOUND_1", func(*nats.Msg) { requests.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	n, err := streams.PurgeAccount(t.Context(), e.js, streams.KindInbound, 1, "victim")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error {
		if got := requests.Load(); got < 3 {
			return fmt.Errorf("%d purge requests for a stream of 40,000: want one per 16,384 sequences and the rest", got)
		}
		return nil
	})
	if n != each {
		t.Fatalf("purged %d, want %d", n, each)
	}
	for acct, want := range map[string]uint64{"victim": 0, "other": each} {
		got, err := streams.CountSubject(t.Context(), e.js, "INBOUND_1", streams.AccountFilter(streams.KindInbound, 1, acct))
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: %d messages left, want %d", acct, got, want)
		}
	}
}
