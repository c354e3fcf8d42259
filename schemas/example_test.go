package schemas_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"time"

	"github.com/shardflow/shardflow/schemas"
)

func ExampleDecodeEvent() {
	body := []byte(`{
		"userId": "user-42",
		"event": "Order Completed",
		"properties": {"total": 30.5, "currency": "EUR"},
		"timestamp": "2024-03-01T10:00:00Z",
		"integrations": {"All": true}
	}`)
	ev, err := schemas.DecodeEvent(schemas.TypeTrack, body, schemas.DefaultLimits())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(ev.Type, ev.UserID, ev.Event, ev.Properties["total"], ev.Timestamp)

	_, err = schemas.DecodeEvent(schemas.TypeTrack, []byte(`{"event": "Order Completed"}`), schemas.DefaultLimits())
	fmt.Println(err)
	// Output:
	// track user-42 Order Completed 30.5 2024-03-01T10:00:00Z
	// userId: userId or anonymousId is required
}

func ExampleDecodeBatch() {
	body := []byte(`{"batch": [
		{"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
		{"type": "track", "anonymousId": "a1"},
		{"type": "page", "userId": "u1", "name": "Home"},
		{"type": "track", "userId": "u1", "event": "Signed Up", "timestamp": "yesterday"}
	]}`)
	_, err := schemas.DecodeBatch(body, schemas.DefaultLimits())
	var ve *schemas.ValidationError
	if errors.As(err, &ve) {
		for _, f := range ve.Fields {
			fmt.Printf("%s: %s\n", f.Field, f.Message)
		}
	}
	// Output:
	// batch[1].event: is required
	// batch[2].type: unknown event type "page" (supported: identify, track)
	// batch[3].timestamp: must be an RFC 3339 date-time such as "2006-01-02T15:04:05Z", got "yesterday"
}

// The error types map to HTTP status codes without looking at messages.
func ExampleDecodeBatch_httpStatus() {
	status := func(err error) int {
		var (
			le *schemas.LimitError
			se *schemas.SyntaxError
			ve *schemas.ValidationError
		)
		switch {
		case err == nil:
			return http.StatusOK
		case errors.As(err, &le):
			return http.StatusRequestEntityTooLarge
		case errors.As(err, &se), errors.As(err, &ve):
			return http.StatusBadRequest
		}
		return http.StatusInternalServerError
	}
	lim := schemas.Limits{MaxEventBytes: 64} // MaxBatchBytes: default
	for _, body := range []string{
		`{"batch": [{"type": "track", "userId": "u1", "event": "Signed Up"}]}`,
		`{"batch": [{"type": "track", "userId": "u1", "event": "` + fmt.Sprintf("%080d", 0) + `"}]}`,
		`{"batch": [{"type": "track", "userId": "u1", "event": "Signed Up"}}`,
		`{"batch": []}`,
	} {
		_, err := schemas.DecodeBatch([]byte(body), lim)
		fmt.Println(status(err), err)
	}
	// Output:
	// 200 <nil>
	// 413 batch[0]: event is 126 bytes, over the limit of 64 bytes
	// 400 malformed JSON at byte 67: invalid character '}' after array element
	// 400 batch: must not be empty
}

func ExampleValidateDeadLetter() {
	at := time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)
	dl := schemas.DeadLetter{
		ID:              "INBOUND_3:42",
		OriginalSubject: "in.3.acme",
		Headers:         map[string][]string{"Nats-Msg-Id": {"m-1"}},
		Payload:         []byte(`{"type":"track"}`),
		Account:         "acme",
		Shard:           3,
		Stage:           "router",
		ErrorClass:      schemas.ErrorClassSchemaInvalid,
		Error:           "event: is required",
		Attempts:        1,
		FirstFailure:    at,
		LastFailure:     at,
		OriginStream:    "INBOUND_3",
		OriginSeq:       42,
		DeadLetteredAt:  at,
	}
	b, _ := json.Marshal(dl)
	fmt.Println(schemas.ValidateDeadLetter(b))

	dl.Attempts, dl.ID = 0, "INBOUND_3:7"
	b, _ = json.Marshal(dl)
	fmt.Println(schemas.ValidateDeadLetter(b))

	dl.Attempts = 1
	b, _ = json.Marshal(dl)
	fmt.Println(schemas.ValidateDeadLetter(b))
	// Output:
	// <nil>
	// attempts: must be at least 1, got 0
	// id: must be "INBOUND_3:42" (<originStream>:<originSeq>), got "INBOUND_3:7"
}

func ExampleSchemaFiles() {
	b, err := fs.ReadFile(schemas.SchemaFiles(), schemas.TrackSchema)
	if err != nil {
		fmt.Println(err)
		return
	}
	var doc struct {
		ID string `json:"$id"`
	}
	_ = json.Unmarshal(b, &doc)
	fmt.Println(doc.ID)
	// Output: https://shardflow.dev/schemas/track.schema.json
}
