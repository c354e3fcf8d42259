package schemas_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shardflow/shardflow/schemas"
)

// checkErr compares err with want, a *SyntaxError, *ValidationError or
// *LimitError describing the expected failure.
func checkErr(t *testing.T, err error, want error) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", want)
	}
	switch want := want.(type) {
	case *schemas.SyntaxError:
		var got *schemas.SyntaxError
		if !errors.As(err, &got) {
			t.Fatalf("got %T %q, want *SyntaxError", err, err)
		}
		if got.Offset != want.Offset || got.Msg != want.Msg {
			t.Fatalf("got SyntaxError{%d, %q}, want {%d, %q}", got.Offset, got.Msg, want.Offset, want.Msg)
		}
	case *schemas.ValidationError:
		var got *schemas.ValidationError
		if !errors.As(err, &got) {
			t.Fatalf("got %T %q, want *ValidationError", err, err)
		}
		if !reflect.DeepEqual(got.Fields, want.Fields) {
			t.Fatalf("got fields\n%s\nwant\n%s", fieldList(got.Fields), fieldList(want.Fields))
		}
	case *schemas.LimitError:
		var got *schemas.LimitError
		if !errors.As(err, &got) {
			t.Fatalf("got %T %q, want *LimitError", err, err)
		}
		if *got != *want {
			t.Fatalf("got %+v, want %+v", *got, *want)
		}
	default:
		t.Fatalf("bad test: want %T", want)
	}
}

func fieldList(fs []schemas.FieldError) string {
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "\t%q: %q\n", f.Field, f.Message)
	}
	return b.String()
}

func verr(kv ...string) *schemas.ValidationError {
	ve := &schemas.ValidationError{}
	for i := 0; i < len(kv); i += 2 {
		ve.Fields = append(ve.Fields, schemas.FieldError{Field: kv[i], Message: kv[i+1]})
	}
	return ve
}

// bodySize in a wanted *LimitError stands for the size of the test body.
const bodySize = -1

func withBodySize(want error, body string) error {
	if le, ok := want.(*schemas.LimitError); ok && le.Size == bodySize {
		c := *le
		c.Size = len(body)
		return &c
	}
	return want
}

const dateTimeMsg = `must be an RFC 3339 date-time such as "2006-01-02T15:04:05Z", got `

func TestDecodeEvent(t *testing.T) {
	tests := []struct {
		name, typ, body string
		want            schemas.Event
	}{
		{
			name: "track, full",
			typ:  schemas.TypeTrack,
			body: `{"type":"track","messageId":"ajs-next-1f2e","userId":"u1","anonymousId":"a1","event":"Order Completed",
				"properties":{"total":30.5,"items":[{"sku":"s-1"}]},"context":{"ip":"8.8.8.8","library":{"name":"analytics.js"}},
				"timestamp":"2024-03-01T10:00:00.123+01:00","writeKey":"wk",
				"integrations":{"All":true},"sentAt":"2024-03-01T10:00:01Z","channel":"client","version":2}`,
			want: schemas.Event{
				Type: "track", MessageID: "ajs-next-1f2e", UserID: "u1", AnonymousID: "a1", Event: "Order Completed",
				Properties: map[string]any{"total": 30.5, "items": []any{map[string]any{"sku": "s-1"}}},
				Context:    map[string]any{"ip": "8.8.8.8", "library": map[string]any{"name": "analytics.js"}},
				Timestamp:  "2024-03-01T10:00:00.123+01:00", WriteKey: "wk",
			},
		},
		{
			name: "track, type implied, anonymous",
			typ:  schemas.TypeTrack,
			body: `{"anonymousId":"a1","event":"Signed Up"}`,
			want: schemas.Event{Type: "track", AnonymousID: "a1", Event: "Signed Up"},
		},
		{
			name: "track, empty userId but anonymousId",
			typ:  schemas.TypeTrack,
			body: `{"userId":"","anonymousId":"a1","event":"e"}`,
			want: schemas.Event{Type: "track", AnonymousID: "a1", Event: "e"},
		},
		{
			name: "identify with traits",
			typ:  schemas.TypeIdentify,
			body: `{"userId":"u1","traits":{"email":"a@example.com","age":41},"timestamp":"2024-03-01T10:00:00Z"}`,
			want: schemas.Event{Type: "identify", UserID: "u1", Traits: map[string]any{"email": "a@example.com", "age": 41.0}, Timestamp: "2024-03-01T10:00:00Z"},
		},
		{
			name: "identify drops track fields",
			typ:  schemas.TypeIdentify,
			body: `{"type":"identify","userId":"u1","event":"x","properties":{"a":1},"traits":{"b":2}}`,
			want: schemas.Event{Type: "identify", UserID: "u1", Traits: map[string]any{"b": 2.0}},
		},
		{
			name: "track drops traits",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u1","event":"e","traits":{"b":2}}`,
			want: schemas.Event{Type: "track", UserID: "u1", Event: "e"},
		},
		{
			name: "keys are case-sensitive: other spellings are extras",
			typ:  schemas.TypeTrack,
			body: `{"anonymousId":"a","event":"e","UserId":5,"EVENT":{},"Properties":"x"}`,
			want: schemas.Event{Type: "track", AnonymousID: "a", Event: "e"},
		},
		{
			name: "duplicate keys: the last wins",
			typ:  schemas.TypeTrack,
			body: `{"userId":5,"anonymousId":"a","event":"e","userId":"u"}`,
			want: schemas.Event{Type: "track", UserID: "u", AnonymousID: "a", Event: "e"},
		},
		{
			name: "big numbers",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u","event":"e","properties":{"id":12345678901234567890,"f":1e308,"l":[[-0.5]],"z":null}}`,
			want: schemas.Event{Type: "track", UserID: "u", Event: "e", Properties: map[string]any{"id": 12345678901234567890.0, "f": 1e308, "l": []any{[]any{-0.5}}, "z": nil}},
		},
		{
			name: "messageId of 256 characters, event of 200",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u","messageId":"` + strings.Repeat("é", 256) + `","event":"` + strings.Repeat("e", 200) + `"}`,
			want: schemas.Event{Type: "track", UserID: "u", MessageID: strings.Repeat("é", 256), Event: strings.Repeat("e", 200)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := schemas.DecodeEvent(tt.typ, []byte(tt.body), schemas.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Fatalf("got  %#v\nwant %#v", *got, tt.want)
			}
		})
	}
}

func TestDecodeEventErrors(t *testing.T) {
	tests := []struct {
		name, typ, body string
		lim             schemas.Limits
		want            error
	}{
		{
			name: "malformed JSON",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u","event":}`,
			want: &schemas.SyntaxError{Offset: 23, Msg: "invalid character '}' looking for beginning of value"},
		},
		{
			name: "trailing data",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u","event":"e"} {}`,
			want: &schemas.SyntaxError{Offset: 28, Msg: "invalid character '{' after top-level value"},
		},
		{
			name: "truncated",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u"`,
			want: &schemas.SyntaxError{Offset: 13, Msg: "unexpected end of JSON input"},
		},
		{
			name: "empty body",
			typ:  schemas.TypeTrack,
			body: ``,
			want: &schemas.SyntaxError{Offset: 0, Msg: "unexpected end of JSON input"},
		},
		{
			name: "array body",
			typ:  schemas.TypeTrack,
			body: `[{"userId":"u","event":"e"}]`,
			want: &schemas.SyntaxError{Offset: 0, Msg: "expected a JSON object, got an array"},
		},
		{
			name: "string body",
			typ:  schemas.TypeIdentify,
			body: "\n  \"hello\"",
			want: &schemas.SyntaxError{Offset: 3, Msg: "expected a JSON object, got a string"},
		},
		{
			name: "null body",
			typ:  schemas.TypeIdentify,
			body: `null`,
			want: &schemas.SyntaxError{Offset: 0, Msg: "expected a JSON object, got null"},
		},
		{
			name: "missing userId and anonymousId",
			typ:  schemas.TypeTrack,
			body: `{"event":"e"}`,
			want: verr("userId", "userId or anonymousId is required"),
		},
		{
			name: "empty userId and anonymousId",
			typ:  schemas.TypeIdentify,
			body: `{"userId":"","anonymousId":""}`,
			want: verr("userId", "userId or anonymousId is required"),
		},
		{
			name: "missing event on track",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u"}`,
			want: verr("event", "is required"),
		},
		{
			name: "empty event",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u","event":""}`,
			want: verr("event", "must not be empty"),
		},
		{
			name: "event too long",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u","event":"` + strings.Repeat("x", 201) + `"}`,
			want: verr("event", "must be at most 200 characters long, got 201"),
		},
		{
			name: "wrong types",
			typ:  schemas.TypeTrack,
			body: `{"userId":5,"anonymousId":"a","event":["x"],"properties":"p","context":[],"timestamp":0,"messageId":true,"writeKey":{}}`,
			want: verr(
				"context", "must be an object, got an array",
				"event", "must be a string, got an array",
				"messageId", "must be a string, got a boolean",
				"properties", "must be an object, got a string",
				"timestamp", "must be a string, got a number",
				"userId", "must be a string, got a number",
				"writeKey", "must be a string, got an object",
			),
		},
		{
			name: "traits not an object",
			typ:  schemas.TypeIdentify,
			body: `{"userId":"u","traits":["a"]}`,
			want: verr("traits", "must be an object, got an array"),
		},
		{
			name: "null context",
			typ:  schemas.TypeIdentify,
			body: `{"userId":"u","context":null}`,
			want: verr("context", "must be an object, got null"),
		},
		{
			name: "timestamp not date-time",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u","event":"e","timestamp":"2024-03-01 10:00:00"}`,
			want: verr("timestamp", dateTimeMsg+`"2024-03-01 10:00:00"`),
		},
		{
			name: "timestamp without zone",
			typ:  schemas.TypeIdentify,
			body: `{"userId":"u","timestamp":"2024-03-01T10:00:00"}`,
			want: verr("timestamp", dateTimeMsg+`"2024-03-01T10:00:00"`),
		},
		{
			name: "messageId too long",
			typ:  schemas.TypeIdentify,
			body: `{"userId":"u","messageId":"` + strings.Repeat("m", 257) + `"}`,
			want: verr("messageId", "must be at most 256 characters long, got 257"),
		},
		{
			name: "messageId with control character",
			typ:  schemas.TypeIdentify,
			body: `{"userId":"u","messageId":"a\nb"}`,
			want: verr("messageId", "must not contain control characters"),
		},
		{
			name: "unknown endpoint type",
			typ:  "page",
			body: `{"userId":"u"}`,
			want: verr("type", `unknown event type "page" (supported: identify, track)`),
		},
		{
			name: "unknown type in body",
			typ:  schemas.TypeIdentify,
			body: `{"type":"screen","userId":"u"}`,
			want: verr("type", `unknown event type "screen" (supported: identify, track)`),
		},
		{
			name: "type contradicts endpoint",
			typ:  schemas.TypeIdentify,
			body: `{"type":"track","userId":"u","event":"e"}`,
			want: verr("type", `is "track", but this endpoint only accepts "identify" events`),
		},
		{
			name: "type not a string",
			typ:  schemas.TypeTrack,
			body: `{"type":1,"userId":"u","event":"e"}`,
			want: verr("type", `must be "track", got 1`, "type", "must be a string, got a number"),
		},
		{
			name: "number out of range",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u","event":"e","properties":{"n":1e400}}`,
			want: verr("properties.n", "number 1e400 is out of range"),
		},
		{
			name: "body over the limit",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u","event":"` + strings.Repeat("e", 100) + `"}`,
			lim:  schemas.Limits{MaxEventBytes: 64},
			want: &schemas.LimitError{Field: "body", Size: bodySize, Limit: 64},
		},
		{
			name: "body over the default limit",
			typ:  schemas.TypeTrack,
			body: `{"userId":"u","event":"e","properties":{"p":"` + strings.Repeat("p", 32<<10) + `"}}`,
			want: &schemas.LimitError{Field: "body", Size: bodySize, Limit: 32 << 10},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := schemas.DecodeEvent(tt.typ, []byte(tt.body), tt.lim)
			if ev != nil {
				t.Errorf("got event %+v with error", ev)
			}
			checkErr(t, err, withBodySize(tt.want, tt.body))
		})
	}
}

func TestDecodeBatch(t *testing.T) {
	body := `{
		"batch": [
			{"type":"identify","userId":"u1","traits":{"plan":"pro"},"timestamp":"2024-03-01T10:00:00Z","messageId":"m1"},
			{"type":"track","anonymousId":"a1","event":"Viewed","properties":{"n":3},"context":{"page":{"path":"/"}},"integrations":{}},
			{"type":"track","userId":"u1","anonymousId":"a1","event":"Bought","writeKey":"wk2"}
		],
		"writeKey": "wk",
		"context": {"library":{"name":"analytics-go"}},
		"sentAt": "2024-03-01T10:00:01Z",
		"extra": 1
	}`
	got, err := schemas.DecodeBatch([]byte(body), schemas.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	want := &schemas.Batch{
		Batch: []schemas.Event{
			{Type: "identify", UserID: "u1", Traits: map[string]any{"plan": "pro"}, Timestamp: "2024-03-01T10:00:00Z", MessageID: "m1"},
			{Type: "track", AnonymousID: "a1", Event: "Viewed", Properties: map[string]any{"n": 3.0}, Context: map[string]any{"page": map[string]any{"path": "/"}}},
			{Type: "track", UserID: "u1", AnonymousID: "a1", Event: "Bought", WriteKey: "wk2"},
		},
		WriteKey: "wk",
		Context:  map[string]any{"library": map[string]any{"name": "analytics-go"}},
		SentAt:   "2024-03-01T10:00:01Z",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %#v\nwant %#v", got, want)
	}
}

// item returns a batch item of exactly size bytes.
func item(size int) string {
	const head, tail = `{"type":"track","userId":"u","event":"big","properties":{"pad":"`, `"}}`
	return head + strings.Repeat("x", size-len(head)-len(tail)) + tail
}

func TestDecodeBatchErrors(t *testing.T) {
	okTrack := `{"type":"track","userId":"u","event":"e"}`
	okIdentify := `{"type":"identify","anonymousId":"a"}`
	many := func(n int, it string) string {
		return `{"batch":[` + strings.TrimSuffix(strings.Repeat(it+",", n), ",") + `]}`
	}
	tests := []struct {
		name, body string
		lim        schemas.Limits
		want       error
	}{
		{
			name: "malformed JSON",
			body: `{"batch":[{"type":"track",}]}`,
			want: &schemas.SyntaxError{Offset: 27, Msg: "invalid character '}' looking for beginning of object key string"},
		},
		{
			name: "not an object",
			body: ` [` + okTrack + `]`,
			want: &schemas.SyntaxError{Offset: 1, Msg: "expected a JSON object, got an array"},
		},
		{
			name: "missing batch",
			body: `{"writeKey":"wk"}`,
			want: verr("batch", "is required"),
		},
		{
			name: "empty batch",
			body: `{"batch":[]}`,
			want: verr("batch", "must not be empty"),
		},
		{
			name: "batch not an array",
			body: `{"batch":{"0":` + okTrack + `}}`,
			want: verr("batch", "must be an array, got an object"),
		},
		{
			name: "too many events",
			body: many(2501, okIdentify),
			want: verr("batch", "must have at most 2500 items, got 2501"),
		},
		{
			name: "item not an object",
			body: `{"batch":[` + okTrack + `,"track"]}`,
			want: verr("batch[1]", "must be an object, got a string"),
		},
		{
			name: "item without type",
			body: `{"batch":[` + okTrack + `,{"userId":"u","event":"e"}]}`,
			want: verr("batch[1].type", "is required"),
		},
		{
			name: "unknown type",
			body: `{"batch":[` + okTrack + `,{"type":"page","userId":"u","name":"Home"}]}`,
			want: verr("batch[1].type", `unknown event type "page" (supported: identify, track)`),
		},
		{
			name: "type not a string",
			body: `{"batch":[{"type":null,"userId":"u"}]}`,
			want: verr("batch[0].type", "must be a string, got null"),
		},
		{
			name: "missing event on track at index 3",
			body: `{"batch":[` + okTrack + `,` + okIdentify + `,` + okTrack + `,{"type":"track","userId":"u"}]}`,
			want: verr("batch[3].event", "is required"),
		},
		{
			name: "missing ids",
			body: `{"batch":[{"type":"identify","traits":{}}]}`,
			want: verr("batch[0].userId", "userId or anonymousId is required"),
		},
		{
			name: "wrong types in items",
			body: `{"batch":[{"type":"identify","userId":7,"anonymousId":"a","traits":"t"},{"type":"track","userId":"u","event":42}]}`,
			want: verr(
				"batch[0].traits", "must be an object, got a string",
				"batch[0].userId", "must be a string, got a number",
				"batch[1].event", "must be a string, got a number",
			),
		},
		{
			name: "timestamp not date-time",
			body: `{"batch":[` + okTrack + `,` + okTrack + `,{"type":"track","userId":"u","event":"e","timestamp":"yesterday"}]}`,
			want: verr("batch[2].timestamp", dateTimeMsg+`"yesterday"`),
		},
		{
			name: "errors ordered by index",
			body: `{"batch":[` + strings.Repeat(okTrack+",", 2) + `{"type":"track","userId":"u"},` +
				strings.Repeat(okTrack+",", 7) + `{"type":"identify"},{"type":"track","anonymousId":"a"}]}`,
			want: verr(
				"batch[2].event", "is required",
				"batch[10].userId", "userId or anonymousId is required",
				"batch[11].event", "is required",
			),
		},
		{
			name: "top-level fields",
			body: `{"batch":[` + okTrack + `],"writeKey":1,"context":"c","sentAt":false}`,
			want: verr(
				"context", "must be an object, got a string",
				"sentAt", "must be a string, got a boolean",
				"writeKey", "must be a string, got a number",
			),
		},
		{
			name: "number out of range",
			body: `{"batch":[` + okTrack + `,{"type":"track","userId":"u","event":"e","properties":{"n":-1e999,"m":1},"context":{"a":[1,1e999]}}]}`,
			want: verr(
				"batch[1].context.a[1]", "number 1e999 is out of range",
				"batch[1].properties.n", "number -1e999 is out of range",
			),
		},
		{
			name: "numbers out of range, several in one object, and in the batch's context",
			body: `{"batch":[{"type":"track","userId":"u","event":"e","properties":{"m":1,"a":1e400,"b":{"c":[2.5,-1e400],"d":3}}}],"context":{"x":1e999}}`,
			want: verr(
				"batch[0].properties.a", "number 1e400 is out of range",
				"batch[0].properties.b.c[1]", "number -1e400 is out of range",
				"context.x", "number 1e999 is out of range",
			),
		},
		{
			name: "event over the limit",
			body: `{"batch":[` + okTrack + `,` + okTrack + `,` + item(40000) + `]}`,
			want: &schemas.LimitError{Field: "batch[2]", Size: 40000, Limit: 32768},
		},
		{
			name: "event over the limit and invalid",
			body: `{"batch":[{"type":"page"},` + item(40000) + `]}`,
			want: &schemas.LimitError{Field: "batch[1]", Size: 40000, Limit: 32768},
		},
		{
			name: "event over a custom limit",
			body: `{"batch":[` + item(1000) + `,` + item(1001) + `]}`,
			lim:  schemas.Limits{MaxEventBytes: 1000},
			want: &schemas.LimitError{Field: "batch[1]", Size: 1001, Limit: 1000},
		},
		{
			name: "body over the limit",
			body: many(20, item(30000)),
			want: &schemas.LimitError{Field: "body", Size: bodySize, Limit: 500 << 10},
		},
		{
			name: "body over a custom limit",
			body: many(3, okTrack),
			lim:  schemas.Limits{MaxBatchBytes: 100},
			want: &schemas.LimitError{Field: "body", Size: bodySize, Limit: 100},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := schemas.DecodeBatch([]byte(tt.body), tt.lim)
			if b != nil {
				t.Errorf("got batch with error")
			}
			checkErr(t, err, withBodySize(tt.want, tt.body))
			// DecodeBatch validates item by item; batch.schema.json as a
			// whole must say the same.
			switch tt.want.(type) {
			case *schemas.ValidationError, *schemas.SyntaxError:
				if !strings.Contains(tt.name, "out of range") {
					checkErr(t, schemas.ValidateBatchWithSchema([]byte(tt.body)), tt.want)
				}
			}
		})
	}
}

func TestDecodeBatchCaseSensitive(t *testing.T) {
	body := `{"batch":[{"type":"track","userId":"u","event":"e","Event":7,"USERID":"x"}],"BATCH":[],"WriteKey":1}`
	got, err := schemas.DecodeBatch([]byte(body), schemas.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	want := &schemas.Batch{Batch: []schemas.Event{{Type: "track", UserID: "u", Event: "e"}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %#v", got)
	}
}

func TestDecodeBatchAtTheLimits(t *testing.T) {
	body := `{"batch":[` + item(32<<10) + `]}`
	if _, err := schemas.DecodeBatch([]byte(body), schemas.Limits{}); err != nil {
		t.Fatalf("event of exactly 32 KiB: %v", err)
	}
	body = `{"batch":[` + strings.TrimSuffix(strings.Repeat(`{"type":"identify","userId":"u"},`, 2500), ",") + `]}`
	b, err := schemas.DecodeBatch([]byte(body), schemas.Limits{})
	if err != nil {
		t.Fatalf("2500 events: %v", err)
	}
	if len(b.Batch) != 2500 {
		t.Fatalf("got %d events", len(b.Batch))
	}
}

func TestErrorMessages(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{&schemas.LimitError{Field: "batch[2]", Size: 40000, Limit: 32768}, "batch[2]: event is 40000 bytes, over the limit of 32768 bytes"},
		{&schemas.LimitError{Field: "body", Size: 600000, Limit: 512000}, "body: request body is 600000 bytes, over the limit of 512000 bytes"},
		{&schemas.SyntaxError{Offset: 17, Msg: "invalid character '}'"}, "malformed JSON at byte 17: invalid character '}'"},
		{verr("batch[3].event", "is required", "userId", "userId or anonymousId is required"), "batch[3].event: is required; userId: userId or anonymousId is required"},
		{verr("", "whole body"), "whole body"},
		{&schemas.ValidationError{}, "invalid message"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
	}

	// Long lists are cut short.
	body := `{"batch":[` + strings.TrimSuffix(strings.Repeat(`{"type":"track","userId":"u"},`, 30), ",") + `]}`
	_, err := schemas.DecodeBatch([]byte(body), schemas.Limits{})
	var ve *schemas.ValidationError
	if !errors.As(err, &ve) || len(ve.Fields) != 30 {
		t.Fatalf("got %v, want 30 field errors", err)
	}
	if msg := err.Error(); !strings.HasSuffix(msg, "batch[19].event: is required; and 10 more") {
		t.Errorf("got %q", msg)
	}
}

func TestSyntaxErrorUnwrap(t *testing.T) {
	_, err := schemas.DecodeBatch([]byte(`{"batch":[}`), schemas.Limits{})
	var se *json.SyntaxError
	if !errors.As(err, &se) {
		t.Fatalf("got %T %v, want to unwrap to *json.SyntaxError", err, err)
	}
}

func TestDefaultLimits(t *testing.T) {
	if got, want := schemas.DefaultLimits(), (schemas.Limits{MaxEventBytes: 32768, MaxBatchBytes: 512000}); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestFieldPaths(t *testing.T) {
	// Numeric keys of objects are not indices; odd keys are quoted. The
	// schema has no rule inside free-form objects, so use the dead-letter
	// headers, whose values must be arrays of strings.
	body := `{"headers":{"0":"x","a.b":[1],"ok":["y",2]}}`
	err := schemas.ValidateDeadLetter([]byte(body))
	var ve *schemas.ValidationError
	if !errors.As(err, &ve) {
		t.Fatal(err)
	}
	var got []string
	for _, f := range ve.Fields {
		if strings.HasPrefix(f.Field, "headers") {
			got = append(got, f.Field+": "+f.Message)
		}
	}
	want := []string{
		`headers.ok[1]: must be a string, got a number`,
		`headers["0"]: must be an array, got a string`,
		`headers["a.b"][0]: must be a string, got a number`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

func TestConcurrentDecode(t *testing.T) {
	body := []byte(`{"batch":[{"type":"track","userId":"u","event":"e"},{"type":"identify","anonymousId":"a"}]}`)
	bad := []byte(`{"batch":[{"type":"track","userId":"u"}]}`)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if _, err := schemas.DecodeBatch(body, schemas.Limits{}); err != nil {
					t.Error(err)
					return
				}
				if _, err := schemas.DecodeBatch(bad, schemas.Limits{}); err == nil {
					t.Error("bad batch accepted")
					return
				}
			}
		})
	}
	wg.Wait()
}

// The raw item scanner is only given well-formed JSON, but no input may
// make it hang or panic: stray closing brackets are passed over.
func TestBatchItemsPassesOverStrayBrackets(t *testing.T) {
	for _, body := range []string{`{"batch":[}]}`, `{"batch":[1,}`, `{"batch":[1}]}`, `{"a":}`, `{"batch":[`, `{"batch":]}`, `{}}`} {
		done := make(chan []int, 1)
		go func() { done <- schemas.BatchItemSizes([]byte(body)) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("BatchItemSizes(%q) did not return", body)
		}
	}
}
