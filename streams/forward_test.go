package streams_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shardflow/shardflow/streams"
)

// Forward publishes what the handler returns and acks the input only once
// JetStream stored it; a publish that fails is retried like Retry and, out
// of attempts, dead-lettered; a message that cannot be built dead-letters
// the input at once.
func TestConsumerForwardPublishesThenAcks(t *testing.T) {
	e := setup(t, fastTopology())
	const n = 500
	e.publishN(t, 0, "acme", n, []byte("payload"))
	p := e.publisher(t)
	for _, acct := range []string{"lost", "noid"} {
		if _, err := p.Publish(t.Context(), streams.Message{
			Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: acct, Type: "track"},
			ID:      acct + ":1", Data: []byte("x"),
		}); err != nil {
			t.Fatal(err)
		}
	}
	c := newConsumer(t, e, streams.ConsumerConfig{Shard: 0, Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
		out := streams.Message{Subject: streams.Subject{Kind: streams.KindOutbound, Shard: 0, Account: m.Subject.Account, Type: "webhook"}, ID: m.ID + ":out", Data: m.Data}
		switch m.Subject.Account {
		case "lost":
			out.Subject.Shard = 9 // no stream listens: every publish fails
		case "noid":
			// A valid message and one that cannot be built: neither may
			// be published (the input is dead-lettered whole).
			bad := out
			bad.ID = ""
			return streams.Forward(out, bad)
		}
		return streams.Forward(out)
	}})
	run(t, c)
	eventually(t, 30*time.Second, func() error {
		s := c.Stats()
		if s.Acked != n || s.DeadLettered != 2 {
			return fmt.Errorf("acked %d of %d, dead-lettered %d of 2", s.Acked, n, s.DeadLettered)
		}
		return nil
	})
	if got := streamMsgs(t, e.js, "OUTBOUND_0"); got != n {
		t.Fatalf("OUTBOUND_0 holds %d, want %d (nothing of the input that could not be forwarded whole)", got, n)
	}
	if got := streamMsgs(t, e.js, "INBOUND_0"); got != 0 {
		t.Fatalf("INBOUND_0 still holds %d", got)
	}
	byAccount := map[string]string{}
	for _, d := range readDeadLetters(t, e, 0, 2) {
		byAccount[d.Account] = fmt.Sprintf("%s after %d", d.ErrorClass, d.Attempts)
	}
	if byAccount["lost"] != "transient after 4" || byAccount["noid"] != "permanent after 1" {
		t.Fatalf("dead letters: %v", byAccount)
	}
	if s := c.Stats(); s.InFlight != 0 {
		t.Fatalf("%d still in flight", s.InFlight)
	}
}
