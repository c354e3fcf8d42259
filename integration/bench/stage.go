package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
)

// Stage scenario: consume INBOUND_0 → publish to OUTBOUND_0 → ack the
// input once the output is stored, 1 KiB messages.

const (
	stageIn      = "INBOUND_0"
	stageOut     = "OUTBOUND_0"
	stageInSubj  = "inbound.0.bench.track"
	stageOutSubj = "outbound.0.bench.webhook"
	stageDLSubj  = "deadletter.0.bench.watermill"
)

// StageVariant is one implementation of the pass-through stage.
type StageVariant struct {
	Name string
	// Run consumes count messages from INBOUND_0 of n until the stream is
	// empty, and returns how long that took.
	Run func(ctx context.Context, n *NATS, count int) (time.Duration, error)
}

// Stage tuning of the streams runtime (see the report).
const (
	StreamsTunedConcurrency  = 256
	WatermillBestSubscribers = 128
)

// StageVariants are the variants, baseline first.
func StageVariants() []StageVariant {
	return []StageVariant{
		{"raw nats.go", func(ctx context.Context, n *NATS, count int) (time.Duration, error) {
			return stageRaw(ctx, n, count, false)
		}},
		{"raw nats.go + Nats-Msg-Id", func(ctx context.Context, n *NATS, count int) (time.Duration, error) {
			return stageRaw(ctx, n, count, true)
		}},
		{"streams, defaults", func(ctx context.Context, n *NATS, count int) (time.Duration, error) {
			return stageStreams(ctx, n, count, 0, 0, false)
		}},
		{"streams, tuned", func(ctx context.Context, n *NATS, count int) (time.Duration, error) {
			return stageStreams(ctx, n, count, StreamsTunedConcurrency, 1000, false)
		}},
		{"streams, Forward outcome", func(ctx context.Context, n *NATS, count int) (time.Duration, error) {
			return stageStreams(ctx, n, count, 0, 0, true)
		}},
		{"Watermill, defaults", func(ctx context.Context, n *NATS, count int) (time.Duration, error) {
			return stageWatermill(ctx, n, count, 1, false)
		}},
		{"Watermill, best found", func(ctx context.Context, n *NATS, count int) (time.Duration, error) {
			return stageWatermill(ctx, n, count, WatermillBestSubscribers, true)
		}},
	}
}

// Payload1K is a 1 KiB payload.
var Payload1K = func() []byte {
	b := make([]byte, 1024)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}()

// SeedStage stores count 1 KiB messages on INBOUND_0, each with a
// Nats-Msg-Id, by async publish (window 1000); it returns the publish rate.
func SeedStage(ctx context.Context, n *NATS, count int) (float64, error) {
	return asyncPublish(ctx, n, count, func(i int) *nats.Msg {
		m := nats.NewMsg(stageInSubj)
		m.Data = Payload1K
		m.Header.Set(jetstream.MsgIDHeader, "bench:1:"+strconv.Itoa(i))
		return m
	})
}

// asyncPublish publishes count messages from one publisher, at most 1000
// unacknowledged at once, and waits for every ack. It returns msgs/s.
func asyncPublish(ctx context.Context, n *NATS, count int, msg func(i int) *nats.Msg) (float64, error) {
	nc, js, err := n.Connect("bench-publisher")
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	start := time.Now()
	for i := range count {
		m := msg(i)
		for {
			_, err := js.PublishMsgAsync(m)
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				return 0, err
			}
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(2 * time.Minute):
		return 0, errors.New("async publish: acks did not all arrive within 2m")
	}
	el := time.Since(start)
	return float64(count) / el.Seconds(), nil
}

// waitDrained waits until the stream is empty (a work-queue stream drops a
// message once acked) and returns the time since start.
func waitDrained(ctx context.Context, n *NATS, stream string, start time.Time) (time.Duration, error) {
	if _, err := n.WaitMsgs(ctx, stream, 10*time.Millisecond, func(m uint64) bool { return m == 0 }); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// stageRaw: nats.go jetstream Consume() (MaxAckPending 1000 on the
// consumer), async publish with a window of 1000, ack after the publish ack
// (one goroutine waits on the acks in order).
func stageRaw(ctx context.Context, n *NATS, count int, withID bool) (time.Duration, error) {
	nc, js, err := n.Connect("stage-raw")
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	cons, err := js.Consumer(ctx, stageIn, streams.StageProcessor)
	if err != nil {
		return 0, err
	}
	type pending struct {
		f jetstream.PubAckFuture
		m jetstream.Msg
	}
	ch := make(chan pending, 4096)
	ackerDone := make(chan struct{})
	var failed atomic.Int64
	go func() {
		defer close(ackerDone)
		for p := range ch {
			select {
			case <-p.f.Ok():
				_ = p.m.Ack()
			case <-p.f.Err():
				failed.Add(1)
				_ = p.m.Nak()
			}
		}
	}()
	start := time.Now()
	cc, err := cons.Consume(func(m jetstream.Msg) {
		out := &nats.Msg{Subject: stageOutSubj, Data: m.Data(), Header: nats.Header{}}
		if withID {
			out.Header.Set(jetstream.MsgIDHeader, m.Headers().Get(jetstream.MsgIDHeader)+":out")
		}
		for {
			f, err := js.PublishMsgAsync(out)
			if err == nil {
				ch <- pending{f, m}
				return
			}
			if ctx.Err() != nil {
				return
			}
		}
	})
	if err != nil {
		close(ch)
		return 0, err
	}
	el, err := waitDrained(ctx, n, stageIn, start)
	cc.Stop()
	<-cc.Closed()
	close(ch)
	<-ackerDone
	if f := failed.Load(); f > 0 && err == nil {
		err = fmt.Errorf("%d publishes failed", f)
	}
	return el, err
}

// stageStreams: streams.NewConsumer with a handler that publishes through
// Publisher.Publish (which waits for the ack) and returns Ack, or, with
// forward, returns streams.Forward(out) (the runtime publishes
// asynchronously and acks on the publish ack). concurrency/maxInFlight 0
// keep the runtime's defaults (64 handler goroutines, the consumer's
// MaxAckPending).
func stageStreams(ctx context.Context, n *NATS, count, concurrency, maxInFlight int, forward bool) (time.Duration, error) {
	nc, js, err := n.Connect("stage-streams")
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	pub, err := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: n.Topo})
	if err != nil {
		return 0, err
	}
	outSubj := streams.Subject{Kind: streams.KindOutbound, Shard: 0, Account: "bench", Type: "webhook"}
	var failed atomic.Int64
	c, err := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: n.Topo, Stage: streams.StageProcessor, Shard: 0,
		Concurrency: concurrency, MaxInFlight: maxInFlight,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			out := streams.Message{Subject: outSubj, ID: m.ID + ":out", Generation: m.Generation, Data: m.Data}
			if forward {
				return streams.Forward(out)
			}
			if _, err := pub.Publish(ctx, out); err != nil {
				failed.Add(1)
				return streams.Retry(err)
			}
			return streams.Ack()
		},
	})
	if err != nil {
		return 0, err
	}
	rctx, cancel := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	start := time.Now()
	go func() { runDone <- c.Run(rctx) }()
	el, err := waitDrained(ctx, n, stageIn, start)
	cancel()
	if rerr := <-runDone; rerr != nil && err == nil {
		err = rerr
	}
	if f := failed.Load(); f > 0 && err == nil {
		err = fmt.Errorf("%d publishes failed", f)
	}
	if st := c.Stats(); st.Acked != int64(count) && err == nil {
		err = fmt.Errorf("acked %d of %d (retried %d, dead-lettered %d)", st.Acked, count, st.Retried, st.DeadLettered)
	}
	return el, err
}

// stageWatermill: Watermill's router over watermill-nats pkg/nats in
// JetStream mode (durable queue subscription, explicit manual acks), with
// the PoisonQueue, Retry and Recoverer middleware a production user
// installs. subscribers is SubscribersCount; asyncAck is JetStream.AckAsync
// (library default: false, AckSync).
func stageWatermill(ctx context.Context, n *NATS, count, subscribers int, asyncAck bool) (time.Duration, error) {
	// pkg/nats creates its own push consumer; a work-queue stream takes one
	// consumer per subject, so the pull consumer of the other variants goes.
	if err := n.JS.DeleteConsumer(ctx, stageIn, streams.StageProcessor); err != nil {
		return 0, err
	}
	logger := watermill.NopLogger{}
	marshaler := &wmnats.NATSMarshaler{}
	jsCfg := wmnats.JetStreamConfig{
		SubscribeOptions: []nats.SubOpt{nats.DeliverAll(), nats.AckExplicit(), nats.ManualAck(), nats.MaxAckPending(1000)},
		AckAsync:         asyncAck,
		DurablePrefix:    "watermill",
	}
	pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{URL: n.URL, Marshaler: marshaler, JetStream: jsCfg}, logger)
	if err != nil {
		return 0, err
	}
	defer pub.Close()
	sub, err := wmnats.NewSubscriber(wmnats.SubscriberConfig{
		URL: n.URL, QueueGroupPrefix: "watermill", SubscribersCount: subscribers,
		AckWaitTimeout: 30 * time.Second, Unmarshaler: marshaler, JetStream: jsCfg,
	}, logger)
	if err != nil {
		return 0, err
	}
	defer sub.Close()
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, logger)
	if err != nil {
		return 0, err
	}
	poison, err := middleware.PoisonQueue(pub, stageDLSubj)
	if err != nil {
		return 0, err
	}
	router.AddMiddleware(
		poison,
		middleware.Retry{MaxRetries: 3, InitialInterval: 100 * time.Millisecond, MaxInterval: time.Second, Multiplier: 2, Logger: logger}.Middleware,
		middleware.Recoverer,
	)
	router.AddHandler("stage", "inbound.0.>", sub, stageOutSubj, pub, func(msg *message.Message) ([]*message.Message, error) {
		return []*message.Message{message.NewMessage(watermill.NewUUID(), msg.Payload)}, nil
	})
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runDone := make(chan error, 1)
	start := time.Now()
	go func() { runDone <- router.Run(rctx) }()
	select {
	case <-router.Running():
	case err := <-runDone:
		return 0, fmt.Errorf("watermill router: %w", err)
	}
	el, err := waitDrained(ctx, n, stageIn, start)
	_ = router.Close()
	<-runDone
	return el, err
}
