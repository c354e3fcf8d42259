package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/services/internal/ingest"
	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine"),
		goleak.IgnoreTopFunction("time.Sleep"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*client).writeLoop"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*client).readLoop"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*fileStore).flushLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("internal/poll.runtime_pollWait"),
	)
}

type fixture struct {
	srv  *httptest.Server
	js   jetstream.JetStream
	dir  *streams.Directory
	topo streams.Topology
}

var accounts = []streams.Account{
	{ID: "acme", Shard: 0, Status: streams.StatusActive, Generation: 3, WriteKey: "wk_acme", RateLimit: 100000},
	{ID: "slow", Shard: 0, Status: streams.StatusActive, Generation: 1, WriteKey: "wk_slow", RateLimit: 1},
	{ID: "paused", Shard: 1, Status: streams.StatusSuspended, Generation: 1, WriteKey: "wk_paused"},
	{ID: "gone", Shard: 1, Status: streams.StatusDeleting, Generation: 2, WriteKey: "wk_gone"},
}

func setup(t *testing.T) *fixture {
	t.Helper()
	return setupWith(t, 64<<10, 0)
}

// setupWith is setup with the handler's batch limit and the publisher's
// group commit set.
func setupWith(t testing.TB, maxBatchBytes, groupCommit int) *fixture {
	t.Helper()
	s := natsembed.Test(t)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	topo := streams.Topology{Shards: 2, MaxEventBytes: 4096}.WithDefaults()
	ctx := t.Context()
	if _, err := streams.Provision(ctx, js, topo, nil); err != nil {
		t.Fatal(err)
	}
	kv, err := streams.DirectoryKV(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range accounts {
		if err := streams.PutAccount(ctx, kv, a); err != nil {
			t.Fatal(err)
		}
	}
	dir, err := streams.OpenDirectory(ctx, js, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dir.Close)
	for _, a := range accounts {
		if err := dir.Wait(ctx, a.ID, func(_ streams.Account, ok bool) bool { return ok }); err != nil {
			t.Fatal(err)
		}
	}
	pub, _ := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo, GroupCommit: groupCommit})
	h, err := ingest.New(ingest.Config{Directory: dir, Publisher: pub, Topology: topo, MaxBatchBytes: maxBatchBytes, DefaultRate: 1000})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h.Routes())
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, js: js, dir: dir, topo: topo}
}

type reply struct {
	code    int
	header  http.Header
	Success bool   `json:"success"`
	Error   string `json:"error"`
	Fields  []struct {
		Field, Message string
	} `json:"fields"`
}

func (f *fixture) post(t *testing.T, path, key string, body string, auth string) reply {
	t.Helper()
	req, _ := http.NewRequest("POST", f.srv.URL+path, strings.NewReader(body))
	switch auth {
	case "basic":
		req.SetBasicAuth(key, "")
	case "bearer":
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := reply{code: resp.StatusCode, header: resp.Header}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("reply is not JSON: %q", b)
	}
	return r
}

func (f *fixture) stored(t *testing.T, shard int) uint64 {
	t.Helper()
	s, err := f.js.Stream(t.Context(), streams.StreamName(streams.KindInbound, shard))
	if err != nil {
		t.Fatal(err)
	}
	info, _ := s.Info(t.Context())
	return info.State.Msgs
}

func TestBadInputIsRefusedClearlyAndPublishesNothing(t *testing.T) {
	f := setup(t)
	big := strings.Repeat("x", 5000)
	cases := []struct {
		name, path, key, auth, body string
		code                        int
		wantInError                 string
		wantField                   string
	}{
		{"malformed JSON", "/v1/track", "wk_acme", "basic", `{"userId": "u1", "event": }`, 400, "malformed JSON at byte", ""},
		{"not an object", "/v1/track", "wk_acme", "basic", `[1,2]`, 400, "", ""},
		{"missing userId and anonymousId", "/v1/track", "wk_acme", "basic", `{"event":"Signed Up"}`, 400, "userId or anonymousId is required", "userId"},
		{"track without event", "/v1/track", "wk_acme", "basic", `{"userId":"u1"}`, 400, "event", "event"},
		{"wrong type of field", "/v1/identify", "wk_acme", "basic", `{"userId":"u1","traits":"vip"}`, 400, "traits", "traits"},
		{"unknown event type in batch", "/v1/batch", "wk_acme", "basic", `{"batch":[{"type":"page","userId":"u1"}]}`, 400, `unknown event type "page"`, "batch[0].type"},
		{"unknown endpoint type", "/v1/page", "wk_acme", "basic", `{"userId":"u1"}`, 400, `unknown event type "page"`, ""},
		{"field error names the batch item", "/v1/batch", "wk_acme", "basic", `{"batch":[{"type":"track","userId":"u1","event":"a"},{"type":"track","userId":"u2"}]}`, 400, "batch[1].event", "batch[1].event"},
		{"missing write key", "/v1/track", "", "", `{"userId":"u1","event":"a"}`, 401, "missing write key", ""},
		{"wrong write key", "/v1/track", "wk_nope", "basic", `{"userId":"u1","event":"a"}`, 401, "unknown write key", ""},
		{"event over the size limit", "/v1/track", "wk_acme", "basic", `{"userId":"u1","event":"a","properties":{"x":"` + big + `"}}`, 413, "over the limit of 4096 bytes", ""},
		{"batch item over the event limit", "/v1/batch", "wk_acme", "basic", `{"batch":[{"type":"track","userId":"u1","event":"a","properties":{"x":"` + big + `"}}]}`, 413, "batch[0]", ""},
		{"batch over the body limit", "/v1/batch", "wk_acme", "basic", `{"batch":[` + strings.Repeat(`{"type":"track","userId":"u1","event":"`+strings.Repeat("y", 150)+`"},`, 500) + `{"type":"track","userId":"u","event":"a"}]}`, 413, "over the limit of 65536 bytes", ""},
		{"suspended account", "/v1/track", "wk_paused", "basic", `{"userId":"u1","event":"a"}`, 403, "suspended", ""},
		{"deleted account", "/v1/track", "wk_gone", "bearer", `{"userId":"u1","event":"a"}`, 410, "deleted", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := f.post(t, c.path, c.key, c.body, c.auth)
			if r.code != c.code || r.Success || !strings.Contains(r.Error, c.wantInError) {
				t.Fatalf("got %d %q, want %d containing %q", r.code, r.Error, c.code, c.wantInError)
			}
			if c.wantField != "" {
				found := false
				for _, fe := range r.Fields {
					found = found || fe.Field == c.wantField
				}
				if !found {
					t.Fatalf("field %q not named in %+v", c.wantField, r.Fields)
				}
			}
		})
	}
	if n := f.stored(t, 0) + f.stored(t, 1); n != 0 {
		t.Fatalf("refused requests published %d messages", n)
	}
}

func TestAcceptedEventsAreStoredWithGenerationAndIDs(t *testing.T) {
	f := setup(t)
	if r := f.post(t, "/v1/track", "wk_acme", `{"userId":"u1","event":"Signed Up","messageId":"m-1"}`, "basic"); r.code != 200 || !r.Success {
		t.Fatalf("track: %+v", r)
	}
	if r := f.post(t, "/v1/identify", "", `{"writeKey":"wk_acme","anonymousId":"a1","traits":{"plan":"pro"}}`, ""); r.code != 200 {
		t.Fatalf("identify with body writeKey: %+v", r)
	}
	var b strings.Builder
	b.WriteString(`{"batch":[`)
	for i := range 100 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"type":"track","userId":"u%d","event":"e","messageId":"b-%d"}`, i, i)
	}
	b.WriteString(`]}`)
	if r := f.post(t, "/v1/batch", "wk_acme", b.String(), "bearer"); r.code != 200 {
		t.Fatalf("batch: %+v", r)
	}
	// A client retrying the same batch (same messageIds) succeeds and stores nothing new.
	if r := f.post(t, "/v1/batch", "wk_acme", b.String(), "basic"); r.code != 200 {
		t.Fatalf("batch retry: %+v", r)
	}
	if n := f.stored(t, 0); n != 102 {
		t.Fatalf("stored %d, want 102", n)
	}
	s, _ := f.js.Stream(t.Context(), "INBOUND_0")
	m, err := s.GetMsg(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "inbound.0.acme.track" || m.Header.Get("Nats-Msg-Id") != "acme:3:m-1" || m.Header.Get(streams.HeaderGeneration) != "3" {
		t.Fatalf("stored message: %s %v", m.Subject, m.Header)
	}
	var ev map[string]any
	_ = json.Unmarshal(m.Data, &ev)
	if ev["writeKey"] != nil || ev["messageId"] != "m-1" || ev["type"] != "track" {
		t.Fatalf("stored payload %v", ev)
	}
	id, _ := s.GetMsg(t.Context(), 2)
	if !strings.HasPrefix(id.Header.Get("Nats-Msg-Id"), "acme:3:") || len(id.Header.Get("Nats-Msg-Id")) < len("acme:3:")+16 {
		t.Fatalf("generated messageId missing: %v", id.Header)
	}
}

func TestRateLimitIsPerAccount(t *testing.T) {
	f := setup(t)
	// "slow" may send 1 event/s with a burst of one batch (1000 events).
	body := `{"batch":[` + strings.TrimSuffix(strings.Repeat(`{"type":"track","userId":"u","event":"e"},`, 1000), ",") + `]}`
	if r := f.post(t, "/v1/batch", "wk_slow", body, "basic"); r.code != 200 {
		t.Fatalf("first burst refused: %+v", r)
	}
	r := f.post(t, "/v1/track", "wk_slow", `{"userId":"u","event":"e"}`, "basic")
	if r.code != 429 || r.header.Get("Retry-After") == "" || !strings.Contains(r.Error, "rate limit of 1 events/s") {
		t.Fatalf("want 429 with Retry-After, got %d %q %v", r.code, r.Error, r.header)
	}
	// Another account on the same shard is unaffected.
	for i := range 50 {
		if r := f.post(t, "/v1/track", "wk_acme", fmt.Sprintf(`{"userId":"u","event":"e","messageId":"x%d"}`, i), "basic"); r.code != 200 {
			t.Fatalf("acme refused while slow is limited: %+v", r)
		}
	}
}

func TestDeletionClosesIngressWithinASecond(t *testing.T) {
	f := setup(t)
	kv, _ := streams.DirectoryKV(t.Context(), f.js)
	a := accounts[0]
	a.Status = streams.StatusDeleting
	t0 := time.Now()
	if err := streams.PutAccount(context.Background(), kv, a); err != nil {
		t.Fatal(err)
	}
	for {
		r := f.post(t, "/v1/track", "wk_acme", `{"userId":"u1","event":"a"}`, "basic")
		if r.code == 410 {
			break
		}
		if time.Since(t0) > time.Second {
			t.Fatalf("still %d after 1s", r.code)
		}
	}
	t.Logf("ingress closed %v after the directory changed", time.Since(t0))
}

// What ingest stores is the event as the processor reads it: the messageId
// generated when missing (the one in Nats-Msg-Id), the timestamp filled in
// when missing, the writeKey gone, the batch's context given to the events
// without one; the rest as sent.
func TestStoredEventDecodesToTheEventSent(t *testing.T) {
	f := setup(t)
	body := `{"batch":[` +
		`{"type":"track","userId":"u1","event":"Order Completed","writeKey":"wk_acme","properties":{"total":18.990,"items":[{"sku":"G-32","n":1E2}],"note":"\u00e9\"<"},"integrations":{"All":false}},` +
		`{"type":"identify","anonymousId":"a1","messageId":"m-2","timestamp":"2024-03-01T10:00:00Z","traits":{"plan":"pro"},"context":{"ip":"192.0.2.1"},"writeKey":"wk_acme"}` +
		`],"context":{"library":{"name":"analytics.js","version":"1.0"}},"writeKey":"wk_acme"}`
	before := time.Now().UTC()
	if r := f.post(t, "/v1/batch", "", body, ""); r.code != 200 {
		t.Fatalf("batch: %+v", r)
	}
	s, _ := f.js.Stream(t.Context(), "INBOUND_0")
	batchContext := map[string]any{"library": map[string]any{"name": "analytics.js", "version": "1.0"}}
	for seq, want := range map[uint64]schemas.Event{
		1: {Type: "track", UserID: "u1", Event: "Order Completed", Context: batchContext,
			Properties: map[string]any{"total": 18.99, "items": []any{map[string]any{"sku": "G-32", "n": 100.0}}, "note": "é\"<"}},
		2: {Type: "identify", MessageID: "m-2", AnonymousID: "a1", Timestamp: "2024-03-01T10:00:00Z",
			Traits: map[string]any{"plan": "pro"}, Context: map[string]any{"ip": "192.0.2.1"}},
	} {
		m, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(m.Data), "writeKey") || strings.Contains(string(m.Data), "integrations") {
			t.Fatalf("stored %s", m.Data)
		}
		got, err := schemas.DecodeEvent(want.Type, m.Data, schemas.Limits{})
		if err != nil {
			t.Fatalf("stored event %d rejected: %v\n%s", seq, err, m.Data)
		}
		if want.MessageID == "" { // generated: the id of the message
			if got.MessageID == "" || m.Header.Get("Nats-Msg-Id") != "acme:3:"+got.MessageID {
				t.Fatalf("messageId %q, Nats-Msg-Id %q", got.MessageID, m.Header.Get("Nats-Msg-Id"))
			}
			want.MessageID = got.MessageID
		}
		if want.Timestamp == "" { // filled in: when ingest received it
			ts, err := time.Parse(time.RFC3339Nano, got.Timestamp)
			if err != nil || ts.Before(before) || ts.After(time.Now()) {
				t.Fatalf("timestamp %q (%v), want between %v and now", got.Timestamp, err, before)
			}
			want.Timestamp = got.Timestamp
		}
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("stored event %d decodes to\n%#v\nwant\n%#v\n%s", seq, *got, want, m.Data)
		}
	}
}

// The limit on an event's size applies to what is stored: an event that
// fits as sent but not with the batch's context is refused.
func TestEventLimitAppliesToTheStoredEvent(t *testing.T) {
	f := setup(t) // MaxEventBytes 4096
	event := `{"type":"track","userId":"u1","event":"e","properties":{"x":"` + strings.Repeat("x", 3000) + `"}}`
	ctx := `{"pad":"` + strings.Repeat("c", 1500) + `"}`
	if r := f.post(t, "/v1/batch", "wk_acme", `{"batch":[`+event+`]}`, "basic"); r.code != 200 {
		t.Fatalf("event without the batch context: %+v", r)
	}
	r := f.post(t, "/v1/batch", "wk_acme", `{"batch":[`+event+`],"context":`+ctx+`}`, "basic")
	if r.code != 413 || !strings.Contains(r.Error, "batch[0]") {
		t.Fatalf("event over the limit once stored: got %d %q, want 413 naming batch[0]", r.code, r.Error)
	}
	if n := f.stored(t, 0); n != 1 {
		t.Fatalf("stored %d, want 1", n)
	}
}
