package accounts_test

import (
	"encoding/hex"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/shardflow/shardflow/services/internal/accounts"
	"github.com/shardflow/shardflow/streams"
)

var writeKeyRE = regexp.MustCompile(`^wk_[0-9a-f]{32}$`)

func TestCreateGetPatch(t *testing.T) {
	h := newHarness(t)

	status, raw := h.do("POST", "/v1/accounts", map[string]any{"id": "acme"}, nil)
	if status != http.StatusCreated {
		t.Fatalf("create: status %d, body %s", status, raw)
	}
	// The 201 shape: exactly these fields.
	var shape map[string]any
	mustJSON(t, raw, &shape)
	for _, k := range []string{"id", "shard", "write_key", "status", "generation"} {
		if _, ok := shape[k]; !ok {
			t.Errorf("create answer %s lacks %q", raw, k)
		}
	}
	if len(shape) != 5 {
		t.Errorf("create answer %s has %d fields, want 5", raw, len(shape))
	}
	var c accounts.Created
	mustJSON(t, raw, &c)
	if c.ID != "acme" || c.Status != streams.StatusActive || c.Generation != 1 {
		t.Errorf("created %+v", c)
	}
	if c.Shard < 0 || c.Shard >= h.topo.Shards || c.Shard != accounts.ShardOf("acme", h.topo.Shards) {
		t.Errorf("shard %d: want FNV-32a(acme) mod %d = %d", c.Shard, h.topo.Shards, accounts.ShardOf("acme", h.topo.Shards))
	}
	if !writeKeyRE.MatchString(c.WriteKey) {
		t.Errorf("write key %q does not match %s", c.WriteKey, writeKeyRE)
	}

	// The directory carries it to every service.
	e := h.waitDirectory("acme", func(a streams.Account, ok bool) bool { return ok && a.Generation == 1 })
	if e.Status != streams.StatusActive || e.WriteKey != c.WriteKey || e.Shard != c.Shard {
		t.Errorf("directory entry %+v, want active with the write key and shard of %+v", e, c)
	}
	if b, err := hex.DecodeString(e.Secret); err != nil || len(b) != 32 {
		t.Errorf("webhook secret %q is not 32 random bytes in hex", e.Secret)
	}
	if got, ok := h.dir.ByWriteKey(c.WriteKey); !ok || got.ID != "acme" {
		t.Errorf("directory lookup by write key: %+v %v", got, ok)
	}
	// And the lifecycle event is stored.
	if n := h.count(streams.KindAccounts, c.Shard, "accounts."+itoa(c.Shard)+".acme.created"); n != 1 {
		t.Errorf("created events: %d, want 1", n)
	}

	raw = h.must(http.StatusOK, "GET", "/v1/accounts/acme", nil, nil)
	var got map[string]any
	mustJSON(t, raw, &got)
	for _, k := range []string{"id", "shard", "status", "generation", "write_key", "rate_limit", "created_at", "deletion"} {
		if _, ok := got[k]; !ok {
			t.Errorf("GET answer %s lacks %q", raw, k)
		}
	}
	if got["deletion"] != nil {
		t.Errorf("deletion of a live account: %v, want null", got["deletion"])
	}

	h.wantError(http.StatusConflict, "POST", "/v1/accounts", map[string]any{"id": "acme"}, "already exists")

	// Rate limits.
	var beta accounts.Created
	h.must(http.StatusCreated, "POST", "/v1/accounts", map[string]any{"id": "beta", "rate_limit": 50}, &beta)
	if a := h.get("beta"); a.RateLimit != 50 {
		t.Errorf("rate limit %d, want 50", a.RateLimit)
	}
	var patched accounts.Account
	h.must(http.StatusOK, "PATCH", "/v1/accounts/beta", map[string]any{"rate_limit": 100}, &patched)
	if patched.RateLimit != 100 || patched.WriteKey != beta.WriteKey {
		t.Errorf("patched %+v", patched)
	}
	h.waitDirectory("beta", func(a streams.Account, ok bool) bool { return ok && a.RateLimit == 100 })
	h.wantError(http.StatusBadRequest, "PATCH", "/v1/accounts/beta", map[string]any{}, "rate_limit")
	h.wantError(http.StatusBadRequest, "PATCH", "/v1/accounts/beta", map[string]any{"rate_limit": -1}, "rate_limit")
	h.wantError(http.StatusNotFound, "PATCH", "/v1/accounts/nobody", map[string]any{"rate_limit": 1}, "nobody")
}

func TestValidationAndAuth(t *testing.T) {
	h := newHarness(t)
	h.create("acme")

	for _, id := range []string{"Bad.Id", "", "-lead", "a.b", "acme>", strings.Repeat("x", 65)} {
		h.wantError(http.StatusBadRequest, "POST", "/v1/accounts", map[string]any{"id": id}, "id")
	}
	h.wantError(http.StatusBadRequest, "POST", "/v1/accounts", map[string]any{"id": "ok", "rate_limit": -1}, "rate_limit")
	h.wantError(http.StatusBadRequest, "POST", "/v1/accounts", map[string]any{"id": "ok", "rate_limit": accounts.MaxRateLimit + 1}, "rate_limit", "1000000")
	h.wantError(http.StatusBadRequest, "POST", "/v1/accounts", map[string]any{"id": "ok", "rate_limit": "fast"}, "rate_limit")
	h.wantError(http.StatusBadRequest, "POST", "/v1/accounts", map[string]any{"id": "ok", "colour": "red"}, "colour")
	h.wantError(http.StatusBadRequest, "POST", "/v1/accounts", "not json", "body")
	h.wantError(http.StatusBadRequest, "POST", "/v1/accounts", "", "body")
	h.wantError(http.StatusRequestEntityTooLarge, "POST", "/v1/accounts", `{"id":"`+strings.Repeat("a", accounts.MaxBodyBytes)+`"}`, "65536")
	h.wantError(http.StatusBadRequest, "GET", "/v1/accounts/Not.Valid", nil, "id")

	for _, p := range []struct{ method, path string }{
		{"GET", "/v1/accounts/nobody"},
		{"DELETE", "/v1/accounts/nobody"},
		{"POST", "/v1/accounts/nobody/suspend"},
		{"POST", "/v1/accounts/nobody/restore"},
		{"GET", "/v1/accounts/nobody/triggers"},
	} {
		h.wantError(http.StatusNotFound, p.method, p.path, nil, "nobody", "not found")
	}
	h.wantError(http.StatusNotFound, "PUT", "/v1/accounts/nobody/triggers/t1",
		map[string]any{"event": "Signed Up", "channel": "webhook", "url": "https://example.com/h"}, "nobody")

	// Authentication: none, wrong, wrong scheme.
	for _, tok := range []string{"", "wrong-token"} {
		status, raw := h.request(tok, "GET", "/v1/accounts/acme", nil, nil)
		if status != http.StatusUnauthorized || !strings.Contains(string(raw), "bearer token") {
			t.Errorf("token %q: status %d body %s, want 401 naming the bearer token", tok, status, raw)
		}
	}
	req, _ := http.NewRequestWithContext(t.Context(), "GET", h.srv.URL+"/v1/accounts/acme", nil)
	req.Header.Set("Authorization", "Basic "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("basic auth: status %d, WWW-Authenticate %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}

	// Routing errors are JSON too.
	h.wantError(http.StatusNotFound, "GET", "/v2/nothing", nil, "no such route")
	h.wantError(http.StatusMethodNotAllowed, "PUT", "/v1/accounts", nil, "not allowed")
}

func TestTriggers(t *testing.T) {
	h := newHarness(t)
	h.create("acme")
	base := "/v1/accounts/acme/triggers/"

	var tr accounts.Trigger
	h.must(http.StatusOK, "PUT", base+"welcome", map[string]any{"event": "Signed Up", "channel": "webhook", "url": "https://example.com/hook"}, &tr)
	if tr.Account != "acme" || tr.Name != "welcome" || tr.Event != "Signed Up" || tr.Channel != "webhook" || tr.URL != "https://example.com/hook" || tr.CreatedAt.IsZero() {
		t.Errorf("trigger %+v", tr)
	}
	h.must(http.StatusOK, "PUT", base+"ops_mail", map[string]any{"event": "Order Completed", "channel": "email", "url": "mailto:ops@example.com"}, nil)
	// Replacing keeps one trigger per name.
	h.must(http.StatusOK, "PUT", base+"welcome", map[string]any{"event": "Account Created", "channel": "webhook", "url": "http://receiver.local:8080/in"}, nil)

	var list accounts.Triggers
	h.must(http.StatusOK, "GET", "/v1/accounts/acme/triggers", nil, &list)
	if len(list.Triggers) != 2 || list.Triggers[0].Name != "ops_mail" || list.Triggers[1].Name != "welcome" || list.Triggers[1].Event != "Account Created" {
		t.Errorf("triggers %+v", list.Triggers)
	}

	for _, c := range []struct {
		name string
		body map[string]any
		word string
	}{
		{"t1", map[string]any{"event": "E", "channel": "sms", "url": "https://example.com"}, "channel"},
		{"t1", map[string]any{"event": "E", "channel": "webhook", "url": "ftp://example.com/x"}, "url"},
		{"t1", map[string]any{"event": "E", "channel": "webhook", "url": "/relative"}, "url"},
		{"t1", map[string]any{"event": "E", "channel": "webhook", "url": "mailto:a@example.com"}, "url"},
		{"t1", map[string]any{"event": "E", "channel": "email", "url": "https://example.com"}, "url"},
		{"t1", map[string]any{"event": "E", "channel": "email", "url": "mailto:not an address"}, "url"},
		{"t1", map[string]any{"channel": "webhook", "url": "https://example.com"}, "event"},
		{"t1", map[string]any{"event": strings.Repeat("e", 201), "channel": "webhook", "url": "https://example.com"}, "event"},
		{"bad.name", map[string]any{"event": "E", "channel": "webhook", "url": "https://example.com"}, "name"},
		{"-x", map[string]any{"event": "E", "channel": "webhook", "url": "https://example.com"}, "name"},
		{"t1", map[string]any{"event": "E", "channel": "webhook", "url": "https://example.com", "extra": 1}, "extra"},
	} {
		h.wantError(http.StatusBadRequest, "PUT", base+c.name, c.body, c.word)
	}
	h.must(http.StatusOK, "GET", "/v1/accounts/acme/triggers", nil, &list)
	if len(list.Triggers) != 2 {
		t.Errorf("invalid puts changed the triggers: %+v", list.Triggers)
	}
}

func TestSuspendRestoreReleasesHeld(t *testing.T) {
	h := newHarness(t)
	c := h.create("acme")
	shard := itoa(c.Shard)

	var a accounts.Account
	h.must(http.StatusOK, "POST", "/v1/accounts/acme/suspend", nil, &a)
	if a.Status != streams.StatusSuspended {
		t.Fatalf("suspend: %+v", a)
	}
	h.waitDirectory("acme", func(a streams.Account, ok bool) bool { return ok && a.Status == streams.StatusSuspended })
	h.must(http.StatusOK, "POST", "/v1/accounts/acme/suspend", nil, nil) // idempotent

	// A message a stage parked while the account was suspended.
	m := nats.NewMsg("inbound." + shard + ".acme.held.track")
	m.Header.Set(streams.HeaderOriginalSubject, "inbound."+shard+".acme.track")
	m.Header.Set(streams.HeaderMessageID, "acme:1:m1")
	m.Header.Set("Nats-Msg-Id", "held:INBOUND_"+shard+":1")
	m.Data = []byte(`{"type":"track"}`)
	if _, err := h.js.PublishMsg(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	held := streams.HeldFilter(streams.KindInbound, c.Shard, "acme")
	if n := h.count(streams.KindInbound, c.Shard, held); n != 1 {
		t.Fatalf("held messages before restore: %d, want 1", n)
	}

	h.must(http.StatusOK, "POST", "/v1/accounts/acme/restore", nil, &a)
	if a.Status != streams.StatusActive {
		t.Fatalf("restore: %+v", a)
	}
	h.waitDirectory("acme", func(a streams.Account, ok bool) bool { return ok && a.Status == streams.StatusActive })
	if n := h.count(streams.KindInbound, c.Shard, held); n != 0 {
		t.Errorf("held messages after restore: %d, want 0", n)
	}
	if n := h.count(streams.KindInbound, c.Shard, "inbound."+shard+".acme.track"); n != 1 {
		t.Errorf("messages back on the original subject: %d, want 1", n)
	}
	for typ, want := range map[string]uint64{"suspended": 2, "restored": 1} {
		if n := h.count(streams.KindAccounts, c.Shard, "accounts."+shard+".acme."+typ); n != want {
			t.Errorf("%s events: %d, want %d (repeatable events carry a nonce)", typ, n, want)
		}
	}
}
