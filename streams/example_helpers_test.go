package streams_test

import (
	"context"
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
