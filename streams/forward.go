package streams

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// forwarding is a message whose Forward outcome is being published: the
// input is acked once every future has succeeded.
type forwarding struct {
	m        *Msg
	ctx      context.Context
	futures  []jetstream.PubAckFuture
	spans    []trace.Span // one PRODUCER span per message, ended on its ack
	deadline time.Time    // the publish acks are awaited until then
}

// startForward builds msgs, then publishes them asynchronously. A message
// that cannot be built is the handler's bug, never fixed by a retry: it
// dead-letters the input, and none of its messages is published (all are
// built before the first goes out). A publish that cannot even be sent is
// retried; what went out before it is republished with the same ids.
func (c *Consumer) startForward(ctx context.Context, m *Msg, msgs []Message) (*forwarding, Outcome) {
	built := make([]*nats.Msg, len(msgs))
	spans := make([]trace.Span, len(msgs))
	endAll := func(err error) {
		for _, sp := range spans {
			if sp != nil {
				sp.SetStatus(codes.Error, err.Error())
				sp.End()
			}
		}
	}
	for i, out := range msgs {
		// Each message is published under its own PRODUCER span, a child
		// of the consumer span, as Publisher.Publish does: the next stage's
		// consumer span is its child.
		pctx, span := c.pub.startSend(ctx, out)
		spans[i] = span
		nm, err := c.pub.build(pctx, out)
		if err != nil {
			err = fmt.Errorf("forward: %w", err)
			endAll(err)
			return nil, DeadLetter(ClassPermanent, err)
		}
		built[i] = nm
	}
	f := &forwarding{m: m, ctx: ctx, futures: make([]jetstream.PubAckFuture, 0, len(built)), spans: spans, deadline: time.Now().Add(c.pub.timeout)}
	for _, nm := range built {
		fut, err := c.cfg.JetStream.PublishMsgAsync(nm)
		if err != nil {
			err = fmt.Errorf("forward to %s: %w", nm.Subject, err)
			endAll(err)
			return nil, Retry(err)
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
		waiting := true
		for i, fut := range f.futures {
			sp := f.spans[i]
			if !waiting {
				sp.End()
				continue
			}
			select {
			case ack := <-fut.Ok():
				if sp.IsRecording() {
					sp.SetAttributes(attribute.Int64("messaging.nats.stream_sequence", int64(ack.Sequence)), attribute.Bool("shardflow.duplicate", ack.Duplicate))
				}
			case err := <-fut.Err():
				out = Retry(fmt.Errorf("forward to %s: %w", fut.Msg().Subject, err))
				waiting = false
			case <-timeout.C:
				out = Retry(fmt.Errorf("forward to %s: %w", fut.Msg().Subject, errors.New("no publish acknowledgement in time")))
				waiting = false
			}
			if !waiting {
				sp.RecordError(out.Err)
				sp.SetStatus(codes.Error, out.Err.Error())
			}
			sp.End()
		}
		timeout.Stop()
		c.queuedMu.Lock()
		delete(c.queued, f.m)
		c.queuedMu.Unlock()
		c.apply(f.ctx, f.m, out)
		c.release(f.m)
	}
}
