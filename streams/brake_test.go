package streams_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

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
