package status_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/services/internal/db/dbtest"
	"github.com/shardflow/shardflow/services/internal/status"
	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

// provisioned starts a server with a 2-shard topology provisioned.
func provisioned(t *testing.T) (jetstream.JetStream, streams.Topology) {
	t.Helper()
	srv := natsembed.Test(t)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	topo := streams.Topology{Shards: 2}.WithDefaults()
	if _, err := streams.Provision(t.Context(), js, topo, nil); err != nil {
		t.Fatal(err)
	}
	return js, topo
}

func publish(t *testing.T, js jetstream.JetStream, subject string, n int, prefix string) {
	t.Helper()
	for i := range n {
		if _, err := js.Publish(t.Context(), subject, []byte("{}"), jetstream.WithMsgID(fmt.Sprintf("%s:%d", prefix, i))); err != nil {
			t.Fatal(err)
		}
	}
}

// processorScrape is what a processor serving both shards exposes: the
// runtime's gauges for every shard, and counters only for what happened.
const processorScrape = `# HELP shardflow_stage_acked_total Messages handled and acknowledged.
# TYPE shardflow_stage_acked_total counter
shardflow_stage_acked_total{shard="0",stage="processor"} 40
shardflow_stage_acked_total{shard="1",stage="processor"} 1e+06
# TYPE shardflow_stage_dropped_total counter
shardflow_stage_dropped_total{reason="account_deleted",shard="1",stage="processor"} 7
shardflow_stage_dropped_total{reason="account_suspended",shard="1",stage="processor"} 2
shardflow_stage_dead_lettered_total{reason="schema_invalid",shard="1",stage="processor"} 3
shardflow_stage_redeliveries_total{shard="1",stage="processor"} 5
shardflow_stage_in_flight{shard="0",stage="processor"} 0
shardflow_stage_in_flight{shard="1",stage="processor"} 0
shardflow_stage_handler_duration_seconds_bucket{shard="1",stage="processor",le="0.005"} 12
shardflow_ingest_events_accepted_total{shard="1"} 99
target_info{service_name="processor"} 1
`

// senderScrape is two sender instances' worth, the second only for shard 1.
var senderScrapes = []string{
	`shardflow_stage_in_flight{shard="0",stage="sender"} 1
shardflow_stage_in_flight{shard="1",stage="sender"} 0
shardflow_stage_dead_lettered_total{reason="receiver_4xx",shard="1",stage="sender"} 4
shardflow_stage_retried_total{shard="1",stage="sender"} 8
shardflow_stage_redeliveries_total{shard="1",stage="sender"} 6
shardflow_stage_deferred_total{reason="breaker_open",shard="1",stage="sender"} 2
`,
	`shardflow_stage_in_flight{shard="1",stage="sender"} 0
shardflow_stage_dead_lettered_total{reason="receiver_4xx",shard="1",stage="sender"} 1
shardflow_stage_dropped_total{reason="account_deleted",shard="1",stage="sender"} 1
`,
}

func metricsServer(t *testing.T, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestCollect reads a real JetStream, a real dead_letters table and two
// kinds of metrics endpoints, and checks each number against what was put
// there.
func TestCollect(t *testing.T) {
	js, topo := provisioned(t)
	publish(t, js, "inbound.1.acme.track", 25, "in")
	publish(t, js, "outbound.1.acme.webhook", 4, "out")
	publish(t, js, "deadletter.0.acme.processor", 3, "dl")

	pool, _ := dbtest.New(t)
	insert := func(id string, shard int, class string, dropped bool) {
		t.Helper()
		var droppedAt any
		if dropped {
			droppedAt = time.Now()
		}
		if _, err := pool.Exec(t.Context(), `INSERT INTO dead_letters (id, shard, account_id, stage, error_class, error, attempts,
			original_subject, payload, first_failure, last_failure, dl_stream, dl_seq, dropped_at)
			VALUES ($1, $2, 'acme', 'sender', $3, 'x', 1, 'outbound.0.acme.webhook', '\x7b7d', now(), now(), 'DEADLETTER_0', 1, $4)`,
			id, shard, class, droppedAt); err != nil {
			t.Fatal(err)
		}
	}
	insert("OUTBOUND_0:1", 0, "receiver_4xx", false)
	insert("OUTBOUND_0:2", 0, "receiver_4xx", false)
	insert("INBOUND_0:3", 0, "transient", false)
	insert("OUTBOUND_0:4", 0, "receiver_4xx", true) // dropped by an operator: not counted

	proc := metricsServer(t, processorScrape)
	send1, send2 := metricsServer(t, senderScrapes[0]), metricsServer(t, senderScrapes[1])
	col, err := status.New(status.Config{
		JetStream: js, Topology: topo, Pool: pool,
		// a full URL, a bare host:port (health address), a duplicate, and one that is down
		MetricsURLs: []string{proc + "/metrics", strings.TrimPrefix(send1, "http://"), send2 + "/metrics", send2 + "/metrics", "http://127.0.0.1:1/metrics"},
	})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := col.Sample(t.Context(), 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if snap.WindowSeconds < 0.2 || len(snap.Shards) != 2 {
		t.Fatalf("window %v, %d shards", snap.WindowSeconds, len(snap.Shards))
	}
	wantSources := []string{"jetstream", "postgres", "metrics " + proc + "/metrics", "metrics " + send1 + "/metrics", "metrics " + send2 + "/metrics"}
	if fmt.Sprint(snap.Sources) != fmt.Sprint(wantSources) {
		t.Errorf("sources %v, want %v", snap.Sources, wantSources)
	}
	if len(snap.Warnings) != 1 || !strings.Contains(snap.Warnings[0], "127.0.0.1:1") {
		t.Errorf("warnings %q: want one, for the endpoint that is down", snap.Warnings)
	}

	s0, s1 := snap.Shards[0], snap.Shards[1]
	if s1.InboundPending != 25 || s1.OutboundPending != 4 || s0.InboundPending != 0 || s0.OutboundPending != 0 {
		t.Errorf("pending: shard 0 in %d out %d, shard 1 in %d out %d; want 0 0 25 4", s0.InboundPending, s0.OutboundPending, s1.InboundPending, s1.OutboundPending)
	}
	// Nobody consumes: shard 1's processor is stuck, and so is shard 0's
	// indexer (3 dead letters not indexed), though its pipeline is idle.
	if s1.DrainETA != "∞" || s1.DrainETASeconds != nil || s0.DrainETA != "∞" || s0.DrainETASeconds != nil {
		t.Errorf("ETA: shard 0 %q %v, shard 1 %q %v; want ∞ and ∞", s0.DrainETA, s0.DrainETASeconds, s1.DrainETA, s1.DrainETASeconds)
	}
	for _, c := range s0.Consumers {
		if want := map[bool]string{true: "∞", false: "idle"}[c.Name == "indexer"]; c.DrainETA != want {
			t.Errorf("shard 0 %s/%s: ETA %q, want %q", c.Stream, c.Name, c.DrainETA, want)
		}
	}
	if s1.ProcessedPerSec["processor"] != 0 || len(s1.ProcessedPerSec) != 4 {
		t.Errorf("shard 1 processed/s %v", s1.ProcessedPerSec)
	}
	if s0.DeadLetters != 3 || s1.DeadLetters != 0 {
		t.Errorf("dead letters (stream): %d and %d, want 3 and 0", s0.DeadLetters, s1.DeadLetters)
	}
	if fmt.Sprint(s0.DeadLettersByClass) != "map[receiver_4xx:2 transient:1]" || s1.DeadLettersByClass == nil || len(s1.DeadLettersByClass) != 0 {
		t.Errorf("dead letters by class: %v and %v; want {receiver_4xx:2 transient:1} and {} (not null: measured)", s0.DeadLettersByClass, s1.DeadLettersByClass)
	}
	if fmt.Sprint(s1.Dropped) != "map[account_deleted:8 account_suspended:2]" {
		t.Errorf("shard 1 dropped %v", s1.Dropped)
	}
	if fmt.Sprint(s1.DeadLettered) != "map[receiver_4xx:5 schema_invalid:3]" {
		t.Errorf("shard 1 dead-lettered %v", s1.DeadLettered)
	}
	if s1.Redeliveries == nil || *s1.Redeliveries != 11 {
		t.Errorf("shard 1 redeliveries %v, want 11", s1.Redeliveries)
	}
	if s0.Dropped == nil || len(s0.Dropped) != 0 || s0.Redeliveries == nil || *s0.Redeliveries != 0 {
		t.Errorf("shard 0 (scraped, nothing dropped): dropped %v redeliveries %v; want {} and 0", s0.Dropped, s0.Redeliveries)
	}
	for _, c := range s1.Consumers {
		switch c.Name {
		case streams.StageProcessor:
			if c.Counters == nil || c.Counters.Acked != 1_000_000 || c.Counters.Dropped["account_deleted"] != 7 || c.Counters.Redeliveries != 5 {
				t.Errorf("shard 1 processor counters %+v", c.Counters)
			}
			if c.NumPending != 25 || c.DrainETA != "∞" {
				t.Errorf("shard 1 processor %+v", c)
			}
		case streams.StageSender:
			if c.Counters == nil || c.Counters.DeadLettered["receiver_4xx"] != 5 || c.Counters.Retried != 8 || c.Counters.Deferred["breaker_open"] != 2 || c.Counters.Dropped["account_deleted"] != 1 {
				t.Errorf("shard 1 sender counters %+v", c.Counters)
			}
		default:
			// indexer and accounts: not scraped, so unknown, not zero.
			if c.Counters != nil {
				t.Errorf("shard 1 %s: counters %+v for a stage no endpoint exposes", c.Name, c.Counters)
			}
		}
	}

	var text bytes.Buffer
	if err := status.Render(&text, snap); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SHARD", "shard 1", "INBOUND_1/processor", "dead letters: 3", "account_deleted=8,account_suspended=2", "receiver_4xx=2,transient=1", "warning: metrics http://127.0.0.1:1/metrics"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, text.String())
		}
	}
}

// TestCollectJetStreamOnly: without a pool or endpoints, the numbers of the
// missing sources are null in JSON, never a zero that was not measured.
func TestCollectJetStreamOnly(t *testing.T) {
	js, topo := provisioned(t)
	col, err := status.New(status.Config{JetStream: js, Topology: topo})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := col.Collect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Sources []string                     `json:"sources"`
		Shards  []map[string]json.RawMessage `json:"shards"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(raw.Sources) != "[jetstream]" {
		t.Errorf("sources %v", raw.Sources)
	}
	for _, sh := range raw.Shards {
		for _, k := range []string{"dead_letters_by_class", "dropped", "dead_lettered", "redeliveries", "processed_per_sec", "drain_eta_seconds"} {
			if v, ok := sh[k]; !ok || string(v) != "null" {
				t.Errorf("shard %s: %s = %s, want null", sh["shard"], k, v)
			}
		}
		if string(sh["inbound_pending"]) != "0" || string(sh["dead_letters"]) != "0" {
			t.Errorf("shard %s: %s %s", sh["shard"], sh["inbound_pending"], sh["dead_letters"])
		}
	}
}

// TestCollectMissing: a topology not (or not fully) provisioned is reported,
// not an error.
func TestCollectMissing(t *testing.T) {
	srv := natsembed.Test(t)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	topo := streams.Topology{Shards: 1}.WithDefaults()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, topo.StreamConfig(streams.KindInbound, 0)); err != nil {
		t.Fatal(err)
	}
	col, _ := status.New(status.Config{JetStream: js, Topology: topo})
	snap, err := col.Sample(ctx, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	sh := snap.Shards[0]
	for _, st := range sh.Streams {
		if st.Missing != (st.Kind != streams.KindInbound) {
			t.Errorf("stream %s missing=%v", st.Name, st.Missing)
		}
	}
	for _, c := range sh.Consumers {
		if !c.Missing || c.ProcessedPerSec != nil {
			t.Errorf("consumer %s/%s: %+v, want missing without a rate", c.Stream, c.Name, c)
		}
	}
	if sh.DrainETA != "" {
		t.Errorf("shard ETA %q with no consumer at all", sh.DrainETA)
	}
}

func TestNewNeedsJetStream(t *testing.T) {
	if _, err := status.New(status.Config{}); err == nil {
		t.Fatal("New without JetStream succeeded")
	}
}
