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

// OpenDirectory loads the account directory from its KV bucket and keeps
// it current: a change written by the accounts service reaches every
// instance within milliseconds. It is the default account gate of inbound
// and outbound stages.
func ExampleOpenDirectory() {
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
	if err := streams.ProvisionDirectory(ctx, js, 1); err != nil {
		log.Fatal(err)
	}
	kv, _ := streams.DirectoryKV(ctx, js)
	_ = streams.PutAccount(ctx, kv, streams.Account{ID: "acme", Shard: 3, Status: streams.StatusActive, Generation: 1, WriteKey: "wk_acme"})

	d, err := streams.OpenDirectory(ctx, js, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	a, _ := d.ByWriteKey("wk_acme")
	fmt.Printf("%s: shard %d, %s, generation %d\n", a.ID, a.Shard, a.Status, a.Generation)

	// The accounts service deletes the account (bumping its generation);
	// this instance sees it.
	a.Status, a.Generation = streams.StatusDeleted, 2
	_ = streams.PutAccount(ctx, kv, a)
	_ = d.Wait(ctx, "acme", func(a streams.Account, ok bool) bool { return a.Status == streams.StatusDeleted })
	status, gen, known := d.AccountState("acme")
	fmt.Println("gate:", status, gen, known)
	_, _, known = d.AccountState("nobody")
	fmt.Println("unknown account known:", known)
	// Output:
	// acme: shard 3, active, generation 1
	// gate: deleted 2 true
	// unknown account known: false
}
