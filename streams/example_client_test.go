package streams_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

// A Client publishes an event for an account in one call: the account's
// shard and generation come from the directory, the id is built with the
// generation, the size is checked before sending and the caller's trace
// context travels in the headers. Closed and unknown accounts are refused.
func ExampleClient_Publish() {
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
	topo := streams.Topology{Shards: 2}.WithDefaults()
	if _, err := streams.Provision(ctx, js, topo, nil); err != nil {
		log.Fatal(err)
	}
	kv, _ := streams.DirectoryKV(ctx, js) // the accounts service writes these
	_ = streams.PutAccount(ctx, kv, streams.Account{ID: "acme", Shard: 1, Status: streams.StatusActive, Generation: 3})
	_ = streams.PutAccount(ctx, kv, streams.Account{ID: "initech", Shard: 0, Status: streams.StatusSuspended, Generation: 1})

	client, err := streams.NewClient(ctx, streams.ClientConfig{Conn: nc, Topology: topo})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	event := []byte(`{"type":"track","userId":"u1","event":"Order Completed"}`)
	for range 2 { // a retry with the same id is stored once
		if err := client.Publish(ctx, "acme", "track", "order-42", event); err != nil {
			log.Fatal(err)
		}
	}
	s, _ := js.Stream(ctx, "INBOUND_1")
	raw, _ := s.GetMsg(ctx, 1)
	info, _ := s.Info(ctx)
	fmt.Println(raw.Subject, raw.Header.Get(jetstream.MsgIDHeader), "stored:", info.State.Msgs)

	err = client.Publish(ctx, "initech", "track", "order-1", event)
	fmt.Println("suspended:", errors.Is(err, streams.ErrAccountClosed))
	err = client.Publish(ctx, "nobody", "track", "order-1", event)
	fmt.Println("unknown:", errors.Is(err, streams.ErrUnknownAccount))
	err = client.Publish(ctx, "acme", "track", "order-43", make([]byte, 64<<10))
	fmt.Println("too large:", errors.Is(err, streams.ErrTooLarge))
	// Output:
	// inbound.1.acme.track acme:3:order-42 stored: 1
	// suspended: true
	// unknown: true
	// too large: true
}
