package streams_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The embedded server and nats.go keep a few process-wide goroutines.
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine.func1"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine"),
		goleak.IgnoreTopFunction("time.Sleep"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*ipQueue[...]).push"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.startFileStoreFlusher"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*fileStore).flushLoop"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*client).writeLoop"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*client).readLoop"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).acceptConnections"),
	)
}

type env struct {
	js   jetstream.JetStream
	nc   *nats.Conn
	topo streams.Topology
	url  string
}

// fastTopology is a small topology with a quick retry schedule for tests.
func fastTopology() streams.Topology {
	return streams.Topology{
		Shards: 2,
		Consumers: []streams.ConsumerSpec{
			{Name: streams.StageProcessor, Kind: streams.KindInbound, MaxDeliver: 4, BackOff: []time.Duration{300 * time.Millisecond, 600 * time.Millisecond, 900 * time.Millisecond}, MaxAckPending: 100},
			{Name: streams.StageSender, Kind: streams.KindOutbound, MaxDeliver: 3, BackOff: []time.Duration{200 * time.Millisecond}, MaxAckPending: 50},
			{Name: streams.StageIndexer, Kind: streams.KindDeadLetter},
		},
	}.WithDefaults()
}

func setup(t *testing.T, topo streams.Topology) *env {
	t.Helper()
	s := natsembed.Test(t)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := streams.Provision(t.Context(), js, topo, nil); err != nil {
		t.Fatal(err)
	}
	return &env{js: js, nc: nc, topo: topo, url: s.ClientURL()}
}

func (e *env) publisher(t *testing.T) *streams.Publisher {
	t.Helper()
	p, err := streams.NewPublisher(streams.PublisherConfig{JetStream: e.js, Topology: e.topo})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// publishN publishes n inbound track messages for account on shard.
func (e *env) publishN(t *testing.T, shard int, account string, n int, payload []byte) {
	t.Helper()
	p := e.publisher(t)
	batch := make([]streams.Message, 0, 500)
	flush := func() {
		if err := p.PublishBatch(t.Context(), batch); err != nil {
			t.Fatal(err)
		}
		batch = batch[:0]
	}
	for i := range n {
		batch = append(batch, streams.Message{
			Subject:    streams.Subject{Kind: streams.KindInbound, Shard: shard, Account: account, Type: "track"},
			ID:         streams.MessageID(account, 1, fmt.Sprintf("m%d", i)),
			Generation: 1,
			Data:       payload,
		})
		if len(batch) == cap(batch) {
			flush()
		}
	}
	flush()
}

// run starts c and returns a function that stops it and waits.
func run(t *testing.T, c *streams.Consumer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("consumer did not stop within 30s")
		}
	}
	t.Cleanup(stop)
	return stop
}

// eventually polls f until it returns nil or the deadline passes.
func eventually(t *testing.T, within time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func streamMsgs(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}
