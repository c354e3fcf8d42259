package streams_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

func TestParseConsumerSpec(t *testing.T) {
	for _, c := range []struct {
		in   string
		want streams.ConsumerSpec
		err  string
	}{
		{in: "auditsink:accounts", want: streams.ConsumerSpec{Name: "auditsink", Kind: streams.KindAccounts}},
		{in: " audit:deadletter:max_deliver=10:backoff=1s/5s/30s:max_ack_pending=64 ", want: streams.ConsumerSpec{
			Name: "audit", Kind: streams.KindDeadLetter, MaxDeliver: 10, MaxAckPending: 64,
			BackOff: []time.Duration{time.Second, 5 * time.Second, 30 * time.Second},
		}},
		{in: "auditsink", err: "want name:kind"},
		{in: "auditsink:events", err: `unknown kind "events"`},
		{in: "a.b:accounts", err: "invalid consumer name"},
		{in: "auditsink:accounts:max_deliver", err: "is not key=value"},
		{in: "auditsink:accounts:max_deliver=ten", err: "max_deliver"},
		{in: "auditsink:accounts:backoff=1s/soon", err: "backoff"},
		{in: "auditsink:accounts:colour=blue", err: "unknown key"},
	} {
		got, err := streams.ParseConsumerSpec(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseConsumerSpec(%q) error = %v, want one containing %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got.Name != c.want.Name || got.Kind != c.want.Kind || got.MaxDeliver != c.want.MaxDeliver ||
			got.MaxAckPending != c.want.MaxAckPending || !slices.Equal(got.BackOff, c.want.BackOff) {
			t.Errorf("ParseConsumerSpec(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

func TestNewStageRefusesBadConfig(t *testing.T) {
	e := setup(t, fastTopology())
	ok := func(context.Context, *streams.Msg) streams.Outcome { return streams.Ack() }
	for _, c := range []struct {
		name string
		cfg  streams.StageConfig
		err  string
	}{
		{"no handler", streams.StageConfig{Conn: e.nc, Topology: e.topo, Stage: streams.StageProcessor}, "needs Stage and Handler"},
		{"no connection", streams.StageConfig{Topology: e.topo, Stage: streams.StageProcessor, Handler: ok}, "needs Conn"},
		{"undeclared stage", streams.StageConfig{Conn: e.nc, Topology: e.topo, Stage: "auditsink", Handler: ok}, "not declared in the topology"},
		{"shard out of range", streams.StageConfig{Conn: e.nc, Topology: e.topo, Stage: streams.StageProcessor, Handler: ok, Shards: []int{2}}, "out of range"},
		{"shard twice", streams.StageConfig{Conn: e.nc, Topology: e.topo, Stage: streams.StageProcessor, Handler: ok, Shards: []int{1, 1}}, "listed twice"},
	} {
		if _, err := streams.NewStage(t.Context(), c.cfg); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: NewStage error = %v, want one containing %q", c.name, err, c.err)
		}
	}
}

// A stage whose topology asks for more than the streams carry refuses to
// start (failure F2 of the design), naming both numbers.
func TestNewStageRefusesLimitMismatch(t *testing.T) {
	e := setup(t, fastTopology())
	bigger := e.topo
	bigger.MaxEventBytes *= 2
	_, err := streams.NewStage(t.Context(), streams.StageConfig{
		Conn: e.nc, Topology: bigger, Stage: streams.StageProcessor,
		Handler: func(context.Context, *streams.Msg) streams.Outcome { return streams.Ack() },
	})
	if !errors.Is(err, streams.ErrLimitMismatch) || !strings.Contains(err.Error(), "refuses to start") {
		t.Fatalf("NewStage with a doubled event limit: %v", err)
	}
}

func TestProvisionConsumerIsIdempotentAndNeedsItsStreams(t *testing.T) {
	e := setup(t, fastTopology())
	topo := e.topo
	topo.Consumers = append(slices.Clone(topo.Consumers), streams.ConsumerSpec{Name: "audit", Kind: streams.KindDeadLetter})
	topo = topo.WithDefaults()
	rep, err := streams.ProvisionConsumer(t.Context(), e.js, topo, "audit", nil)
	if err != nil || rep.Count(streams.ActionCreated) != topo.Shards {
		t.Fatalf("first ProvisionConsumer: %v\n%s", err, rep)
	}
	rep, err = streams.ProvisionConsumer(t.Context(), e.js, topo, "audit", nil)
	if err != nil || rep.Changed() || rep.Count(streams.ActionUnchanged) != topo.Shards {
		t.Fatalf("second ProvisionConsumer changed something: %v\n%s", err, rep)
	}
	if _, err := streams.ProvisionConsumer(t.Context(), e.js, topo, "nobody", nil); err == nil {
		t.Fatal("ProvisionConsumer of an undeclared consumer succeeded")
	}

	// Against a server without the platform's streams it says what to do.
	empty := natsembed.Test(t)
	js := connectJS(t, empty)
	if _, err := streams.ProvisionConsumer(t.Context(), js, topo, "audit", nil); err == nil || !strings.Contains(err.Error(), "provision the topology first") {
		t.Fatalf("ProvisionConsumer without streams: %v", err)
	}
}

func connectJS(t *testing.T, s *server.Server) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
