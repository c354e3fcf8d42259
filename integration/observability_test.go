package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shardflow/shardflow/integration/harness"
	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/streams"
)

// TestRetriedMessageTraceShowsEveryDelivery: a webhook answered 503 twice
// and then 200 leaves three sender consumer spans for its message, with
// delivery counts 1, 2 and 3, all in the trace that started at the ingest
// request, so one search by messaging.message.id finds every attempt.
func TestRetriedMessageTraceShowsEveryDelivery(t *testing.T) {
	otlp := harness.NewOTLPReceiver(t)
	s := harness.New(t, harness.Options{Env: otlp.Env()})
	s.Start("accounts")
	s.Start("ingest")
	s.Start("processor")
	s.Start("sender", "SHARDFLOW_BREAKER_THRESHOLD=100") // the breaker stays closed: each 503 is the message's own retry
	s.Start("deadletter")
	acct := s.CreateAccount("retried")
	inID := streams.MessageID(acct.ID, acct.Generation, "retry-1")
	outID := inID + ":welcome"

	var mu sync.Mutex
	calls := map[string]int{}
	recv := harness.NewReceiver(t, secrets(t, s))
	recv.Respond = func(r *http.Request, _ *schemas.Outbound) int {
		mu.Lock()
		defer mu.Unlock()
		key := r.Header.Get("Idempotency-Key")
		calls[key]++
		if key == outID && calls[key] <= 2 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	}
	s.SetTrigger(acct.ID, "welcome", "Signed Up", recv.URL())

	if code, body := s.Send("/v1/track", acct.WriteKey, []byte(`{"userId":"u1","event":"Signed Up","messageId":"retry-1"}`)); code != 200 {
		t.Fatalf("track: %d %s", code, body)
	}
	harness.Eventually(t, 30*time.Second, func() error {
		if n := recv.Account(acct.ID); n != 1 {
			return fmt.Errorf("%d deliveries (%d requests)", n, recv.Requests())
		}
		return nil
	})
	mu.Lock()
	if calls[outID] != 3 {
		t.Fatalf("receiver saw %d requests for %s, want 3 (503, 503, 200)", calls[outID], outID)
	}
	mu.Unlock()

	var attempts []harness.Span
	harness.Eventually(t, 30*time.Second, func() error {
		attempts = attempts[:0]
		for _, sp := range otlp.Spans() {
			if sp.Service == "sender" && sp.Kind == "SPAN_KIND_CONSUMER" && strings.HasPrefix(sp.Name, "process OUTBOUND_") &&
				sp.Attrs["messaging.message.id"] == outID {
				attempts = append(attempts, sp)
			}
		}
		if len(attempts) < 3 {
			return fmt.Errorf("%d sender consumer spans for %s", len(attempts), outID)
		}
		return nil
	})
	sort.Slice(attempts, func(i, j int) bool {
		return attempts[i].Attrs["messaging.nats.delivery_count"] < attempts[j].Attrs["messaging.nats.delivery_count"]
	})
	var got []string
	for _, sp := range attempts {
		got = append(got, sp.Attrs["messaging.nats.delivery_count"]+":"+sp.Attrs["shardflow.outcome"])
	}
	if want := []string{"1:retry", "2:retry", "3:ack"}; !slices.Equal(got, want) {
		t.Fatalf("sender attempts (delivery_count:outcome) %v, want %v", got, want)
	}
	traceID := attempts[0].TraceID
	for _, sp := range attempts {
		if sp.TraceID != traceID {
			t.Fatalf("attempts in different traces: %s and %s", traceID, sp.TraceID)
		}
		if sp.Attrs["messaging.nats.stream"] != streams.StreamName(streams.KindOutbound, acct.Shard) || sp.Attrs["shardflow.account"] != acct.ID {
			t.Fatalf("attempt attributes: %v", sp.Attrs)
		}
	}
	// The trace is the message's whole story: it starts at the ingest
	// request and holds the processor's span of the inbound message.
	var ingest, processor bool
	for _, sp := range otlp.Trace(traceID) {
		switch {
		case sp.Service == "ingest" && sp.Attrs["messaging.message.id"] == inID:
			ingest = true
		case sp.Service == "processor" && sp.Kind == "SPAN_KIND_CONSUMER" && sp.Attrs["messaging.message.id"] == inID:
			processor = true
		}
	}
	if !ingest || !processor {
		t.Fatalf("trace %s: ingest span %v, processor span %v; spans:%s", traceID, ingest, processor, names(otlp.Trace(traceID)))
	}
	if tp := recv.Traceparent(outID); !strings.Contains(tp, traceID) {
		t.Fatalf("the delivered webhook carries traceparent %q, not trace %s", tp, traceID)
	}
}

// TestMetricsMatchAKnownWorkload: after N events delivered, M delivered on
// their second attempt, K refused by the receiver (400) and one request
// with a bad write key, every service's /metrics says exactly that, under
// the Prometheus names and labels DESIGN §7 requires, and no series
// carries an account label. Every metric the alert rules and the dashboard
// use is one the services really expose.
func TestMetricsMatchAKnownWorkload(t *testing.T) {
	s := startPipeline(t, harness.Options{}, "SHARDFLOW_BREAKER_THRESHOLD=100")
	ids := harness.SameShardIDs("metered", 3, s.Topo.Shards)
	good := s.CreateAccountWith(map[string]any{"id": ids[0], "rate_limit": 1_000_000})
	flaky := s.CreateAccountWith(map[string]any{"id": ids[1], "rate_limit": 1_000_000})
	refused := s.CreateAccountWith(map[string]any{"id": ids[2], "rate_limit": 1_000_000})
	shard := good.Shard
	const n, m, k = 300, 5, 20

	var mu sync.Mutex
	failed := map[string]bool{}
	recv := harness.NewReceiver(t, secrets(t, s))
	recv.Respond = func(r *http.Request, out *schemas.Outbound) int {
		switch out.Account {
		case refused.ID:
			return http.StatusBadRequest // refused for good: dead-lettered at once, receiver_4xx
		case flaky.ID:
			mu.Lock()
			defer mu.Unlock()
			key := r.Header.Get("Idempotency-Key")
			if !failed[key] {
				failed[key] = true
				return http.StatusServiceUnavailable // once: retried, redelivered, then delivered
			}
		}
		return http.StatusOK
	}
	for _, a := range []harness.Account{good, flaky, refused} {
		s.SetTrigger(a.ID, "welcome", "Signed Up", recv.URL())
	}
	requests := 0
	send := func(a harness.Account, prefix string, count int) {
		t.Helper()
		for from := 0; from < count; from += 100 {
			if code, body := s.Send("/v1/batch", a.WriteKey, harness.TrackBatch("Signed Up", prefix, from, min(100, count-from))); code != 200 {
				t.Fatalf("batch: %d %s", code, body)
			}
			requests++
		}
	}
	send(good, "g", n)
	send(flaky, "f", m)
	send(refused, "r", k)
	if code, _ := s.Send("/v1/track", "not-a-write-key", []byte(`{"userId":"u","event":"Signed Up"}`)); code != http.StatusUnauthorized {
		t.Fatalf("bad write key: %d, want 401", code)
	}

	harness.Eventually(t, 60*time.Second, func() error {
		if d := recv.Account(good.ID) + recv.Account(flaky.ID); d != n+m {
			return fmt.Errorf("%d of %d delivered", d, n+m)
		}
		if dl := deadLetters(t, s, "account_id = $1", refused.ID); dl != k {
			return fmt.Errorf("%d of %d dead letters indexed", dl, k)
		}
		return nil
	})
	waitEmpty(t, s, shard, 30*time.Second)

	scrapes := map[string][]sample{}
	scrape := func(name string) []sample {
		t.Helper()
		text := s.Proc(name).Metrics()
		if text == "" {
			t.Fatalf("%s: empty /metrics", name)
		}
		out, err := parseProm(text)
		if err != nil {
			t.Fatalf("%s /metrics: %v", name, err)
		}
		scrapes[name] = out
		return out
	}
	// The runtime's counters are updated right after the ack; wait for them.
	var ingest, proc, sender []sample
	harness.Eventually(t, 10*time.Second, func() error {
		ingest, proc, sender = scrape("ingest"), scrape("processor"), scrape("sender")
		if got := sum(sender, "shardflow_stage_acked_total", map[string]string{"stage": "sender"}); got != n+m {
			return fmt.Errorf("sender acked_total %v, want %d", got, n+m)
		}
		return nil
	})
	shardLabel := strconv.Itoa(shard)
	checks := []struct {
		what string
		got  float64
		want float64
	}{
		{"ingest events accepted", sum(ingest, "shardflow_ingest_events_accepted_total", nil), n + m + k},
		{"ingest events accepted on the shard", sum(ingest, "shardflow_ingest_events_accepted_total", map[string]string{"shard": shardLabel}), n + m + k},
		{"ingest requests accepted", sum(ingest, "shardflow_ingest_requests_accepted_total", nil), float64(requests)},
		{"ingest requests rejected 401", sum(ingest, "shardflow_ingest_requests_rejected_total", map[string]string{"code": "401"}), 1},
		{"processor acked", sum(proc, "shardflow_stage_acked_total", map[string]string{"stage": "processor", "shard": shardLabel}), n + m + k},
		{"processor dead-lettered", sum(proc, "shardflow_stage_dead_lettered_total", nil), 0},
		{"sender acked", sum(sender, "shardflow_stage_acked_total", map[string]string{"stage": "sender", "shard": shardLabel}), n + m},
		{"sender dead-lettered receiver_4xx", sum(sender, "shardflow_stage_dead_lettered_total", map[string]string{"stage": "sender", "shard": shardLabel, "reason": "receiver_4xx"}), k},
		{"sender dead-lettered, any reason", sum(sender, "shardflow_stage_dead_lettered_total", nil), k},
		{"sender retried", sum(sender, "shardflow_stage_retried_total", map[string]string{"stage": "sender"}), m},
		{"sender redeliveries", sum(sender, "shardflow_stage_redeliveries_total", map[string]string{"stage": "sender"}), m},
		{"sender handler calls (histogram count)", sum(sender, "shardflow_stage_handler_duration_seconds_count", map[string]string{"stage": "sender"}), n + 2*m + k},
		{"sender pending after the drain", sum(sender, "shardflow_stage_pending", map[string]string{"stage": "sender"}), 0},
		{"sender in flight after the drain", sum(sender, "shardflow_stage_in_flight", map[string]string{"stage": "sender"}), 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	// Per shard and stage: every stage gauge is there for every shard the
	// service consumes, with exactly the labels shard and stage.
	for svc, stage := range map[string]string{"processor": "processor", "sender": "sender"} {
		for sh := range s.Topo.Shards {
			for _, name := range []string{"shardflow_stage_pending", "shardflow_stage_ack_pending", "shardflow_stage_in_flight", "shardflow_stage_held", "shardflow_stage_braked"} {
				if !has(scrapes[svc], name, map[string]string{"shard": strconv.Itoa(sh), "stage": stage}) {
					t.Errorf("%s: no %s{shard=%q,stage=%q}", svc, name, strconv.Itoa(sh), stage)
				}
			}
		}
	}
	if !has(sender, "shardflow_stage_handler_duration_seconds_bucket", map[string]string{"shard": shardLabel, "stage": "sender", "le": "+Inf"}) {
		t.Error("sender: no handler latency histogram")
	}

	// Deletion: deleting the refused account purges its K dead letters from
	// DEADLETTER_n; the accounts service measures the purge.
	if code := s.Admin("DELETE", "/v1/accounts/"+refused.ID, nil, nil); code != 202 && code != 200 {
		t.Fatalf("delete: HTTP %d", code)
	}
	s.WaitStatus(refused.ID, "deleted", 60*time.Second)
	harness.Eventually(t, 10*time.Second, func() error {
		acc := scrape("accounts")
		if got := sum(acc, "shardflow_deletion_messages_purged_total", map[string]string{"stream_kind": "deadletter"}); got != k {
			return fmt.Errorf("messages purged from dead letters: %v, want %d", got, k)
		}
		if got := sum(acc, "shardflow_deletion_purge_duration_seconds_count", nil); got < 3 {
			return fmt.Errorf("purges timed: %v, want one per purged kind at least", got)
		}
		return nil
	})
	scrape("deadletter")

	// No series of any service names an account (cardinality: DESIGN §7),
	// and every runtime series is per shard and stage.
	accountLabel := regexp.MustCompile(`(?i)account`)
	for svc, samples := range scrapes {
		for _, sm := range samples {
			for l, v := range sm.labels {
				if accountLabel.MatchString(l) || slices.Contains(ids, v) {
					t.Errorf("%s: %s has label %s=%q: metrics must not carry the account", svc, sm.name, l, v)
				}
			}
			if strings.HasPrefix(sm.name, "shardflow_stage_") && (sm.labels["shard"] == "" || sm.labels["stage"] == "") {
				t.Errorf("%s: %s%v lacks shard or stage", svc, sm.name, sm.labels)
			}
		}
	}

	// Every metric the alerts and the dashboard query exists, except those
	// a service exposes only once their event has happened (not in this
	// workload; their names are the constants of the code that counts them).
	exposed := map[string]bool{}
	for _, samples := range scrapes {
		for _, sm := range samples {
			exposed[sm.name] = true
		}
	}
	onlyOnEvent := map[string]string{
		"shardflow_stage_dropped_total":              "a deleted or suspended account's message",
		"shardflow_stage_deferred_total":             "an open circuit breaker",
		"shardflow_stage_parked_total":               "a suspended account's message",
		"shardflow_deadletter_swept_total":           "a message max-delivered with no outcome",
		"shardflow_nats_permission_violations_total": "a NATS permission violation",
	}
	for _, file := range []string{"deploy/prometheus/alerts.yaml", "deploy/grafana/shardflow.json"} {
		b, err := os.ReadFile(filepath.Join(harness.RepoRoot(), file))
		if err != nil {
			t.Fatal(err)
		}
		refs := metricRefs(string(b))
		t.Logf("%s queries %s", file, strings.Join(refs, ", "))
		if len(refs) < 10 {
			t.Fatalf("%s: only %d metric references found: %v", file, len(refs), refs)
		}
		for _, name := range refs {
			histogram := exposed[name+"_bucket"] // named by its family in a description
			if _, ok := onlyOnEvent[name]; !ok && !exposed[name] && !histogram && name != "up" {
				t.Errorf("%s queries %s, which no service exposes", file, name)
			}
		}
	}
}

// TestStatusShowsBacklogDraining: with a slow receiver on one shard,
// `sfctl status --json` (the built binary) reports that shard's backlog with
// a finite, positive drain ETA, and the idle shard as idle with 0 pending;
// GET /v1/status on the admin API answers the same shape.
func TestStatusShowsBacklogDraining(t *testing.T) {
	// Two handlers, each holding one message at a time: the backlog waits
	// in the stream (num_pending) and drains at a steady ~2/(receiver delay).
	s := harness.New(t, harness.Options{})
	s.Start("accounts")
	s.Start("ingest")
	s.Start("processor")
	s.Start("sender", "SHARDFLOW_CONCURRENCY=2", "SHARDFLOW_MAX_IN_FLIGHT=2")
	s.Start("deadletter")
	busy := s.CreateAccountWith(map[string]any{"id": "backlogged", "rate_limit": 1_000_000})
	idle := 1 - busy.Shard // the harness topology has 2 shards
	recv := harness.NewReceiver(t, secrets(t, s))
	recv.Respond = func(*http.Request, *schemas.Outbound) int { time.Sleep(40 * time.Millisecond); return 200 }
	s.SetTrigger(busy.ID, "welcome", "Signed Up", recv.URL())
	const total = 1500
	for from := 0; from < total; from += 500 {
		if code, body := s.Send("/v1/batch", busy.WriteKey, harness.TrackBatch("Signed Up", "bk", from, 500)); code != 200 {
			t.Fatalf("batch: %d %s", code, body)
		}
	}
	// The processor is fast: the backlog moves to OUTBOUND and drains there.
	harness.Eventually(t, 30*time.Second, func() error {
		if in := s.StreamMsgs(streams.StreamName(streams.KindInbound, busy.Shard)); in != 0 {
			return fmt.Errorf("%d inbound left", in)
		}
		if d := recv.Account(busy.ID); d == 0 {
			return fmt.Errorf("nothing delivered yet")
		}
		return nil
	})

	metrics := s.Proc("processor").HealthAddr() + "," + s.Proc("sender").HealthAddr()
	out := sfctl(t, s, []string{"SHARDFLOW_STATUS_METRICS_URLS=" + metrics}, "status", "--json", "--sample", "2s", "--db")
	var snap statusSnapshot
	if err := json.Unmarshal(out, &snap); err != nil {
		t.Fatalf("sfctl status --json: %v\n%s", err, out)
	}
	delivered := recv.Account(busy.ID)
	if delivered >= total {
		t.Fatalf("the backlog drained before status was taken (%d delivered): the test needs a slower receiver", delivered)
	}
	if snap.WindowSeconds < 2 || len(snap.Shards) != 2 {
		t.Fatalf("window %v, %d shards", snap.WindowSeconds, len(snap.Shards))
	}
	for _, want := range []string{"jetstream", "postgres", "metrics http://" + s.Proc("sender").HealthAddr() + "/metrics"} {
		if !slices.Contains(snap.Sources, want) {
			t.Errorf("sources %v lack %q (warnings %v)", snap.Sources, want, snap.Warnings)
		}
	}
	b := snap.Shards[busy.Shard]
	if b.OutboundPending == 0 || b.InboundPending != 0 {
		t.Fatalf("busy shard: pending in %d out %d; want 0 and > 0", b.InboundPending, b.OutboundPending)
	}
	if b.DrainETASeconds == nil || *b.DrainETASeconds <= 0 || math.IsInf(*b.DrainETASeconds, 0) || b.DrainETA == "idle" || b.DrainETA == "∞" {
		t.Fatalf("busy shard ETA %q (%v s), want finite and positive", b.DrainETA, b.DrainETASeconds)
	}
	rate := b.ProcessedPerSec["sender"]
	if rate <= 0 {
		t.Fatalf("busy shard: sender processed/s %v", rate)
	}
	// pending ÷ rate, as the snapshot says.
	if want := float64(b.OutboundPending) / rate; math.Abs(*b.DrainETASeconds-want) > want*0.01+0.01 {
		t.Errorf("ETA %v s, want pending %d ÷ %v/s = %v s", *b.DrainETASeconds, b.OutboundPending, rate, want)
	}
	// Two handlers at ≥40ms: at most ~50/s. A rate far above that is not a
	// measurement of this drain.
	if rate > 60 {
		t.Errorf("sender processed/s %v: faster than the receiver allows", rate)
	}
	if b.Dropped == nil || b.DeadLettered == nil || b.Redeliveries == nil || b.DeadLettersByClass == nil {
		t.Errorf("busy shard: optional sources missing: dropped %v dead-lettered %v redeliveries %v by class %v", b.Dropped, b.DeadLettered, b.Redeliveries, b.DeadLettersByClass)
	}
	i := snap.Shards[idle]
	if i.InboundPending != 0 || i.OutboundPending != 0 || i.DrainETA != "idle" || i.DrainETASeconds != nil {
		t.Fatalf("idle shard: pending in %d out %d, ETA %q %v; want 0, 0, idle, null", i.InboundPending, i.OutboundPending, i.DrainETA, i.DrainETASeconds)
	}
	t.Logf("busy shard %d: %d pending, %.1f/s, ETA %s; idle shard %d: %s", busy.Shard, b.OutboundPending, rate, b.DrainETA, idle, i.DrainETA)

	text := string(sfctl(t, s, nil, "status", "--sample", "500ms"))
	for _, want := range []string{"SHARD", fmt.Sprintf("shard %d", busy.Shard), streams.StreamName(streams.KindOutbound, busy.Shard) + "/sender"} {
		if !strings.Contains(text, want) {
			t.Errorf("sfctl status text lacks %q:\n%s", want, text)
		}
	}

	// The admin API serves the same snapshot.
	var api statusSnapshot
	var apiRaw, cliRaw map[string]any
	if code := s.Admin("GET", "/v1/status?sample=1s", nil, &apiRaw); code != 200 {
		t.Fatalf("GET /v1/status: HTTP %d: %v", code, apiRaw)
	}
	reencode(t, apiRaw, &api)
	if err := json.Unmarshal(out, &cliRaw); err != nil {
		t.Fatal(err)
	}
	if ak, ck := keys(apiRaw), keys(cliRaw); !slices.Equal(ak, ck) {
		t.Errorf("GET /v1/status keys %v, sfctl's %v", ak, ck)
	}
	apiShard := apiRaw["shards"].([]any)[busy.Shard].(map[string]any)
	cliShard := cliRaw["shards"].([]any)[busy.Shard].(map[string]any)
	if ak, ck := keys(apiShard), keys(cliShard); !slices.Equal(ak, ck) {
		t.Errorf("GET /v1/status shard keys %v, sfctl's %v", ak, ck)
	}
	if len(api.Shards) != 2 || api.WindowSeconds < 1 || !slices.Contains(api.Sources, "postgres") {
		t.Fatalf("GET /v1/status: %d shards, window %v, sources %v", len(api.Shards), api.WindowSeconds, api.Sources)
	}
	if a := api.Shards[busy.Shard]; a.OutboundPending == 0 && recv.Account(busy.ID) < total {
		t.Errorf("GET /v1/status: busy shard pending 0 while %d of %d delivered", recv.Account(busy.ID), total)
	}
	if a := api.Shards[idle]; a.DrainETA != "idle" || a.OutboundPending != 0 || a.DeadLettersByClass == nil {
		t.Errorf("GET /v1/status idle shard: %+v", a)
	}
	if code := s.Admin("GET", "/v1/status?sample=1h", nil, nil); code != 400 {
		t.Errorf("GET /v1/status?sample=1h: HTTP %d, want 400", code)
	}
	req, _ := http.NewRequest("GET", s.AdminURL()+"/v1/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("GET /v1/status without a token: HTTP %d, want 401", resp.StatusCode)
	}

	harness.Eventually(t, 2*time.Minute, func() error {
		if d := recv.Account(busy.ID); d < total {
			return fmt.Errorf("%d of %d delivered", d, total)
		}
		return nil
	})
	if dup := recv.Duplicates(); len(dup) != 0 {
		t.Fatalf("%d keys delivered twice", len(dup))
	}
}

// statusSnapshot is the part of the status JSON the tests read.
type statusSnapshot struct {
	WindowSeconds float64  `json:"window_seconds"`
	Sources       []string `json:"sources"`
	Warnings      []string `json:"warnings"`
	Shards        []struct {
		Shard              int                `json:"shard"`
		InboundPending     uint64             `json:"inbound_pending"`
		OutboundPending    uint64             `json:"outbound_pending"`
		ProcessedPerSec    map[string]float64 `json:"processed_per_sec"`
		DrainETA           string             `json:"drain_eta"`
		DrainETASeconds    *float64           `json:"drain_eta_seconds"`
		DeadLetters        uint64             `json:"dead_letters"`
		DeadLettersByClass map[string]uint64  `json:"dead_letters_by_class"`
		DeadLettered       map[string]uint64  `json:"dead_lettered"`
		Dropped            map[string]uint64  `json:"dropped"`
		Redeliveries       *uint64            `json:"redeliveries"`
	} `json:"shards"`
}

// sfctl runs the built sfctl against the stack and returns its stdout.
func sfctl(t *testing.T, s *harness.Stack, env []string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.Binary("sfctl"), args...)
	cmd.Env = append(os.Environ(),
		"SHARDFLOW_NATS_URL="+s.NATSURL,
		"SHARDFLOW_SHARDS="+strconv.Itoa(s.Topo.Shards),
		"SHARDFLOW_MAX_EVENT_BYTES="+strconv.Itoa(s.Topo.MaxEventBytes),
		"SHARDFLOW_DATABASE_URL="+s.DSN,
		"SHARDFLOW_ADMIN_URL="+s.AdminURL(),
		"SHARDFLOW_ADMIN_TOKEN="+harness.AdminToken,
	)
	cmd.Env = append(cmd.Env, env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sfctl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return out
}

func reencode(t *testing.T, in, out any) {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// sample is one line of a Prometheus text exposition.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// parseProm parses the Prometheus text exposition format (comments
// skipped; label values with \\, \" and \n escapes).
func parseProm(text string) ([]sample, error) {
	var out []sample
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sm := sample{labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(line, "{ "); i < 0 {
			return nil, fmt.Errorf("bad line %q", line)
		} else if line[i] == '{' {
			sm.name = line[:i]
			j := i + 1
			for {
				for j < len(line) && (line[j] == ',' || line[j] == ' ') {
					j++
				}
				if j < len(line) && line[j] == '}' {
					j++
					break
				}
				eq := strings.IndexByte(line[j:], '=')
				if eq < 0 || j+eq+1 >= len(line) || line[j+eq+1] != '"' {
					return nil, fmt.Errorf("bad labels in %q", line)
				}
				key := line[j : j+eq]
				j += eq + 2
				var v strings.Builder
				for ; j < len(line) && line[j] != '"'; j++ {
					if line[j] == '\\' && j+1 < len(line) {
						j++
						if line[j] == 'n' {
							v.WriteByte('\n')
							continue
						}
					}
					v.WriteByte(line[j])
				}
				if j >= len(line) {
					return nil, fmt.Errorf("unterminated label value in %q", line)
				}
				j++
				sm.labels[key] = v.String()
			}
			rest = line[j:]
		} else {
			sm.name, rest = line[:i], line[i:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return nil, fmt.Errorf("no value in %q", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("bad value in %q: %v", line, err)
		}
		sm.value = v
		out = append(out, sm)
	}
	return out, sc.Err()
}

func matches(sm sample, name string, labels map[string]string) bool {
	if sm.name != name {
		return false
	}
	for k, v := range labels {
		if sm.labels[k] != v {
			return false
		}
	}
	return true
}

// sum adds the samples of name whose labels include labels.
func sum(samples []sample, name string, labels map[string]string) float64 {
	var total float64
	for _, sm := range samples {
		if matches(sm, name, labels) {
			total += sm.value
		}
	}
	return total
}

func has(samples []sample, name string, labels map[string]string) bool {
	return slices.ContainsFunc(samples, func(sm sample) bool { return matches(sm, name, labels) })
}

var (
	// metricAlternation matches a selector over several names of one family:
	// shardflow_stage_(acked|dropped)_total.
	metricAlternation = regexp.MustCompile(`(shardflow_[a-z_]*)\(([a-z_|]+)\)([a-z_]*)`)
	metricName        = regexp.MustCompile(`shardflow_[a-z0-9_]*[a-z0-9]`)
)

// metricRefs lists the metric names a rule file or dashboard mentions,
// expanding name alternations.
func metricRefs(text string) []string {
	set := map[string]bool{}
	text = metricAlternation.ReplaceAllStringFunc(text, func(s string) string {
		p := metricAlternation.FindStringSubmatch(s)
		var names []string
		for _, alt := range strings.Split(p[2], "|") {
			names = append(names, p[1]+alt+p[3])
		}
		return strings.Join(names, " ")
	})
	for _, name := range metricName.FindAllString(text, -1) {
		set[name] = true
	}
	var out []string
	for name := range set {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}
