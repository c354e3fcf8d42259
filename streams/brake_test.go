package streams_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shardflow/shardflow/streams"
)

// A consumer whose messages all end dead-lettered slows to its brake's
// rate, still dead-letters every one of them, and lets go once messages
// succeed again.
func TestConsumerBrakesWhileNearlyEverythingIsDeadLettered(t *testing.T) {
	e := setup(t, fastTopology())
	const poison, rate = 800, 200
	e.publishN(t, 0, "bad", poison, []byte("poison"))
	var healthy atomic.Bool
	c := newConsumer(t, e, streams.ConsumerConfig{Shard: 0, Brake: streams.Brake{Above: 0.9, Rate: rate},
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			if healthy.Load() {
				return streams.Ack()
			}
			return streams.DeadLetter(streams.ClassSchemaInvalid, errors.New("poison"))
		}})
	run(t, c)
	eventually(t, 10*time.Second, func() error {
		if !c.Stats().Braked {
			return fmt.Errorf("not braked after %d dead letters", c.Stats().DeadLettered)
		}
		return nil
	})
	// What was fetched before the brake engaged drains first; then the
	// pace is the brake's (an upper bound: a slow machine only lowers it).
	time.Sleep(500 * time.Millisecond)
	from, t0 := c.Stats().DeadLettered, time.Now()
	time.Sleep(time.Second)
	got := float64(c.Stats().DeadLettered-from) / time.Since(t0).Seconds()
	if got > 1.5*rate {
		t.Fatalf("braked consumer dead-lettered %.0f messages/s, brake rate %d", got, rate)
	}
	t.Logf("braked: %.0f dead letters/s (rate %d)", got, rate)
	eventually(t, time.Minute, func() error {
		if n := c.Stats().DeadLettered; n != poison {
			return fmt.Errorf("%d of %d dead-lettered", n, poison)
		}
		return nil
	})
	healthy.Store(true)
	e.publishN(t, 0, "good", 50, []byte("fine"))
	eventually(t, 10*time.Second, func() error {
		if s := c.Stats(); s.Acked != 50 || s.Braked {
			return fmt.Errorf("%d of 50 acked, braked %v", s.Acked, s.Braked)
		}
		return nil
	})
	if n := streamMsgs(t, e.js, "INBOUND_0"); n != 0 {
		t.Fatalf("%d messages left in the stage stream", n)
	}
}

func TestConsumerRefusesBadBrake(t *testing.T) {
	e := setup(t, fastTopology())
	for _, b := range []streams.Brake{{Above: 1}, {Above: -0.1}, {Above: 0.5, Rate: -1}} {
		_, err := streams.NewConsumer(t.Context(), streams.ConsumerConfig{JetStream: e.js, Topology: e.topo, Stage: streams.StageProcessor, Shard: 0, Brake: b,
			Handler: func(context.Context, *streams.Msg) streams.Outcome { return streams.Ack() }})
		if err == nil {
			t.Errorf("Brake %+v accepted", b)
		}
	}
}

// With Announce, an account whose own messages nearly all end
// dead-lettered is announced braked — while the consumer, half of whose
// messages succeed, is not — the healthy account of the same shard never
// is, and the account is announced released when its messages succeed
// again and when the consumer stops.
func TestConsumerAnnouncesTheAccountWhosePoisonItBrakes(t *testing.T) {
	e := setup(t, fastTopology())
	w, err := streams.WatchBrakes(e.nc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var mu sync.Mutex
	last := map[string]streams.BrakeAdvisory{}
	sub, err := e.nc.Subscribe(streams.BrakeSubjectAll, func(m *nats.Msg) {
		var a streams.BrakeAdvisory
		if err := json.Unmarshal(m.Data, &a); err != nil {
			t.Errorf("advisory %q: %v", m.Data, err)
			return
		}
		if m.Subject != streams.BrakeSubject(0, a.Account) {
			t.Errorf("advisory for %s on %s", a.Account, m.Subject)
		}
		mu.Lock()
		last[a.Account] = a
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	var badHealed atomic.Bool
	c := newConsumer(t, e, streams.ConsumerConfig{Shard: 0, Brake: streams.Brake{Above: 0.9, Announce: true},
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			if m.Subject.Account == "bad" && !badHealed.Load() {
				return streams.DeadLetter(streams.ClassSchemaInvalid, errors.New("poison"))
			}
			return streams.Ack()
		}})
	stop := run(t, c)
	mixed := func(from, n int) {
		p := e.publisher(t)
		var batch []streams.Message
		for i := from; i < from+n; i++ {
			for _, acct := range []string{"bad", "good"} {
				batch = append(batch, streams.Message{
					Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: acct, Type: "track"},
					ID:      streams.MessageID(acct, 1, fmt.Sprintf("m%d", i)), Generation: 1, Data: []byte("x"),
				})
			}
		}
		if err := p.PublishBatch(t.Context(), batch); err != nil {
			t.Fatal(err)
		}
	}
	mixed(0, 300)
	eventually(t, 10*time.Second, func() error {
		if rate, ok := w.Braked("bad"); !ok || rate != 200 {
			return fmt.Errorf("bad: braked %v at %v/s, want braked at the consumer's rate 200/s", ok, rate)
		}
		return nil
	})
	eventually(t, 10*time.Second, func() error {
		if s := c.Stats(); s.Acked != 300 || s.DeadLettered != 300 {
			return fmt.Errorf("%d acked, %d dead-lettered of 300 each", s.Acked, s.DeadLettered)
		}
		return nil
	})
	if _, ok := w.Braked("good"); ok {
		t.Fatal("the healthy account of the shard is announced braked")
	}
	if c.Stats().Braked {
		t.Fatal("the consumer is braked though half its messages succeed")
	}

	badHealed.Store(true)
	mixed(300, 20)
	eventually(t, 10*time.Second, func() error {
		if _, ok := w.Braked("bad"); ok {
			return errors.New("bad still braked after its messages succeed again")
		}
		return nil
	})

	badHealed.Store(false)
	mixed(320, 300)
	eventually(t, 10*time.Second, func() error {
		if _, ok := w.Braked("bad"); !ok {
			return errors.New("bad not braked again")
		}
		return nil
	})
	stop()
	eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if a := last["bad"]; a.Braked {
			return errors.New("the consumer stopped and its last advisory for bad still says braked")
		}
		if _, ok := w.Braked("bad"); ok {
			return errors.New("bad still braked after the consumer stopped")
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if _, ok := last["good"]; ok {
		t.Fatal("an advisory was sent for the healthy account")
	}
}

func TestConsumerRefusesAnnounceWithoutBrake(t *testing.T) {
	e := setup(t, fastTopology())
	_, err := streams.NewConsumer(t.Context(), streams.ConsumerConfig{JetStream: e.js, Topology: e.topo, Stage: streams.StageProcessor, Shard: 0,
		Brake:   streams.Brake{Announce: true},
		Handler: func(context.Context, *streams.Msg) streams.Outcome { return streams.Ack() }})
	if err == nil {
		t.Fatal("Brake{Announce: true} without Above accepted")
	}
}
