package schemas_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/shardflow/shardflow/schemas"
)

// AppendEvent writes the fields of the event, copying the free-form
// objects from the JSON they were decoded from: the last of repeated keys
// (escaped or not), as sent, white space and all; members the event does
// not keep (extras, writeKey once cleared, the other type's fields) are
// left out.
func TestAppendEvent(t *testing.T) {
	body := []byte(`{"batch":[` +
		`{"type":"track","userId":"u1","event":"Signed Up","properties":{"a":1},"prop\u0065rties":{ "price" : 18.990, "n":[1E2,-0] },"traits":{"t":1},"writeKey":"wk","integrations":{"x":true}},` +
		`{"type":"identify","anonymousId":"a\u00e9","traits":{"email":"x@example.com"},"event":"ignored","context":{},"messageId":"m2","timestamp":"2024-03-01T10:00:00Z"},` +
		`{"type":"track","userId":"u3","event":"e","context":{"ip":"192.0.2.1"}}` +
		`],"context":{"library":{"name":"analytics.js"}},"writeKey":"wk"}`)
	b, raw, err := schemas.DecodeBatchRaw(body, schemas.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range b.Batch { // as ingest does
		ev := &b.Batch[i]
		if ev.MessageID == "" {
			ev.MessageID = "gen-" + string(rune('0'+i))
		}
		if ev.Timestamp == "" {
			ev.Timestamp = "2024-03-01T10:00:00.5Z"
		}
		ev.WriteKey = ""
		if ev.Context == nil {
			ev.Context = b.Context
		}
	}
	want := []string{
		// properties: the last, as sent; the batch's context, encoded.
		`{"type":"track","messageId":"gen-0","userId":"u1","event":"Signed Up","properties":{ "price" : 18.990, "n":[1E2,-0] },"context":{"library":{"name":"analytics.js"}},"timestamp":"2024-03-01T10:00:00.5Z"}`,
		// an empty context is left out, as json.Marshal does; so is its event's own context.
		`{"type":"identify","messageId":"m2","anonymousId":"aé","traits":{"email":"x@example.com"},"timestamp":"2024-03-01T10:00:00Z"}`,
		`{"type":"track","messageId":"gen-2","userId":"u3","event":"e","context":{"ip":"192.0.2.1"},"timestamp":"2024-03-01T10:00:00.5Z"}`,
	}
	for i, w := range want {
		got, err := schemas.AppendEvent(nil, &b.Batch[i], raw[i])
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != w {
			t.Errorf("event %d:\n got %s\nwant %s", i, got, w)
		}
		// Without the raw JSON, the same event, all encoded.
		enc, err := schemas.AppendEvent(nil, &b.Batch[i], nil)
		if err != nil {
			t.Fatal(err)
		}
		back, err := schemas.DecodeEvent(b.Batch[i].Type, got, schemas.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		backEnc, err := schemas.DecodeEvent(b.Batch[i].Type, enc, schemas.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		marshalled, _ := json.Marshal(&b.Batch[i])
		if string(enc) != string(marshalled) {
			t.Errorf("event %d without raw:\n got %s\nwant %s", i, enc, marshalled)
		}
		if !reflect.DeepEqual(back, backEnc) {
			t.Errorf("event %d decodes to\n%#v\nencoded from the event alone to\n%#v", i, back, backEnc)
		}
	}
}

// A single event's raw JSON is the request body; a map the caller set
// where raw has an empty one is encoded, not copied.
func TestAppendEventSingle(t *testing.T) {
	body := []byte(`{"userId":"u","event":"e","context":{},"writeKey":"wk","timestamp":"2024-03-01T10:00:00Z","properties":{"s":"<\"\u2028>"}}`)
	ev, err := schemas.DecodeEvent(schemas.TypeTrack, body, schemas.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	ev.MessageID, ev.WriteKey = "id\t1", ""
	ev.Context = map[string]any{"n": 1.5}
	got, err := schemas.AppendEvent(nil, ev, body)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"type":"track","messageId":"id\t1","userId":"u","event":"e","properties":{"s":"<\"\u2028>"},"context":{"n":1.5},"timestamp":"2024-03-01T10:00:00Z"}`
	if string(got) != want {
		t.Fatalf("\n got %s\nwant %s", got, want)
	}
}
