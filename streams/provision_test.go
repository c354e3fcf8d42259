package streams_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

func TestProvisionTwiceIsNoOp(t *testing.T) {
	e := setup(t, fastTopology()) // first application inside setup
	rep, err := streams.Provision(t.Context(), e.js, e.topo, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Changed() || rep.Count(streams.ActionDrift) > 0 {
		t.Fatalf("second provisioning changed something:\n%s", rep)
	}
	wantItems := e.topo.Shards*len(streams.Kinds) + e.topo.Shards*len(e.topo.Consumers)
	if got := rep.Count(streams.ActionUnchanged); got != wantItems {
		t.Fatalf("unchanged = %d, want %d:\n%s", got, wantItems, rep)
	}
}

func TestProvisionUpdatesAndReportsChangedConsumer(t *testing.T) {
	e := setup(t, fastTopology())
	changed := e.topo
	changed.Consumers = append([]streams.ConsumerSpec(nil), e.topo.Consumers...)
	changed.Consumers[0].MaxDeliver = 7
	changed.Consumers[0].MaxAckPending = 42

	dry, err := streams.Provision(t.Context(), e.js, changed, &streams.ProvisionOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := dry.Count(streams.ActionDrift); got != changed.Shards {
		t.Fatalf("dry run: drift = %d, want %d (one processor per shard):\n%s", got, changed.Shards, dry)
	}
	rep, err := streams.Provision(t.Context(), e.js, changed, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Count(streams.ActionUpdated); got != changed.Shards {
		t.Fatalf("updated = %d, want %d:\n%s", got, changed.Shards, rep)
	}
	for _, c := range rep.Changes {
		if c.Action == streams.ActionUpdated {
			joined := strings.Join(c.Diff, "; ")
			if c.Consumer != streams.StageProcessor || !strings.Contains(joined, "max_deliver: have 4, want 7") || !strings.Contains(joined, "max_ack_pending: have 100, want 42") {
				t.Fatalf("update not reported precisely: %s", c)
			}
		}
	}
	cons, err := e.js.Consumer(t.Context(), "INBOUND_1", streams.StageProcessor)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := cons.CachedInfo().Config; cfg.MaxDeliver != 7 || cfg.MaxAckPending != 42 {
		t.Fatalf("server config not updated: max_deliver %d, max_ack_pending %d", cfg.MaxDeliver, cfg.MaxAckPending)
	}
	again, err := streams.Provision(t.Context(), e.js, changed, nil)
	if err != nil || again.Changed() {
		t.Fatalf("third application changed something (err %v):\n%s", err, again)
	}
}

func TestProvisionRefusesImmutableChange(t *testing.T) {
	e := setup(t, fastTopology())
	s, err := e.js.Stream(t.Context(), "INBOUND_0")
	if err != nil {
		t.Fatal(err)
	}
	// Someone recreated INBOUND_0 with limits retention by hand.
	if err := e.js.DeleteStream(t.Context(), "INBOUND_0"); err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.Retention = jetstream.LimitsPolicy
	if _, err := e.js.CreateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	rep, err := streams.Provision(t.Context(), e.js, e.topo, nil)
	if err == nil || !strings.Contains(err.Error(), "retention cannot be changed in place") {
		t.Fatalf("want an error naming retention, got %v\n%s", err, rep)
	}
}

func TestTopologyInvariants(t *testing.T) {
	for _, topo := range []streams.Topology{streams.DefaultTopology(), fastTopology(), streams.Topology{Replicas: 3}.WithDefaults()} {
		if err := topo.Validate(); err != nil {
			t.Fatal(err)
		}
		for _, spec := range topo.Consumers {
			for shard := range topo.Shards {
				c := topo.ConsumerConfig(spec, shard)
				if c.AckPolicy != jetstream.AckExplicitPolicy || c.MaxDeliver <= 0 || len(c.BackOff) == 0 || c.MaxAckPending <= 0 || c.MaxRequestMaxBytes <= 0 {
					t.Fatalf("consumer %s shard %d breaks the contract: %+v", spec.Name, shard, c)
				}
			}
		}
		for shard := range topo.Shards {
			for _, k := range streams.Kinds {
				s := topo.StreamConfig(k, shard)
				if s.MaxAge > 0 && s.Duplicates > s.MaxAge {
					t.Fatalf("%s: duplicate window %v over max age %v", s.Name, s.Duplicates, s.MaxAge)
				}
				if s.MaxMsgSize <= 0 || s.Replicas != topo.Replicas {
					t.Fatalf("%s: bad size or replicas: %+v", s.Name, s)
				}
			}
		}
	}
	bad := fastTopology()
	bad.Consumers[0].MaxDeliver = 0
	if err := bad.Validate(); err == nil {
		t.Fatal("MaxDeliver 0 accepted")
	}
	bad = fastTopology()
	bad.Consumers[0].BackOff = []time.Duration{time.Second, time.Second, time.Second, time.Second, time.Second}
	if err := bad.Validate(); err == nil {
		t.Fatal("more BackOff steps than MaxDeliver accepted")
	}
}

func TestCheckLimitsNamesBothNumbers(t *testing.T) {
	e := setup(t, fastTopology())
	if err := streams.CheckLimits(t.Context(), e.js, e.topo); err != nil {
		t.Fatalf("matching limits refused: %v", err)
	}
	bigger := e.topo
	bigger.MaxEventBytes = 2 << 20 // 2 MiB events: over max_payload and every stream
	err := streams.CheckLimits(t.Context(), e.js, bigger)
	if !errors.Is(err, streams.ErrLimitMismatch) {
		t.Fatalf("want ErrLimitMismatch, got %v", err)
	}
	msg := err.Error()
	for _, want := range []string{"server max_payload is 1048576 bytes", "stream INBOUND_0 max_msg_size is 36864 bytes", "needs 2101248 bytes"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("error does not name %q:\n%s", want, msg)
		}
	}
}

// A stream that cannot be created is reported failed, not created, so a
// provisioning run again after the cause is gone counts it once; the rest
// of the topology is provisioned meanwhile.
func TestProvisionReportsAFailedCreateAsFailed(t *testing.T) {
	s := natsembed.Test(t)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	topo := fastTopology()
	// A foreign stream holding shard 0's inbound subjects: INBOUND_0 cannot
	// be created (subjects overlap), nor its consumers.
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "SQUATTER", Subjects: []string{"inbound.0.>"}}); err != nil {
		t.Fatal(err)
	}
	rep, err := streams.Provision(t.Context(), js, topo, nil)
	if err == nil || !strings.Contains(err.Error(), "INBOUND_0") {
		t.Fatalf("provision with INBOUND_0's subjects taken: err %v", err)
	}
	all := topo.Shards*len(streams.Kinds) + topo.Shards*len(topo.Consumers)
	inbound0 := 1 // the stream; its consumers are not attempted
	if got := rep.Count(streams.ActionFailed); got != inbound0 {
		t.Fatalf("failed = %d, want %d:\n%s", got, inbound0, rep)
	}
	if !strings.Contains(rep.String(), ", 1 failed\n") || !strings.Contains(rep.String(), "failed    INBOUND_0") {
		t.Fatalf("the report does not show the failure:\n%s", rep)
	}
	created := rep.Count(streams.ActionCreated)
	if err := js.DeleteStream(t.Context(), "SQUATTER"); err != nil {
		t.Fatal(err)
	}
	rep, err = streams.Provision(t.Context(), js, topo, nil)
	if err != nil {
		t.Fatal(err)
	}
	if created += rep.Count(streams.ActionCreated); created != all {
		t.Fatalf("created %d over the two runs, want each of the %d once:\n%s", created, all, rep)
	}
}
