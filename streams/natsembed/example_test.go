package natsembed_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams/natsembed"
)

// Run starts a real nats-server with JetStream in this process (a free
// port, data in the given directory) and returns once it accepts
// connections. Shut it down when done. In tests, Test does all of it with a
// temporary directory and a cleanup.
func ExampleRun() {
	dir, err := os.MkdirTemp("", "natsembed-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	srv, err := natsembed.Run(natsembed.Config{StoreDir: dir, SyncAlways: true})
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
	info, err := js.AccountInfo(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("JetStream streams:", info.Streams)
	fmt.Println("max_payload:", nc.MaxPayload())
	// Output:
	// JetStream streams: 0
	// max_payload: 1048576
}
