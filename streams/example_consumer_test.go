package streams_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

// NewConsumer binds a handler to one stage consumer on one shard; Run
// fetches and handles messages until its context ends, then stops
// gracefully. With Concurrency 1 a shard's messages are handled in order.
func ExampleNewConsumer() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "streams-example")
	defer os.RemoveAll(dir)
	srv, err := natsembed.Run(natsembed.Config{StoreDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.WaitForShutdown()
	defer srv.Shutdown()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	topo := streams.Topology{Shards: 1}.WithDefaults()
	if _, err := streams.Provision(ctx, js, topo, nil); err != nil {
		log.Fatal(err)
	}
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	for _, user := range []string{"u1", "u2", "u3"} {
		_, err := pub.Publish(ctx, streams.Message{
			Subject:    streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "acme", Type: "identify"},
			ID:         streams.MessageID("acme", 1, "identify-"+user),
			Generation: 1,
			Data:       []byte(`{"type":"identify","userId":"` + user + `"}`),
		})
		if err != nil {
			log.Fatal(err)
		}
	}

	handled := make(chan struct{}, 3)
	c, err := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: topo, Stage: streams.StageProcessor, Shard: 0, Concurrency: 1,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			fmt.Printf("%s %s delivery %d generation %d\n", m.Subject, m.ID, m.Delivered, m.Generation)
			handled <- struct{}{}
			return streams.Ack()
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- c.Run(runCtx) }()
	for range 3 {
		<-handled
	}
	stop()
	fmt.Println("Run returned:", <-done)
	// Output:
	// inbound.0.acme.identify acme:1:identify-u1 delivery 1 generation 1
	// inbound.0.acme.identify acme:1:identify-u2 delivery 1 generation 1
	// inbound.0.acme.identify acme:1:identify-u3 delivery 1 generation 1
	// Run returned: <nil>
}

// Ack says the message's effects are committed; the message leaves its
// work-queue stream.
func ExampleAck() {
	ctx := context.Background()
	js, topo, stop := exampleServer(ctx)
	defer stop()
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	if _, err := pub.Publish(ctx, streams.Message{
		Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "acme", Type: "track"},
		ID:      streams.MessageID("acme", 1, "m1"), Data: []byte(`{}`),
	}); err != nil {
		log.Fatal(err)
	}

	var rows atomic.Int64 // the handler's effect
	c, _ := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: topo, Stage: streams.StageProcessor, Shard: 0,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			rows.Add(1)          // commit first...
			return streams.Ack() // ...then ack
		},
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- c.Run(runCtx) }()
	for c.Stats().Acked < 1 {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	<-done
	s, _ := js.Stream(ctx, "INBOUND_0")
	info, _ := s.Info(ctx)
	fmt.Printf("rows %d, acked %d, left in INBOUND_0 %d\n", rows.Load(), c.Stats().Acked, info.State.Msgs)
	// Output:
	// rows 1, acked 1, left in INBOUND_0 0
}

// Retry redelivers a message after the next step of the consumer's BackOff
// schedule (never at once). On the last allowed delivery it would be
// dead-lettered instead.
func ExampleRetry() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "streams-example")
	defer os.RemoveAll(dir)
	srv, err := natsembed.Run(natsembed.Config{StoreDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.WaitForShutdown()
	defer srv.Shutdown()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	backoff := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond}
	topo := streams.Topology{Shards: 1, Consumers: []streams.ConsumerSpec{
		{Name: streams.StageSender, Kind: streams.KindOutbound, MaxDeliver: 5, BackOff: backoff},
	}}.WithDefaults()
	if _, err := streams.Provision(ctx, js, topo, nil); err != nil {
		log.Fatal(err)
	}
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	if _, err := pub.Publish(ctx, streams.Message{
		Subject: streams.Subject{Kind: streams.KindOutbound, Shard: 0, Account: "acme", Type: "webhook"},
		ID:      "acme:1:welcome", Data: []byte(`{}`),
	}); err != nil {
		log.Fatal(err)
	}

	acked := make(chan struct{})
	c, _ := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: topo, Stage: streams.StageSender, Shard: 0,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			if m.Delivered < 3 {
				fmt.Printf("delivery %d: receiver answered 503, retry\n", m.Delivered)
				return streams.Retry(errors.New("webhook: 503"))
			}
			fmt.Printf("delivery %d: delivered\n", m.Delivered)
			close(acked)
			return streams.Ack()
		},
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- c.Run(runCtx) }()
	<-acked
	stop()
	<-done
	fmt.Printf("retried %d, acked %d\n", c.Stats().Retried, c.Stats().Acked)
	// Output:
	// delivery 1: receiver answered 503, retry
	// delivery 2: receiver answered 503, retry
	// delivery 3: delivered
	// retried 2, acked 1
}

// RetryAfter is Retry at a delay the handler chooses, such as a receiver's
// Retry-After header.
func ExampleRetryAfter() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "streams-example")
	defer os.RemoveAll(dir)
	srv, err := natsembed.Run(natsembed.Config{StoreDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.WaitForShutdown()
	defer srv.Shutdown()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	topo := streams.Topology{Shards: 1, Consumers: []streams.ConsumerSpec{
		{Name: streams.StageSender, Kind: streams.KindOutbound, BackOff: []time.Duration{100 * time.Millisecond}},
	}}.WithDefaults()
	if _, err := streams.Provision(ctx, js, topo, nil); err != nil {
		log.Fatal(err)
	}
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	if _, err := pub.Publish(ctx, streams.Message{
		Subject: streams.Subject{Kind: streams.KindOutbound, Shard: 0, Account: "acme", Type: "webhook"},
		ID:      "acme:1:welcome", Data: []byte(`{}`),
	}); err != nil {
		log.Fatal(err)
	}

	var first atomic.Int64 // when delivery 1 was handled (handlers run on several goroutines)
	acked := make(chan struct{})
	c, _ := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: topo, Stage: streams.StageSender, Shard: 0,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			if m.Delivered == 1 {
				first.Store(time.Now().UnixNano())
				fmt.Println("delivery 1: 429, Retry-After 400ms")
				return streams.RetryAfter(400*time.Millisecond, errors.New("webhook: 429"))
			}
			fmt.Printf("delivery %d, at least 400ms later: %v\n", m.Delivered, time.Since(time.Unix(0, first.Load())) >= 400*time.Millisecond)
			close(acked)
			return streams.Ack()
		},
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- c.Run(runCtx) }()
	<-acked
	stop()
	<-done
	// Output:
	// delivery 1: 429, Retry-After 400ms
	// delivery 2, at least 400ms later: true
}

// DeadLetter gives up on a message for good: it goes to its shard's
// dead-letter stream now, in an envelope that keeps everything needed to
// inspect and replay it, and leaves the stage stream.
func ExampleDeadLetter() {
	ctx := context.Background()
	js, topo, stop := exampleServer(ctx)
	defer stop()
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	if _, err := pub.Publish(ctx, streams.Message{
		Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "acme", Type: "track"},
		ID:      streams.MessageID("acme", 1, "m1"), Data: []byte(`{"type":"track",`),
	}); err != nil {
		log.Fatal(err)
	}

	c, _ := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: topo, Stage: streams.StageProcessor, Shard: 0,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			var ev map[string]any
			if err := json.Unmarshal(m.Data, &ev); err != nil {
				return streams.DeadLetter(streams.ClassUndecodable, errors.New("decode event: unexpected end of JSON input"))
			}
			return streams.Ack()
		},
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- c.Run(runCtx) }()
	for c.Stats().DeadLettered < 1 {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	<-done

	dls, _ := js.Stream(ctx, "DEADLETTER_0")
	raw, err := dls.GetMsg(ctx, 1)
	if err != nil {
		log.Fatal(err)
	}
	var env schemas.DeadLetter
	_ = json.Unmarshal(raw.Data, &env)
	fmt.Println("subject:", raw.Subject)
	fmt.Println("id:", env.ID)
	fmt.Println("original:", env.OriginalSubject, string(env.Payload))
	fmt.Println("stage:", env.Stage, "class:", env.ErrorClass, "attempts:", env.Attempts)
	fmt.Println("error:", env.Error)
	in, _ := js.Stream(ctx, "INBOUND_0")
	info, _ := in.Info(ctx)
	fmt.Println("left in INBOUND_0:", info.State.Msgs)
	// Output:
	// subject: deadletter.0.acme.processor
	// id: INBOUND_0:1
	// original: inbound.0.acme.track {"type":"track",
	// stage: processor class: undecodable attempts: 1
	// error: decode event: unexpected end of JSON input
	// left in INBOUND_0: 0
}

// Drop terminates a message that must be neither processed nor
// dead-lettered, counted by its reason. (The account gate drops the messages
// of deleted accounts this way before the handler runs: see
// ConsumerConfig.Gate.)
func ExampleDrop() {
	ctx := context.Background()
	js, topo, stop := exampleServer(ctx)
	defer stop()
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	for i, typ := range []string{"track", "test", "track"} {
		if _, err := pub.Publish(ctx, streams.Message{
			Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "acme", Type: typ},
			ID:      streams.MessageID("acme", 1, fmt.Sprint(i)), Data: []byte(`{}`),
		}); err != nil {
			log.Fatal(err)
		}
	}

	c, _ := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: topo, Stage: streams.StageProcessor, Shard: 0,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			if m.Subject.Type == "test" {
				return streams.Drop("test_traffic")
			}
			return streams.Ack()
		},
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- c.Run(runCtx) }()
	for st := c.Stats(); st.Acked+st.Dropped < 3; st = c.Stats() {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	<-done
	st := c.Stats()
	fmt.Printf("acked %d, dropped %d, dead-lettered %d\n", st.Acked, st.Dropped, st.DeadLettered)
	// Output:
	// acked 2, dropped 1, dead-lettered 0
}

// Unavailable reports that a dependency every message needs is down. The
// consumer stops fetching, holds the message without using up a delivery
// attempt, reports not ready, and calls the handler again every
// ProbeInterval until it answers something else.
func ExampleUnavailable() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "streams-example")
	defer os.RemoveAll(dir)
	srv, err := natsembed.Run(natsembed.Config{StoreDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.WaitForShutdown()
	defer srv.Shutdown()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	topo := streams.Topology{Shards: 1, Consumers: []streams.ConsumerSpec{
		{Name: streams.StageProcessor, Kind: streams.KindInbound, MaxDeliver: 2, BackOff: []time.Duration{100 * time.Millisecond}},
	}}.WithDefaults()
	if _, err := streams.Provision(ctx, js, topo, nil); err != nil {
		log.Fatal(err)
	}
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	if _, err := pub.Publish(ctx, streams.Message{
		Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "acme", Type: "identify"},
		ID:      streams.MessageID("acme", 1, "m1"), Data: []byte(`{}`),
	}); err != nil {
		log.Fatal(err)
	}

	var databaseUp atomic.Bool
	acked := make(chan int, 1)
	c, _ := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: topo, Stage: streams.StageProcessor, Shard: 0,
		ProbeInterval: 50 * time.Millisecond,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			if !databaseUp.Load() {
				return streams.Unavailable(errors.New("postgres: connection refused"))
			}
			acked <- m.Delivered
			return streams.Ack()
		},
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- c.Run(runCtx) }()
	for c.Ready() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("ready:", c.Ready())
	time.Sleep(500 * time.Millisecond) // longer than MaxDeliver × ack wait
	databaseUp.Store(true)
	fmt.Println("handled on delivery", <-acked)
	stop()
	<-done
	fmt.Printf("ready: %v, dead-lettered %d\n", c.Ready(), c.Stats().DeadLettered)
	// Output:
	// ready: processor shard 0 holding messages: dependency unavailable: postgres: connection refused
	// handled on delivery 1
	// ready: <nil>, dead-lettered 0
}

// Defer sets one message aside for a while without using up a delivery
// attempt or holding a slot the others need (its receiver's circuit breaker
// is open, say): a JetStream message schedule puts a copy back on its
// subject later, with Deferrals counting the deferrals.
func ExampleDefer() {
	ctx := context.Background()
	js, topo, stop := exampleServer(ctx)
	defer stop()
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	if _, err := pub.Publish(ctx, streams.Message{
		Subject: streams.Subject{Kind: streams.KindOutbound, Shard: 0, Account: "acme", Type: "webhook"},
		ID:      "acme:1:welcome", Data: []byte(`{}`),
	}); err != nil {
		log.Fatal(err)
	}

	acked := make(chan struct{})
	c, _ := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: topo, Stage: streams.StageSender, Shard: 0,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			fmt.Printf("%s delivery %d deferrals %d\n", m.ID, m.Delivered, m.Deferrals)
			if m.Deferrals == 0 {
				return streams.Defer(time.Second, "breaker_open")
			}
			close(acked)
			return streams.Ack()
		},
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- c.Run(runCtx) }()
	<-acked
	stop()
	<-done
	fmt.Printf("deferred %d, acked %d\n", c.Stats().Deferred, c.Stats().Acked)
	// Output:
	// acme:1:welcome delivery 1 deferrals 0
	// acme:1:welcome delivery 1 deferrals 1
	// deferred 1, acked 1
}

// A Brake slows a consumer whose messages nearly all end dead-lettered, so
// a shard flooded with poison leaves the CPU and the database it shares
// with the other shards to them. Every message still reaches the
// dead-letter stream; the brake lets go once messages succeed again.
func ExampleBrake() {
	ctx := context.Background()
	js, topo, stop := exampleServer(ctx)
	defer stop()
	examplePoison(ctx, js, topo, 300)

	c, _ := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: topo, Stage: streams.StageProcessor, Shard: 0,
		Brake: streams.Brake{Above: 0.9, Rate: 500}, // over 90% dead-lettered: at most 500/s
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			return streams.DeadLetter(streams.ClassPermanent, errors.New("jsonb refuses \\u0000"))
		},
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- c.Run(runCtx) }()
	braked := false
	for c.Stats().DeadLettered < 300 {
		braked = braked || c.Stats().Braked
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	<-done
	fmt.Println("braked on the way:", braked)
	fmt.Println("dead-lettered:", c.Stats().DeadLettered)
	// Output:
	// braked on the way: true
	// dead-lettered: 300
}

// An ingress watches the brake advisories of every stage and slows the
// accounts they name: here a stage whose messages from acme all fail
// announces acme, and the watcher reports it braked at the stage's rate.
func ExampleWatchBrakes() {
	ctx := context.Background()
	js, topo, stop := exampleServer(ctx)
	defer stop()
	w, err := streams.WatchBrakes(js.Conn(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	examplePoison(ctx, js, topo, 200)
	c, _ := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: topo, Stage: streams.StageProcessor, Shard: 0,
		Brake: streams.Brake{Above: 0.9, Rate: 100, Announce: true},
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			return streams.DeadLetter(streams.ClassPermanent, errors.New("jsonb refuses \\u0000"))
		},
	})
	runCtx, stopRun := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- c.Run(runCtx) }()
	deadline := time.Now().Add(10 * time.Second)
	rate, braked := w.Braked("acme")
	for !braked && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		rate, braked = w.Braked("acme")
	}
	stopRun()
	<-done
	fmt.Printf("acme braked: %v, let through at %.0f/s\n", braked, rate)
	_, other := w.Braked("globex")
	fmt.Println("globex braked:", other)
	// Output:
	// acme braked: true, let through at 100/s
	// globex braked: false
}

// Forward is how a stage turns a message into others: the handler returns
// the messages, the runtime publishes them asynchronously and acks the input
// once JetStream stored every one — the handler does not wait per message.
func ExampleForward() {
	ctx := context.Background()
	js, topo, stop := exampleServer(ctx)
	defer stop()
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	if _, err := pub.Publish(ctx, streams.Message{
		Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "acme", Type: "track"},
		ID:      streams.MessageID("acme", 1, "m1"), Data: []byte(`{"event":"Signed Up"}`),
	}); err != nil {
		log.Fatal(err)
	}

	c, _ := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: topo, Stage: streams.StageProcessor, Shard: 0,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			return streams.Forward(streams.Message{
				Subject: streams.Subject{Kind: streams.KindOutbound, Shard: 0, Account: m.Subject.Account, Type: "webhook"},
				ID:      m.ID + ":welcome", // derived from the input's id: a retry is deduplicated
				Data:    []byte(`{"template":"welcome"}`),
			})
		},
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- c.Run(runCtx) }()
	for c.Stats().Acked < 1 {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	<-done

	out, _ := js.Stream(ctx, "OUTBOUND_0")
	raw, _ := out.GetMsg(ctx, 1)
	fmt.Println(raw.Subject, raw.Header.Get("Nats-Msg-Id"), string(raw.Data))
	// Output:
	// outbound.0.acme.webhook acme:1:m1:welcome {"template":"welcome"}
}
