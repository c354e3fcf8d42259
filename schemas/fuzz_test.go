package schemas_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/shardflow/shardflow/schemas"
)

// FuzzDecodeBatch checks that DecodeBatch never panics, fails only with
// its documented error types, and that what it accepts re-encodes to a
// batch it accepts again, unchanged.
func FuzzDecodeBatch(f *testing.F) {
	for _, seed := range []string{
		`{"batch":[{"type":"track","userId":"u","event":"e"}]}`,
		`{"batch":[{"type":"identify","anonymousId":"a","traits":{"n":1,"s":"x","l":[1,{}],"z":null}}],"writeKey":"k","context":{},"sentAt":"x"}`,
		`{"batch":[{"type":"track","userId":"u","event":"e","timestamp":"2024-02-29T23:59:60Z","messageId":"\u00e9"}]}`,
		`{"batch":[{"type":"page"},1,"x",null,[],{"type":"track"}]}`,
		`{"batch":[{"type":"track","userId":"u","event":"e","properties":{"n":1e400}}]}`,
		`{"batch":[{"type":"track","userId":"u","event":"e","UserId":1}],"Batch":1}`,
		`{"batch":{"0":{}}}`,
		`{"batch":[]}`,
		`{"batch":[{"type":"identify","userId":"u"}]} trailing`,
		`{"batch":[{"type":"identify","userId":"u","traits":{"\u0000/~":{"0":[0]}}}]}`,
		`{"batch":[{"type":"track","userId":"u","event":"e","Event":7}],"BATCH":[]}`,
		`{"batch":[{"type":"identify","anonymousId":"a"}],"context":{"n":[1.5e3,-0,12345678901234567890]},"\u0062atch":[{"type":"track","userId":"u","event":"e"}]}`,
		`{"batch":[{"s":"]}\\\"[{"} , [1,[2]] ,"x",true,-1.5e3,null,{}],"batch" : [ {"a":"\\u005d"} ]}`,
		`{"batch":[1],"batch":null}`,
		`{"batch":[ {"type":"track","userId":"u","event":"e","con\u0074ext":{"a":1},"context" : {"b":[1.50,-0,1E2]},"writeKey":"k","traits":{"t":1}} ,{"type":"identify","anonymousId":"a","properties":{"p":1},"traits":{"x":"\u003c"},"context":{}}],"context":{"c":true}}`,
		`{"batch":[{"type":"track","userId":"u","event":"e","context":{"a":1},"context":{}},{"type":"identify","userId":"u","traits":{"a":"\"}\\"}}],"context":{"n":12345678901234567890}}`,
		`[]`, `null`, `"batch"`, `{`, ``, `{"batch":[{"type":"track","userId":"u","event":"` + "\xff\xfe" + `"}]}`,
	} {
		f.Add([]byte(seed))
	}
	lim := schemas.Limits{MaxEventBytes: 4 << 10, MaxBatchBytes: 64 << 10}
	f.Fuzz(func(t *testing.T, body []byte) {
		b, err := schemas.DecodeBatch(body, lim)
		checkAgainstSchema(t, body, err)
		checkItemSizes(t, body)
		if err != nil {
			if b != nil {
				t.Fatal("batch returned with an error")
			}
			var (
				le *schemas.LimitError
				se *schemas.SyntaxError
				ve *schemas.ValidationError
			)
			switch {
			case errors.As(err, &le), errors.As(err, &se):
			case errors.As(err, &ve):
				if len(ve.Fields) == 0 {
					t.Fatalf("ValidationError without fields for %q", body)
				}
			default:
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			_ = err.Error()
			return
		}
		if len(b.Batch) == 0 {
			t.Fatalf("accepted an empty batch: %q", body)
		}
		for i, ev := range b.Batch {
			if ev.Type != schemas.TypeIdentify && ev.Type != schemas.TypeTrack {
				t.Fatalf("batch[%d]: type %q", i, ev.Type)
			}
			if ev.UserID == "" && ev.AnonymousID == "" {
				t.Fatalf("batch[%d]: no user id", i)
			}
			if ev.Type == schemas.TypeTrack && ev.Event == "" {
				t.Fatalf("batch[%d]: no event name", i)
			}
		}
		checkAppendEvent(t, body, b)
		again, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		b2, err := schemas.DecodeBatch(again, schemas.Limits{MaxEventBytes: 1 << 30, MaxBatchBytes: 1 << 30})
		if err != nil {
			t.Fatalf("re-encoded batch rejected: %v\n%s", err, again)
		}
		if again2, _ := json.Marshal(b2); !bytes.Equal(again, again2) {
			t.Fatalf("re-encoded batch differs:\n%s\n%s", again, again2)
		}

		// Differential check: encoding/json decodes the same body to the
		// same batch, unless a key differs from a field name only in case
		// (encoding/json would take it, DecodeBatch ignores it) or occurs
		// twice in an object (encoding/json merges repeated objects and
		// arrays into the struct, DecodeBatch keeps the last value).
		if hasCaseVariantKeys(body) || hasDuplicateKeys(body) {
			return
		}
		var ref schemas.Batch
		if err := json.Unmarshal(body, &ref); err != nil {
			return // say, {"userId":5,"userId":"u"}: the last one wins in both, but encoding/json reports the first
		}
		for i := range ref.Batch {
			switch e := &ref.Batch[i]; e.Type {
			case schemas.TypeIdentify:
				e.Event, e.Properties = "", nil
			case schemas.TypeTrack:
				e.Traits = nil
			}
		}
		if !reflect.DeepEqual(&ref, b) {
			t.Fatalf("encoding/json decodes differently:\n%#v\n%#v", &ref, b)
		}
	})
}

// checkAppendEvent checks that each event of the accepted batch body,
// changed as ingest changes it (messageId and timestamp filled in when
// missing, writeKey cleared, the batch's context given to an event
// without one) and encoded by AppendEvent from its raw JSON, decodes to
// the same event as its encoding by json.Marshal.
func checkAppendEvent(t *testing.T, body []byte, b *schemas.Batch) {
	t.Helper()
	b2, raw, err := schemas.DecodeBatchRaw(body, schemas.Limits{MaxEventBytes: 1 << 30, MaxBatchBytes: 1 << 30})
	if err != nil {
		t.Fatalf("DecodeBatchRaw rejected what DecodeBatch accepted: %v", err)
	}
	if len(raw) != len(b2.Batch) {
		t.Fatalf("%d raw events for %d events\n%q", len(raw), len(b2.Batch), body)
	}
	lim := schemas.Limits{MaxEventBytes: 1 << 30, MaxBatchBytes: 1 << 30}
	for i := range b2.Batch {
		ev := &b2.Batch[i]
		if ev.MessageID == "" {
			ev.MessageID = "generated-id"
		}
		if ev.Timestamp == "" {
			ev.Timestamp = "2024-03-01T10:00:00.123456789Z"
		}
		ev.WriteKey = ""
		if ev.Context == nil {
			ev.Context = b2.Context
		}
		data, err := schemas.AppendEvent([]byte("prefix"), ev, raw[i])
		if err != nil {
			t.Fatalf("batch[%d]: AppendEvent: %v", i, err)
		}
		data = bytes.TrimPrefix(data, []byte("prefix"))
		got, err := schemas.DecodeEvent(ev.Type, data, lim)
		if err != nil {
			t.Fatalf("batch[%d]: stored event rejected: %v\n%s", i, err, data)
		}
		marshalled, _ := json.Marshal(ev)
		want, err := schemas.DecodeEvent(ev.Type, marshalled, lim)
		if err != nil {
			t.Fatalf("batch[%d]: marshalled event rejected: %v\n%s", i, err, marshalled)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("batch[%d]: stored event decodes to\n%#v\nmarshalled one to\n%#v\n%s\n%s", i, got, want, data, marshalled)
		}
	}
}

func hasCaseVariantKeys(body []byte) bool {
	var top map[string]any
	if json.Unmarshal(body, &top) != nil {
		return true
	}
	variant := func(m map[string]any, t reflect.Type) bool {
		for k := range m {
			for f := range t.Fields() {
				name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
				if k != name && strings.EqualFold(k, name) {
					return true
				}
			}
		}
		return false
	}
	if variant(top, reflect.TypeOf(schemas.Batch{})) {
		return true
	}
	items, _ := top["batch"].([]any)
	for _, it := range items {
		if m, ok := it.(map[string]any); ok && variant(m, reflect.TypeOf(schemas.Event{})) {
			return true
		}
	}
	return false
}

func hasDuplicateKeys(body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		keys   map[string]bool
		object bool
		key    bool // next string token is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.key {
			if d, ok := tok.(json.Delim); !ok || d != '}' {
				k := tok.(string)
				if top.keys[k] {
					return true
				}
				top.keys[k] = true
				top.key = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{keys: map[string]bool{}, object: true, key: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].key = true // a value ended
		}
	}
}

// checkAgainstSchema checks the outcome err of DecodeBatch(body) against
// the validation of body by batch.schema.json as a whole: DecodeBatch
// validates item by item, and must agree.
func checkAgainstSchema(t *testing.T, body []byte, err error) {
	t.Helper()
	var (
		le *schemas.LimitError
		ve *schemas.ValidationError
	)
	if errors.As(err, &le) {
		return
	}
	full := schemas.ValidateBatchWithSchema(body)
	var fullVE *schemas.ValidationError
	switch {
	case err == nil:
		if full != nil {
			t.Fatalf("DecodeBatch accepted what the schema rejects: %v\n%q", full, body)
		}
	case errors.As(err, &ve) && full == nil:
		for _, f := range ve.Fields { // found decoding, after validation
			if !strings.HasSuffix(f.Message, "is out of range") {
				t.Fatalf("DecodeBatch rejected what the schema accepts: %v\n%q", err, body)
			}
		}
	case errors.As(err, &ve) && errors.As(full, &fullVE):
		if !reflect.DeepEqual(ve.Fields, fullVE.Fields) {
			t.Fatalf("DecodeBatch: %v\nschema: %v\n%q", err, full, body)
		}
	default:
		if full == nil || err.Error() != full.Error() {
			t.Fatalf("DecodeBatch: %v\nschema: %v\n%q", err, full, body)
		}
	}
}

// checkItemSizes checks the sizes DecodeBatch enforces MaxEventBytes on
// against the raw items encoding/json finds.
func checkItemSizes(t *testing.T, body []byte) {
	t.Helper()
	if !json.Valid(body) || hasCaseVariantKeys(body) {
		return
	}
	var raw struct {
		Batch []json.RawMessage `json:"batch"`
	}
	if json.Unmarshal(body, &raw) != nil {
		return
	}
	got := schemas.BatchItemSizes(body)
	var want []int
	if raw.Batch != nil {
		want = []int{}
		for _, r := range raw.Batch {
			want = append(want, len(r))
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("item sizes %v, want %v\n%q", got, want, body)
	}
}
