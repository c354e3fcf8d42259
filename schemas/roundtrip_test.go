package schemas_test

import (
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shardflow/shardflow/schemas"
)

var (
	t0 = time.Date(2024, 3, 1, 10, 0, 0, 123456789, time.UTC)
	t1 = time.Date(2024, 3, 1, 10, 5, 0, 0, time.FixedZone("CET", 3600))
)

func sampleTrack() schemas.Event {
	return schemas.Event{
		Type: schemas.TypeTrack, MessageID: "m-1", UserID: "u1", AnonymousID: "a1", Event: "Order Completed",
		Properties: map[string]any{"total": 30.5, "currency": "EUR", "items": []any{map[string]any{"sku": "s1"}}},
		Context:    map[string]any{"ip": "192.0.2.1"},
		Timestamp:  "2024-03-01T10:00:00.5-05:00",
		WriteKey:   "wk",
	}
}

func sampleIdentify() schemas.Event {
	return schemas.Event{
		Type: schemas.TypeIdentify, AnonymousID: "a1",
		Traits: map[string]any{"email": "a@example.com", "vip": true, "logins": 3.0, "tags": nil},
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTripEvent(t *testing.T) {
	for _, ev := range []schemas.Event{sampleTrack(), sampleIdentify()} {
		got, err := schemas.DecodeEvent(ev.Type, mustMarshal(t, ev), schemas.Limits{})
		if err != nil {
			t.Fatalf("%s: %v", ev.Type, err)
		}
		if !reflect.DeepEqual(*got, ev) {
			t.Fatalf("got  %#v\nwant %#v", *got, ev)
		}
	}
}

func TestRoundTripBatch(t *testing.T) {
	b := schemas.Batch{
		Batch:    []schemas.Event{sampleTrack(), sampleIdentify(), sampleTrack()},
		WriteKey: "wk",
		Context:  map[string]any{"library": map[string]any{"name": "analytics-go", "version": "3.0.0"}},
		SentAt:   "2024-03-01T10:00:01Z",
	}
	got, err := schemas.DecodeBatch(mustMarshal(t, b), schemas.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*got, b) {
		t.Fatalf("got  %#v\nwant %#v", *got, b)
	}
}

func sampleOutbound() schemas.Outbound {
	return schemas.Outbound{
		ID: "out-1", Account: "acme", Shard: 0, Generation: 1, Channel: schemas.ChannelWebhook,
		Trigger: "order-completed", URL: "https://hooks.example.com/x?y=1", InboundID: "m-1",
		Event: sampleTrack(), CreatedAt: t0,
	}
}

func TestRoundTripOutbound(t *testing.T) {
	o := sampleOutbound()
	if err := schemas.ValidateOutbound(mustMarshal(t, o)); err != nil {
		t.Fatal(err)
	}
	var back schemas.Outbound
	if err := json.Unmarshal(mustMarshal(t, o), &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, o) {
		t.Fatalf("got  %#v\nwant %#v", back, o)
	}

	email := sampleOutbound()
	email.Channel, email.URL, email.Shard, email.Generation = schemas.ChannelEmail, "", 7, 1<<40
	if err := schemas.ValidateOutbound(mustMarshal(t, email)); err != nil {
		t.Fatalf("email without url: %v", err)
	}
}

func TestValidateOutboundErrors(t *testing.T) {
	noURL := sampleOutbound()
	noURL.URL = ""
	badEvent := sampleOutbound()
	badEvent.Event.Event, badEvent.Event.UserID, badEvent.Event.AnonymousID = "", "", ""
	badChannel := sampleOutbound()
	badChannel.Channel, badChannel.Shard, badChannel.Generation = "sms", -1, 0
	relURL := sampleOutbound()
	relURL.URL = "/hook"

	tests := []struct {
		name string
		body []byte
		want error
	}{
		{"webhook without url", mustMarshal(t, noURL), verr("url", "is required")},
		{"relative url", mustMarshal(t, relURL), verr("url", `must be an absolute URI, got "/hook"`)},
		{"event not a valid track event", mustMarshal(t, badEvent), verr("event.event", "is required", "event.userId", "userId or anonymousId is required")},
		{"bad channel, shard, generation", mustMarshal(t, badChannel), verr(
			"channel", `must be one of "webhook", "email", got "sms"`,
			"generation", "must be at least 1, got 0",
			"shard", "must be at least 0, got -1",
		)},
		{"empty object", []byte(`{}`), verr(
			"account", "is required", "channel", "is required", "createdAt", "is required", "event", "is required",
			"generation", "is required", "id", "is required", "inboundId", "is required", "shard", "is required",
			"trigger", "is required",
		)},
		{"fractional shard", []byte(strings.Replace(string(mustMarshal(t, sampleOutbound())), `"shard":0`, `"shard":0.5`, 1)),
			verr("shard", "must be an integer, got a number")},
		{"malformed", []byte(`{"id":`), &schemas.SyntaxError{Offset: 6, Msg: "unexpected end of JSON input"}},
		{"not an object", []byte(`"x"`), &schemas.SyntaxError{Offset: 0, Msg: "expected a JSON object, got a string"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, schemas.ValidateOutbound(tt.body), tt.want)
		})
	}
}

func TestRoundTripAccountEvent(t *testing.T) {
	for _, typ := range []string{schemas.AccountCreated, schemas.AccountSuspended, schemas.AccountRestored, schemas.AccountDeleted} {
		e := schemas.AccountEvent{Type: typ, Account: "acme", Shard: 3, Generation: 2, At: t1}
		b := mustMarshal(t, e)
		if err := schemas.ValidateAccountEvent(b); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		var back schemas.AccountEvent
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if !back.At.Equal(e.At) || back.Type != e.Type || back.Account != e.Account || back.Shard != e.Shard || back.Generation != e.Generation {
			t.Fatalf("got %+v, want %+v", back, e)
		}
	}
	err := schemas.ValidateAccountEvent([]byte(`{"type":"paused","account":"","shard":1,"generation":1,"at":"2024-03-01"}`))
	checkErr(t, err, verr(
		"account", "must not be empty",
		"at", dateTimeMsg+`"2024-03-01"`,
		"type", `must be one of "created", "suspended", "restored", "deleted", got "paused"`,
	))
}

func sampleDeadLetter() schemas.DeadLetter {
	return schemas.DeadLetter{
		ID: "INBOUND_3:42", OriginalSubject: "in.3.acme", Headers: map[string][]string{"Nats-Msg-Id": {"m-1"}, "X-Multi": {"a", "b"}},
		Payload: []byte(`{"userId":"u"}` + "\x00\xff"), Account: "acme", Shard: 3, Stage: "router", ErrorClass: schemas.ErrorClassSchemaInvalid,
		Error: "event: is required", Attempts: 1, FirstFailure: t0, LastFailure: t1, OriginStream: "INBOUND_3", OriginSeq: 42,
		TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", DeadLetteredAt: t1,
	}
}

func TestRoundTripDeadLetter(t *testing.T) {
	d := sampleDeadLetter()
	b := mustMarshal(t, d)
	if err := schemas.ValidateDeadLetter(b); err != nil {
		t.Fatal(err)
	}
	var back schemas.DeadLetter
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Payload, d.Payload) || !reflect.DeepEqual(back.Headers, d.Headers) || back.ID != d.ID || !back.LastFailure.Equal(d.LastFailure) {
		t.Fatalf("got %+v, want %+v", back, d)
	}

	// Zero values the schema would reject as null are written as empty;
	// the trace id may be empty; the account may be unknown; a sequence
	// past 2^63 survives.
	z := sampleDeadLetter()
	z.Headers, z.Payload, z.TraceID, z.Account, z.ErrorClass = nil, nil, "", "", schemas.ErrorClassUndecodable
	z.OriginSeq, z.ID = 1<<63+1, "INBOUND_3:9223372036854775809"
	b = mustMarshal(t, z)
	if err := schemas.ValidateDeadLetter(b); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if !strings.Contains(string(b), `"headers":{},"payload":""`) {
		t.Errorf("got %s", b)
	}
	z.Headers = map[string][]string{"A": nil}
	b = mustMarshal(t, z)
	if err := schemas.ValidateDeadLetter(b); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if z.Headers["A"] != nil {
		t.Error("MarshalJSON changed the caller's headers")
	}
}

func TestValidateDeadLetterErrors(t *testing.T) {
	wrongID := sampleDeadLetter()
	wrongID.ID = "INBOUND_3:41"
	badID := sampleDeadLetter()
	badID.ID = "INBOUND_3-42"
	zero := sampleDeadLetter()
	zero.Attempts, zero.OriginSeq, zero.Stage, zero.ErrorClass = 0, 0, "", ""
	tests := []struct {
		name string
		body []byte
		want error
	}{
		{"id does not match origin", mustMarshal(t, wrongID), verr("id", `must be "INBOUND_3:42" (<originStream>:<originSeq>), got "INBOUND_3:41"`)},
		{"id not of the form", mustMarshal(t, badID), verr("id", `must have the form "<originStream>:<originSeq>", got "INBOUND_3-42"`)},
		{"zero values", mustMarshal(t, zero), verr(
			"attempts", "must be at least 1, got 0",
			"errorClass", "must not be empty",
			"originSeq", "must be at least 1, got 0",
			"stage", "must not be empty",
		)},
		{"payload not base64", []byte(strings.Replace(string(mustMarshal(t, sampleDeadLetter())), `"payload":"`, `"payload":"*`, 1)),
			verr("payload", "must be base64-encoded")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, schemas.ValidateDeadLetter(tt.body), tt.want)
		})
	}
}

// TestTypesMatchSchemas checks that each Go type has exactly the
// properties its schema declares, and that no property the schema
// requires is tagged omitempty.
func TestTypesMatchSchemas(t *testing.T) {
	tests := []struct {
		v     any
		files []string
	}{
		{schemas.Event{}, []string{schemas.EventSchema, schemas.IdentifySchema, schemas.TrackSchema}},
		{schemas.Batch{}, []string{schemas.BatchSchema}},
		{schemas.Outbound{}, []string{schemas.OutboundSchema}},
		{schemas.AccountEvent{}, []string{schemas.AccountEventSchema}},
		{schemas.DeadLetter{}, []string{schemas.DeadLetterSchema}},
	}
	for _, tt := range tests {
		typ := reflect.TypeOf(tt.v)
		goProps := map[string]bool{} // name -> omitempty
		for f := range typ.Fields() {
			name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			goProps[name] = strings.Contains(opts, "omitempty")
		}
		schemaProps := map[string]bool{}
		var required []string
		for _, file := range tt.files {
			doc := readSchema(t, file)
			for name := range doc["properties"].(map[string]any) {
				schemaProps[name] = true
			}
			for _, r := range asSlice(doc["required"]) {
				required = append(required, r.(string))
			}
		}
		if got, want := slices.Sorted(maps.Keys(goProps)), slices.Sorted(maps.Keys(schemaProps)); !slices.Equal(got, want) {
			t.Errorf("%s: Go properties %q, schema properties %q", typ.Name(), got, want)
		}
		if typ == reflect.TypeOf(schemas.Event{}) {
			continue // one type for two schemas: every field is optional in one
		}
		for _, r := range required {
			if goProps[r] {
				t.Errorf("%s: required property %q is omitempty", typ.Name(), r)
			}
		}
	}
}

func readSchema(t *testing.T, name string) map[string]any {
	t.Helper()
	b, err := fs.ReadFile(schemas.SchemaFiles(), name)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return doc
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

func TestSchemaFiles(t *testing.T) {
	want := []string{
		schemas.AccountEventSchema, schemas.BatchSchema, schemas.DeadLetterSchema, schemas.EventSchema,
		schemas.IdentifySchema, schemas.OutboundSchema, schemas.TrackSchema,
	}
	entries, err := fs.ReadDir(schemas.SchemaFiles(), ".")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for _, name := range want {
		doc := readSchema(t, name)
		if id := doc["$id"]; id != schemas.BaseURL+name {
			t.Errorf("%s: $id %v", name, id)
		}
		if s := doc["$schema"]; s != "https://json-schema.org/draft/2020-12/schema" {
			t.Errorf("%s: $schema %v", name, s)
		}
	}
}

// TestAllValidatorsReject checks the error types of the Validate functions
// on the same bad inputs.
func TestAllValidatorsReject(t *testing.T) {
	for name, f := range map[string]func([]byte) error{
		"outbound": schemas.ValidateOutbound, "account": schemas.ValidateAccountEvent, "deadletter": schemas.ValidateDeadLetter,
	} {
		var se *schemas.SyntaxError
		if err := f([]byte(`{`)); !errors.As(err, &se) {
			t.Errorf("%s: got %T, want *SyntaxError", name, err)
		}
		var ve *schemas.ValidationError
		if err := f([]byte(`{}`)); !errors.As(err, &ve) || len(ve.Fields) == 0 {
			t.Errorf("%s: got %T, want *ValidationError", name, err)
		}
	}
}
