package streams_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync"

	"github.com/shardflow/shardflow/streams"
)

// Publish stores one message and waits for JetStream's acknowledgement. The
// id carries the account's generation; publishing it again inside the
// duplicate window is acknowledged as a duplicate and stored once. A message
// over the size limit is refused before anything is sent.
func ExamplePublisher_Publish() {
	ctx := context.Background()
	js, topo, stop := exampleServer(ctx)
	defer stop()

	pub, err := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	if err != nil {
		log.Fatal(err)
	}
	msg := streams.Message{
		Subject:    streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "acme", Type: "track"},
		ID:         streams.MessageID("acme", 1, "order-42"),
		Generation: 1,
		Data:       []byte(`{"type":"track","userId":"u1","event":"Order Completed"}`),
	}
	for range 2 {
		res, err := pub.Publish(ctx, msg)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s -> %s seq %d duplicate %v\n", msg.ID, res.Stream, res.Sequence, res.Duplicate)
	}

	msg.ID = streams.MessageID("acme", 1, "huge")
	msg.Data = make([]byte, topo.MaxMsgSize(streams.KindInbound)+1)
	_, err = pub.Publish(ctx, msg)
	fmt.Println("too large:", errors.Is(err, streams.ErrTooLarge))
	// Output:
	// acme:1:order-42 -> INBOUND_0 seq 1 duplicate false
	// acme:1:order-42 -> INBOUND_0 seq 1 duplicate true
	// too large: true
}

// PublishBatch stores up to MaxBatch messages of one stream as one atomic
// batch: all of them or none. Sending the same batch again (a client retrying
// its request) stores nothing twice.
func ExamplePublisher_PublishBatch() {
	ctx := context.Background()
	js, topo, stop := exampleServer(ctx)
	defer stop()

	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	var batch []streams.Message
	for i := range 3 {
		batch = append(batch, streams.Message{
			Subject:    streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "acme", Type: "track"},
			ID:         streams.MessageID("acme", 1, fmt.Sprintf("m%d", i)),
			Generation: 1,
			Data:       []byte(`{"type":"track","userId":"u1","event":"Page Viewed"}`),
		})
	}
	for attempt := 1; attempt <= 2; attempt++ {
		if err := pub.PublishBatch(ctx, batch); err != nil {
			log.Fatal(err)
		}
		s, _ := js.Stream(ctx, "INBOUND_0")
		info, _ := s.Info(ctx)
		fmt.Printf("attempt %d: INBOUND_0 holds %d messages\n", attempt, info.State.Msgs)
	}
	// Output:
	// attempt 1: INBOUND_0 holds 3 messages
	// attempt 2: INBOUND_0 holds 3 messages
}

// PurgeSubject removes an account's messages from a stream (one filtered
// purge per stream of its shard is how an account is deleted) and says how
// many it removed.
func ExamplePurgeSubject() {
	ctx := context.Background()
	js, topo, stop := exampleServer(ctx)
	defer stop()
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	for i, account := range []string{"acme", "acme", "acme", "globex", "globex"} {
		_, err := pub.Publish(ctx, streams.Message{
			Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: account, Type: "track"},
			ID:      streams.MessageID(account, 1, fmt.Sprint(i)),
			Data:    []byte(`{}`),
		})
		if err != nil {
			log.Fatal(err)
		}
	}

	filter := streams.AccountFilter(streams.KindInbound, 0, "acme") // inbound.0.acme.>
	purged, err := streams.PurgeSubject(ctx, js.Conn(), "INBOUND_0", filter)
	if err != nil {
		log.Fatal(err)
	}
	left, _ := streams.CountSubject(ctx, js, "INBOUND_0", "inbound.0.>")
	fmt.Printf("purged %d messages matching %s; %d left\n", purged, filter, left)
	// Output:
	// purged 3 messages matching inbound.0.acme.>; 2 left
}

// With GroupCommit, concurrent PublishBatch calls for one stream share
// atomic batches (each call still all-or-nothing): the server's cost is
// mostly per batch, so an HTTP edge serving many clients stores far more
// per second.
func ExamplePublisherConfig_groupCommit() {
	ctx := context.Background()
	js, topo, stop := exampleServer(ctx)
	defer stop()

	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo, GroupCommit: 1})
	var wg sync.WaitGroup
	for c := range 8 { // eight concurrent requests of 50 events
		wg.Add(1)
		go func() {
			defer wg.Done()
			var batch []streams.Message
			for i := range 50 {
				batch = append(batch, streams.Message{
					Subject:    streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "acme", Type: "track"},
					ID:         streams.MessageID("acme", 1, fmt.Sprintf("c%d-m%d", c, i)),
					Generation: 1,
					Data:       []byte(`{"type":"track","userId":"u1","event":"Page Viewed"}`),
				})
			}
			if err := pub.PublishBatch(ctx, batch); err != nil {
				log.Fatal(err)
			}
		}()
	}
	wg.Wait()
	s, _ := js.Stream(ctx, "INBOUND_0")
	info, _ := s.Info(ctx)
	fmt.Printf("INBOUND_0 holds %d messages\n", info.State.Msgs)
	// Output:
	// INBOUND_0 holds 400 messages
}
