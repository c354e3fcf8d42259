package streams

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// forwarding is a message whose Forward outcome is being published: the
// input is acked once every future has succeeded.
type forwarding struct {
	m        *Msg
	ctx      context.Context
	futures  []jetstream.PubAckFuture
	deadline time.Time // the publish acks are awaited until then
}

// startForward builds msgs, then publishes them asynchronously. A message
// that cannot be built is the handler's bug, never fixed by a retry: it
// dead-letters the input, and none of its messages is published (all are
// built before the first goes out). A publish that cannot even be sent is
// retried; what went out before it is republished with the same ids.
func (c *Consumer) startForward(ctx context.Context, m *Msg, msgs []Message) (*forwarding, Outcome) {
	built := make([]*nats.Msg, len(msgs))
	for i, out := range msgs {
		nm, err := c.pub.build(ctx, out)
		if err != nil {
			return nil, DeadLetter(ClassPermanent, fmt.Errorf("forward: %w", err))
		}
		built[i] = nm
	}
	f := &forwarding{m: m, ctx: ctx, futures: make([]jetstream.PubAckFuture, 0, len(built)), deadline: time.Now().Add(c.pub.timeout)}
	for _, nm := range built {
		fut, err := c.cfg.JetStream.PublishMsgAsync(nm)
		if err != nil {
			return nil, Retry(fmt.Errorf("forward to %s: %w", nm.Subject, err))
		}
		f.futures = append(f.futures, fut)
	}
	return f, Outcome{}
}

// forwarder waits, in order, for each forwarding's publish acks, then acks
// or retries its input and releases it. It ends when work is closed.
func (c *Consumer) forwarder(work <-chan *forwarding, done chan<- struct{}) {
	defer close(done)
	for f := range work {
		out := Ack()
		// A deadline from when the publishes went out, not from when this
		// wait began: with the server gone, every queued forwarding gives
		// up within one timeout, not one timeout each in turn.
		timeout := time.NewTimer(time.Until(f.deadline))
	wait:
		for _, fut := range f.futures {
			select {
			case <-fut.Ok():
			case err := <-fut.Err():
				out = Retry(fmt.Errorf("forward to %s: %w", fut.Msg().Subject, err))
				break wait
			case <-timeout.C:
				out = Retry(fmt.Errorf("forward to %s: %w", fut.Msg().Subject, errors.New("no publish acknowledgement in time")))
				break wait
			}
		}
		timeout.Stop()
		c.queuedMu.Lock()
		delete(c.queued, f.m)
		c.queuedMu.Unlock()
		c.apply(f.ctx, f.m, out)
		c.release(f.m)
	}
}
