package dlq_test

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/shardflow/shardflow/services/internal/dlq"
	"github.com/shardflow/shardflow/streams"
)

// originalHeaders are the headers of a message as the publisher sent it,
// with the trace context of a real span.
func originalHeaders(t *testing.T, account, key string, generation int64) (nats.Header, string) {
	t.Helper()
	ctx, span := otel.Tracer("test").Start(context.Background(), "ingest")
	defer span.End()
	h := nats.Header{}
	id := streams.MessageID(account, generation, key)
	h.Set(jetstream.MsgIDHeader, id)
	h.Set(streams.HeaderMessageID, id)
	h.Set(streams.HeaderGeneration, strconv.FormatInt(generation, 10))
	h.Set("X-Custom", "kept")
	streams.InjectTrace(ctx, h)
	if h.Get("traceparent") == "" {
		t.Fatal("no traceparent injected")
	}
	return h, h.Get("traceparent")
}

// indexDeadLetter indexes a dead letter of an inbound track message.
func (e *env) indexDeadLetter(t *testing.T, account string, seq uint64, generation int64, failed time.Time) (string, nats.Header) {
	t.Helper()
	h, _ := originalHeaders(t, account, fmt.Sprintf("m%d", seq), generation)
	env := envelope(fmt.Sprintf("inbound.0.%s.track", account), "INBOUND_0", seq, streams.StageProcessor,
		streams.ClassTransient, h, []byte(fmt.Sprintf(`{"n":%d}`, seq)), failed)
	if err := e.store.Index(t.Context(), env, "DEADLETTER_0", seq); err != nil {
		t.Fatal(err)
	}
	return env.ID, h
}

func newReplayer(t *testing.T, e *env, rate float64) *dlq.Replayer {
	t.Helper()
	r, err := dlq.NewReplayer(dlq.ReplayerConfig{Store: e.store, JetStream: e.js, ReplayRate: rate})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// lastInbound returns the newest message of INBOUND_0.
func lastInbound(t *testing.T, e *env) *jetstream.RawStreamMsg {
	t.Helper()
	s, err := e.js.Stream(t.Context(), "INBOUND_0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(t.Context(), "inbound.0.>")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestReplay(t *testing.T) {
	e := newEnv(t)
	e.addAccount(t, "acme", streams.StatusActive, 1)
	e.addAccount(t, "gone", streams.StatusDeleted, 1)
	e.addAccount(t, "dying", streams.StatusDeleting, 1)
	e.addAccount(t, "reborn", streams.StatusActive, 2)
	r := newReplayer(t, e, 1000)
	now := time.Now()
	id, orig := e.indexDeadLetter(t, "acme", 11, 1, now)

	res, err := r.Replay(t.Context(), dlq.Filter{IDs: []string{id}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Matched != 1 || res.Replayed != 1 || res.Skipped != 0 || !reflect.DeepEqual(res.IDs, []string{id}) {
		t.Fatalf("result %+v", res)
	}
	m := lastInbound(t, e)
	if m.Subject != "inbound.0.acme.track" || string(m.Data) != `{"n":11}` {
		t.Fatalf("replayed %s %q", m.Subject, m.Data)
	}
	h := m.Header
	checks := map[string]string{
		streams.HeaderMessageID:       orig.Get(streams.HeaderMessageID),
		streams.HeaderReplayOf:        id,
		streams.HeaderLinkTraceparent: orig.Get("traceparent"),
		streams.HeaderGeneration:      "1",
		jetstream.MsgIDHeader:         "replay:" + id + ":1",
		"X-Custom":                    "kept",
	}
	for k, want := range checks {
		if got := h.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	// A fresh trace for the replay, linked (by the header) to the original.
	newTrace, origTrace := streams.TraceID(h), streams.TraceID(orig)
	if newTrace == "" || newTrace == origTrace {
		t.Errorf("replay trace %q, original %q: want a new trace", newTrace, origTrace)
	}
	lsc := trace.SpanContextFromContext(streams.ExtractTrace(context.Background(), nats.Header{"traceparent": []string{h.Get(streams.HeaderLinkTraceparent)}}))
	if lsc.TraceID().String() != origTrace {
		t.Errorf("link traceparent names trace %s, want %s", lsc.TraceID(), origTrace)
	}
	row, err := e.store.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if row.ReplayCount != 1 || row.ReplayedAt == nil {
		t.Fatalf("row not marked replayed: %+v", row)
	}

	// By filter, a dead letter replayed before is left alone; by id it is
	// replayed again, as a new message.
	res, err = r.Replay(t.Context(), dlq.Filter{Account: "acme"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed != 0 || res.SkippedReasons[dlq.SkipAlreadyReplayed] != 1 {
		t.Fatalf("result %+v", res)
	}
	if _, err := r.Replay(t.Context(), dlq.Filter{IDs: []string{id}}, false); err != nil {
		t.Fatal(err)
	}
	if got := lastInbound(t, e).Header.Get(jetstream.MsgIDHeader); got != "replay:"+id+":2" {
		t.Fatalf("second replay Nats-Msg-Id %q", got)
	}
	if n := streamMsgs(t, e.js, "INBOUND_0"); n != 2 {
		t.Fatalf("INBOUND_0 holds %d, want 2", n)
	}

	// Deleted, deleting and older-generation accounts are refused; so are
	// unknown ids.
	e.indexDeadLetter(t, "gone", 21, 1, now)
	e.indexDeadLetter(t, "dying", 22, 1, now)
	e.indexDeadLetter(t, "reborn", 23, 1, now) // generation 1 of an account now at 2
	before := streamMsgs(t, e.js, "INBOUND_0")
	res, err = r.Replay(t.Context(), dlq.Filter{IDs: []string{"INBOUND_0:21", "INBOUND_0:22", "INBOUND_0:23", "INBOUND_0:999"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Matched != 4 || res.Replayed != 0 || res.Skipped != 4 ||
		!reflect.DeepEqual(res.SkippedReasons, map[string]int{dlq.SkipAccountDeleted: 3, dlq.SkipNotFound: 1}) {
		t.Fatalf("result %+v", res)
	}
	if n := streamMsgs(t, e.js, "INBOUND_0"); n != before {
		t.Fatalf("a refused dead letter was published: %d → %d", before, n)
	}
	if row, _ := e.store.Get(t.Context(), "INBOUND_0:21"); row.ReplayCount != 0 {
		t.Fatalf("refused row marked: %+v", row)
	}
}

func TestReplayWithDirectory(t *testing.T) {
	e := newEnv(t)
	// No accounts rows: the directory (KV) is the one asked.
	if err := streams.ProvisionDirectory(t.Context(), e.js, 1); err != nil {
		t.Fatal(err)
	}
	dir, err := streams.OpenDirectory(t.Context(), e.js, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	for _, a := range []streams.Account{{ID: "acme", Status: streams.StatusActive, Generation: 1}, {ID: "gone", Status: streams.StatusDeleted, Generation: 1}} {
		if err := dir.Put(t.Context(), a); err != nil {
			t.Fatal(err)
		}
		if err := dir.Wait(t.Context(), a.ID, func(_ streams.Account, ok bool) bool { return ok }); err != nil {
			t.Fatal(err)
		}
	}
	r, err := dlq.NewReplayer(dlq.ReplayerConfig{Store: e.store, JetStream: e.js, Accounts: dir})
	if err != nil {
		t.Fatal(err)
	}
	e.indexDeadLetter(t, "acme", 1, 1, time.Now())
	e.indexDeadLetter(t, "gone", 2, 1, time.Now())
	e.indexDeadLetter(t, "stranger", 3, 1, time.Now())
	res, err := r.Replay(t.Context(), dlq.Filter{Stage: streams.StageProcessor}, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Matched != 3 || res.Replayed != 1 || !reflect.DeepEqual(res.IDs, []string{"INBOUND_0:1"}) ||
		!reflect.DeepEqual(res.SkippedReasons, map[string]int{dlq.SkipAccountDeleted: 1, dlq.SkipAccountUnknown: 1}) {
		t.Fatalf("result %+v", res)
	}
}

func TestReplayDryRunChangesNothing(t *testing.T) {
	e := newEnv(t)
	e.addAccount(t, "acme", streams.StatusActive, 1)
	r := newReplayer(t, e, 1000)
	id, _ := e.indexDeadLetter(t, "acme", 5, 1, time.Now())
	before, err := e.store.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Replay(t.Context(), dlq.Filter{Account: "acme"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !res.DryRun || res.Matched != 1 || res.Replayed != 1 || !reflect.DeepEqual(res.IDs, []string{id}) {
		t.Fatalf("result %+v", res)
	}
	res, err = r.Drop(t.Context(), dlq.Filter{Account: "acme"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !res.DryRun || res.Dropped != 1 {
		t.Fatalf("drop result %+v", res)
	}
	if n := streamMsgs(t, e.js, "INBOUND_0"); n != 0 {
		t.Fatalf("dry run published %d", n)
	}
	after, err := e.store.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("dry run changed the row:\n%+v\n%+v", before, after)
	}
}

func TestReplayIsRateLimited(t *testing.T) {
	e := newEnv(t)
	e.addAccount(t, "acme", streams.StatusActive, 1)
	const (
		n    = 11
		rate = 20.0 // per second: 10 intervals of 50 ms
	)
	base := time.Now().Add(-time.Hour)
	for i := range n {
		e.indexDeadLetter(t, "acme", uint64(100+i), 1, base.Add(time.Duration(i)*time.Second))
	}
	r := newReplayer(t, e, rate)
	start := time.Now()
	res, err := r.Replay(t.Context(), dlq.Filter{Account: "acme"}, false)
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed != n {
		t.Fatalf("result %+v", res)
	}
	if min := time.Duration(float64(n-1) / rate * float64(time.Second)); elapsed < min || elapsed > 10*min {
		t.Fatalf("%d messages at %v/s took %v, want between %v and %v", n, rate, elapsed, min, 10*min)
	}
	if got := streamMsgs(t, e.js, "INBOUND_0"); got != n {
		t.Fatalf("INBOUND_0 holds %d, want %d", got, n)
	}
}

func TestReplayAndDropRefuseEverything(t *testing.T) {
	e := newEnv(t)
	r := newReplayer(t, e, 1000)
	if _, err := r.Replay(t.Context(), dlq.Filter{Limit: 10}, false); err == nil {
		t.Fatal("replay of every dead letter accepted")
	}
	if _, err := r.Drop(t.Context(), dlq.Filter{IncludeDropped: true}, false); err == nil {
		t.Fatal("drop of every dead letter accepted")
	}
}

func TestDropAndPaging(t *testing.T) {
	e := newEnv(t)
	e.addAccount(t, "acme", streams.StatusActive, 1)
	r, err := dlq.NewReplayer(dlq.ReplayerConfig{Store: e.store, JetStream: e.js, PageSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Hour)
	for i := range 8 {
		e.indexDeadLetter(t, "acme", uint64(i+1), 1, base.Add(time.Duration(i%3)*time.Second)) // ties in last_failure
	}
	res, err := r.Drop(t.Context(), dlq.Filter{Account: "acme", Limit: 5}, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Matched != 5 || res.Dropped != 5 || len(res.IDs) != 5 {
		t.Fatalf("result %+v", res)
	}
	left, err := e.store.List(t.Context(), dlq.Filter{Account: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	all, err := e.store.List(t.Context(), dlq.Filter{Account: "acme", IncludeDropped: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 3 || len(all) != 8 {
		t.Fatalf("left %d, all %d", len(left), len(all))
	}
	// The rest, by filter, in pages of 3: every one exactly once.
	res, err = r.Replay(t.Context(), dlq.Filter{Account: "acme"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Matched != 3 || res.Replayed != 3 {
		t.Fatalf("result %+v", res)
	}
	// A dropped dead letter is not replayed, even by id.
	res, err = r.Replay(t.Context(), dlq.Filter{IDs: []string{all[0].ID}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if all[0].DroppedAt == nil || res.Replayed != 0 || res.SkippedReasons[dlq.SkipDropped] != 1 {
		t.Fatalf("first %+v, result %+v", all[0], res)
	}
}
