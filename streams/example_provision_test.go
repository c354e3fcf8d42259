package streams_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

// Provision makes the server match the topology and reports what it did to
// each stream and consumer; the second run changes nothing.
func ExampleProvision() {
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
	rep, err := streams.Provision(ctx, js, topo, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(rep)
	rep, _ = streams.Provision(ctx, js, topo, nil)
	fmt.Println("second run changed anything:", rep.Changed())
	// Output:
	// created   INBOUND_0
	// created   INBOUND_0/processor
	// created   OUTBOUND_0
	// created   OUTBOUND_0/sender
	// created   ACCOUNTS_0
	// created   ACCOUNTS_0/accounts
	// created   DEADLETTER_0
	// created   DEADLETTER_0/indexer
	// 8 created, 0 updated, 0 unchanged, 0 drift
	// second run changed anything: false
}

// A service team declares its own consumer in the topology and provisions
// just that consumer. It must read a stream several consumers may share
// (account events, dead letters): a second consumer of a work-queue stream
// is refused, with the reason.
func ExampleProvisionConsumer() {
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
	if _, err := streams.Provision(ctx, js, streams.Topology{Shards: 2}.WithDefaults(), nil); err != nil {
		log.Fatal(err) // the platform's streams, as `sfctl provision` creates them
	}

	spec, err := streams.ParseConsumerSpec("auditsink:accounts:max_deliver=10")
	if err != nil {
		log.Fatal(err)
	}
	topo := streams.Topology{Shards: 2, Consumers: append(streams.DefaultConsumers(), spec)}.WithDefaults()
	rep, err := streams.ProvisionConsumer(ctx, js, topo, "auditsink", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(rep)

	thief := streams.Topology{Shards: 2, Consumers: append(streams.DefaultConsumers(),
		streams.ConsumerSpec{Name: "mirror", Kind: streams.KindInbound})}.WithDefaults()
	_, err = streams.ProvisionConsumer(ctx, js, thief, "mirror", nil)
	fmt.Println(err)
	// Output:
	// created   ACCOUNTS_0/auditsink
	// created   ACCOUNTS_1/auditsink
	// 2 created, 0 updated, 0 unchanged, 0 drift
	// streams: consumer "mirror" cannot read inbound streams: they are work queues, read by "processor" alone (each message is one stage's work; the server refuses a second consumer on a subject); read accounts or deadletter streams instead
}
