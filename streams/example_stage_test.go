package streams_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

// RunStage runs a team's own consumer: here an audit consumer of the account
// lifecycle events, declared beside the built-in consumers. ACCOUNTS_n keeps
// its history for every consumer (limits retention), so it reads every
// event while the accounts service's own consumer reads them too. RunStage
// returns once its context ends and the stage has stopped gracefully.
func ExampleRunStage() {
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
	topo := streams.Topology{
		Shards:    1,
		Consumers: append(streams.DefaultConsumers(), streams.ConsumerSpec{Name: "auditsink", Kind: streams.KindAccounts}),
	}.WithDefaults()
	if _, err := streams.Provision(ctx, js, topo, nil); err != nil {
		log.Fatal(err)
	}
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	for _, typ := range []string{"created", "suspended", "deleted"} {
		data, _ := json.Marshal(map[string]any{"type": typ, "account": "acme", "shard": 0, "generation": 1, "at": time.Now().UTC()})
		if _, err := pub.Publish(ctx, streams.Message{
			Subject: streams.Subject{Kind: streams.KindAccounts, Shard: 0, Account: "acme", Type: typ},
			ID:      streams.MessageID("acme", 1, typ), Generation: 1, Data: data,
		}); err != nil {
			log.Fatal(err)
		}
	}

	runCtx, stop := context.WithCancel(ctx)
	seen := 0
	err = streams.RunStage(runCtx, streams.StageConfig{
		Conn: nc, Topology: topo, Stage: "auditsink", Concurrency: 1,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			fmt.Printf("audit: %s %s (%s seq %d)\n", m.Subject.Account, m.Subject.Type, m.Stream, m.Sequence)
			if seen++; seen == 3 {
				stop() // a SIGTERM, in a real service
			}
			return streams.Ack()
		},
	})
	fmt.Println("RunStage returned:", err)
	// Output:
	// audit: acme created (ACCOUNTS_0 seq 1)
	// audit: acme suspended (ACCOUNTS_0 seq 2)
	// audit: acme deleted (ACCOUNTS_0 seq 3)
	// RunStage returned: <nil>
}

// NewStage builds the stage without running it, for a service that serves
// Ready from its health endpoint. On inbound and outbound stages the default
// account gate is the directory: a deleted account's message is dropped
// before the handler sees it.
func ExampleNewStage() {
	ctx := context.Background()
	js, topo, stop := exampleServer(ctx)
	defer stop()
	kv, _ := streams.DirectoryKV(ctx, js)
	_ = streams.PutAccount(ctx, kv, streams.Account{ID: "acme", Status: streams.StatusActive, Generation: 1})
	_ = streams.PutAccount(ctx, kv, streams.Account{ID: "gone", Status: streams.StatusDeleted, Generation: 2})
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	for _, account := range []string{"gone", "acme"} {
		if _, err := pub.Publish(ctx, streams.Message{
			Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: account, Type: "track"},
			ID:      streams.MessageID(account, 1, "m1"), Generation: 1, Data: []byte(`{}`),
		}); err != nil {
			log.Fatal(err)
		}
	}

	stage, err := streams.NewStage(ctx, streams.StageConfig{
		Conn: js.Conn(), Topology: topo, Stage: streams.StageProcessor,
		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
			fmt.Println("handled", m.Subject)
			return streams.Ack()
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("before Run:", stage.Ready())
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- stage.Run(runCtx) }()
	for st := stage.Stats(); st.Acked+st.Dropped < 2; st = stage.Stats() {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("running:", stage.Ready())
	stop()
	<-done
	st := stage.Stats()
	fmt.Printf("acked %d, dropped %d (account_deleted)\n", st.Acked, st.Dropped)
	// Output:
	// before Run: stage processor: not running
	// handled inbound.0.acme.track
	// running: <nil>
	// acked 1, dropped 1 (account_deleted)
}
