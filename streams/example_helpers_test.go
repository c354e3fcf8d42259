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

// exampleServer is the set-up ExampleNewConsumer shows in full: an
// embedded server with a fresh store, a connection, and a provisioned
// one-shard topology. stop shuts it all down.
func exampleServer(ctx context.Context) (jetstream.JetStream, streams.Topology, func()) {
	dir, _ := os.MkdirTemp("", "streams-example")
	srv, err := natsembed.Run(natsembed.Config{StoreDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	topo := streams.Topology{Shards: 1}.WithDefaults()
	if _, err := streams.Provision(ctx, js, topo, nil); err != nil {
		log.Fatal(err)
	}
	return js, topo, func() {
		nc.Close()
		srv.Shutdown()
		srv.WaitForShutdown()
		os.RemoveAll(dir)
	}
}

// examplePoison stores n identify events of acme that a stage can only
// dead-letter (traits holding a NUL, which Postgres' jsonb refuses).
func examplePoison(ctx context.Context, js jetstream.JetStream, topo streams.Topology, n int) {
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	var batch []streams.Message
	for i := range n {
		batch = append(batch, streams.Message{
			Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "acme", Type: "identify"},
			ID:      streams.MessageID("acme", 1, fmt.Sprintf("poison-%d", i)), Data: []byte(`{"traits":"\u0000"}`),
		})
	}
	if err := pub.PublishBatch(ctx, batch); err != nil {
		log.Fatal(err)
	}
}
