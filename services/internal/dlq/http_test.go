package dlq_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/services/internal/dlq"
	"github.com/shardflow/shardflow/streams"
)

const token = "s3cret"

type apiClient struct {
	t   *testing.T
	url string
}

func (c apiClient) do(method, path, tok string, body any) (int, map[string]any) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, ok := body.(string)
		if !ok {
			raw, err := json.Marshal(body)
			if err != nil {
				c.t.Fatal(err)
			}
			b = string(raw)
		}
		rd = strings.NewReader(b)
	}
	req, err := http.NewRequestWithContext(c.t.Context(), method, c.url+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	var out map[string]any
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		c.t.Fatalf("%s %s: content type %q, body %s", method, path, ct, raw)
	}
	if err := json.NewDecoder(bytes.NewReader(raw)).Decode(&out); err != nil {
		c.t.Fatalf("%s %s: %v: %s", method, path, err, raw)
	}
	return resp.StatusCode, out
}

func (c apiClient) ok(method, path string, body any) map[string]any {
	c.t.Helper()
	code, out := c.do(method, path, token, body)
	if code != http.StatusOK {
		c.t.Fatalf("%s %s: %d %v", method, path, code, out)
	}
	return out
}

func (c apiClient) fails(method, path, tok string, body any, wantCode int, wantInError string) {
	c.t.Helper()
	code, out := c.do(method, path, tok, body)
	msg, _ := out["error"].(string)
	if code != wantCode || !strings.Contains(msg, wantInError) {
		c.t.Fatalf("%s %s: %d %v, want %d with an error naming %q", method, path, code, out, wantCode, wantInError)
	}
}

func ids(t *testing.T, out map[string]any) []string {
	t.Helper()
	var got []string
	for _, d := range out["dead_letters"].([]any) {
		got = append(got, d.(map[string]any)["id"].(string))
	}
	return got
}

func TestHTTP(t *testing.T) {
	e := newEnv(t)
	e.addAccount(t, "acme", streams.StatusActive, 1)
	e.addAccount(t, "beta", streams.StatusActive, 1)
	r := newReplayer(t, e, 1000)
	srv := httptest.NewServer(dlq.Handler(e.store, r, token))
	defer srv.Close()
	c := apiClient{t: t, url: srv.URL}

	t0 := time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)
	h := nats.Header{"traceparent": []string{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}
	for _, d := range []schemas.DeadLetter{
		envelope("inbound.0.acme.track", "INBOUND_0", 1, streams.StageProcessor, streams.ClassTransient, h, []byte(`{"event":"signup"}`), t0),
		envelope("outbound.0.acme.webhook", "OUTBOUND_0", 1, streams.StageSender, streams.ClassReceiver4xx, nil, []byte(`{}`), t0.Add(time.Hour)),
		envelope("inbound.1.beta.track", "INBOUND_1", 1, streams.StageProcessor, streams.ClassTransient, nil, []byte(`{}`), t0.Add(2*time.Hour)),
		envelope("inbound.1.beta.identify", "INBOUND_1", 2, streams.StageProcessor, streams.ClassMaxDeliver, nil, []byte{0xff, 0x00, 'x'}, t0.Add(3*time.Hour)),
	} {
		if err := e.store.Index(t.Context(), d, "DEADLETTER_"+d.OriginStream[len(d.OriginStream)-1:], d.OriginSeq); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("auth", func(t *testing.T) {
		c.fails("GET", "/v1/deadletters", "", nil, http.StatusUnauthorized, "token")
		c.fails("GET", "/v1/deadletters", "wrong", nil, http.StatusUnauthorized, "token")
		c.fails("POST", "/v1/deadletters/replay", "", map[string]any{"ids": []string{"INBOUND_0:1"}}, http.StatusUnauthorized, "token")
		empty := httptest.NewServer(dlq.Handler(e.store, r, ""))
		defer empty.Close()
		apiClient{t: t, url: empty.URL}.fails("GET", "/v1/deadletters", "", nil, http.StatusUnauthorized, "token")
		readOnly := httptest.NewServer(dlq.Handler(e.store, nil, token))
		defer readOnly.Close()
		ro := apiClient{t: t, url: readOnly.URL}
		ro.ok("GET", "/v1/deadletters", nil)
		ro.fails("POST", "/v1/deadletters/replay", token, map[string]any{"ids": []string{"INBOUND_0:1"}}, http.StatusNotImplemented, "not available")
	})

	t.Run("list and counts", func(t *testing.T) {
		out := c.ok("GET", "/v1/deadletters", nil)
		if out["total"].(float64) != 4 || len(out["dead_letters"].([]any)) != 4 {
			t.Fatalf("all: %v", out)
		}
		want := map[string]any{"transient": 2.0, "receiver_4xx": 1.0, "max_deliver": 1.0}
		if !reflect.DeepEqual(out["counts"], want) {
			t.Fatalf("counts %v, want %v", out["counts"], want)
		}
		first := out["dead_letters"].([]any)[0].(map[string]any)
		if first["id"] != "INBOUND_0:1" || first["error_class"] != "transient" || first["attempts"].(float64) != 3 ||
			first["origin_stream"] != "INBOUND_0" || first["trace_id"] != "0af7651916cd43dd8448eb211c80319c" {
			t.Fatalf("first %v", first)
		}
		for _, tc := range []struct {
			query string
			want  []string
			total float64
		}{
			{"shard=1", []string{"INBOUND_1:1", "INBOUND_1:2"}, 2},
			{"account=acme&stage=sender", []string{"OUTBOUND_0:1"}, 1},
			{"reason=transient", []string{"INBOUND_0:1", "INBOUND_1:1"}, 2},
			{"since=" + url.QueryEscape(t0.Add(time.Hour).Format(time.RFC3339)), []string{"OUTBOUND_0:1", "INBOUND_1:1", "INBOUND_1:2"}, 3},
			{"since=" + url.QueryEscape(t0.Add(time.Hour).Format(time.RFC3339)) + "&until=" + url.QueryEscape(t0.Add(3*time.Hour).Format(time.RFC3339)), []string{"OUTBOUND_0:1", "INBOUND_1:1"}, 2},
			{"limit=1", []string{"INBOUND_0:1"}, 4},
			{"account=nobody", nil, 0},
		} {
			out := c.ok("GET", "/v1/deadletters?"+tc.query, nil)
			if got := ids(t, out); !reflect.DeepEqual(got, tc.want) || out["total"].(float64) != tc.total {
				t.Errorf("%s: ids %v total %v, want %v total %v", tc.query, got, out["total"], tc.want, tc.total)
			}
		}
		out = c.ok("GET", "/v1/deadletters?reason=transient", nil)
		if !reflect.DeepEqual(out["counts"], map[string]any{"transient": 2.0}) {
			t.Fatalf("filtered counts %v", out["counts"])
		}
	})

	t.Run("bad parameters", func(t *testing.T) {
		c.fails("GET", "/v1/deadletters?since=yesterday", token, nil, http.StatusBadRequest, "since")
		c.fails("GET", "/v1/deadletters?until=2030-13-01", token, nil, http.StatusBadRequest, "until")
		c.fails("GET", "/v1/deadletters?shard=x", token, nil, http.StatusBadRequest, "shard")
		c.fails("GET", "/v1/deadletters?limit=0", token, nil, http.StatusBadRequest, "limit")
		c.fails("GET", "/v1/deadletters?acount=acme", token, nil, http.StatusBadRequest, "acount")
		c.fails("GET", "/v1/deadletters?account=Not.An.Id", token, nil, http.StatusBadRequest, "account")
		c.fails("POST", "/v1/deadletters/replay", token, map[string]any{"since": "nope"}, http.StatusBadRequest, "since")
		c.fails("POST", "/v1/deadletters/replay", token, map[string]any{"acount": "acme"}, http.StatusBadRequest, "acount")
		c.fails("POST", "/v1/deadletters/drop", token, "{not json", http.StatusBadRequest, "body")
	})

	t.Run("get", func(t *testing.T) {
		out := c.ok("GET", "/v1/deadletters/INBOUND_0:1", nil)
		if out["payload"] != base64.StdEncoding.EncodeToString([]byte(`{"event":"signup"}`)) ||
			!reflect.DeepEqual(out["payload_json"], map[string]any{"event": "signup"}) ||
			out["attempts"].(float64) != 3 || out["trace_id"] != "0af7651916cd43dd8448eb211c80319c" ||
			out["original_subject"] != "inbound.0.acme.track" || out["error"] != "boom: transient" ||
			out["headers"].(map[string]any)["traceparent"] == nil {
			t.Fatalf("detail %v", out)
		}
		out = c.ok("GET", "/v1/deadletters/"+url.PathEscape("INBOUND_1:2"), nil)
		if _, ok := out["payload_json"]; ok || out["payload"] != base64.StdEncoding.EncodeToString([]byte{0xff, 0x00, 'x'}) {
			t.Fatalf("binary detail %v", out)
		}
		c.fails("GET", "/v1/deadletters/INBOUND_9:9", token, nil, http.StatusNotFound, "INBOUND_9:9")
	})

	t.Run("refuse everything", func(t *testing.T) {
		for _, path := range []string{"/v1/deadletters/replay", "/v1/deadletters/drop"} {
			for _, body := range []any{map[string]any{}, map[string]any{"dry_run": true}, map[string]any{"ids": []string{}, "limit": 5}} {
				c.fails("POST", path, token, body, http.StatusBadRequest, "refusing to act on every dead letter: give ids or a filter")
			}
		}
	})

	t.Run("replay and drop", func(t *testing.T) {
		out := c.ok("POST", "/v1/deadletters/replay", map[string]any{"ids": []string{"INBOUND_0:1"}, "dry_run": true})
		if out["dry_run"] != true || out["replayed"].(float64) != 1 || out["matched"].(float64) != 1 {
			t.Fatalf("dry run %v", out)
		}
		if n := streamMsgs(t, e.js, "INBOUND_0"); n != 0 {
			t.Fatalf("dry run published %d", n)
		}
		out = c.ok("POST", "/v1/deadletters/replay", map[string]any{"shard": 0, "stage": "processor"})
		if out["replayed"].(float64) != 1 || !reflect.DeepEqual(out["ids"], []any{"INBOUND_0:1"}) {
			t.Fatalf("replay %v", out)
		}
		if n := streamMsgs(t, e.js, "INBOUND_0"); n != 1 {
			t.Fatalf("INBOUND_0 holds %d", n)
		}
		detail := c.ok("GET", "/v1/deadletters/INBOUND_0:1", nil)
		if detail["replay_count"].(float64) != 1 || detail["replayed_at"] == nil {
			t.Fatalf("detail after replay %v", detail)
		}

		out = c.ok("POST", "/v1/deadletters/drop", map[string]any{"account": "beta", "reason": "max_deliver"})
		if out["dropped"].(float64) != 1 || !reflect.DeepEqual(out["ids"], []any{"INBOUND_1:2"}) {
			t.Fatalf("drop %v", out)
		}
		list := c.ok("GET", "/v1/deadletters?account=beta", nil)
		if got := ids(t, list); !reflect.DeepEqual(got, []string{"INBOUND_1:1"}) || list["total"].(float64) != 1 {
			t.Fatalf("after drop %v", list)
		}
		list = c.ok("GET", "/v1/deadletters?account=beta&include_dropped=true", nil)
		if got := ids(t, list); len(got) != 2 {
			t.Fatalf("with dropped %v", list)
		}
	})
}
