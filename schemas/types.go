package schemas

import (
	"encoding/json"
	"time"
)

// Event types accepted by the ingest API.
const (
	TypeIdentify = "identify"
	TypeTrack    = "track"
)

// Event is an inbound identify or track event (Segment HTTP tracking API
// conventions); see identify.schema.json and track.schema.json.
//
// At least one of UserID and AnonymousID is set. Event and Properties
// belong to track events, Traits to identify events; the decoders drop the
// fields of the other type. Additional top-level properties sent by SDKs
// (integrations, sentAt, channel, ...) are accepted by the schemas but not
// kept. Timestamp stays the string the client sent (validated as an
// RFC 3339 date-time), so it re-encodes unchanged. Numbers inside Traits,
// Properties and Context decode as float64, as with encoding/json.
type Event struct {
	Type        string         `json:"type,omitempty"`
	MessageID   string         `json:"messageId,omitempty"`
	UserID      string         `json:"userId,omitempty"`
	AnonymousID string         `json:"anonymousId,omitempty"`
	Event       string         `json:"event,omitempty"`
	Traits      map[string]any `json:"traits,omitempty"`
	Properties  map[string]any `json:"properties,omitempty"`
	Context     map[string]any `json:"context,omitempty"`
	Timestamp   string         `json:"timestamp,omitempty"`
	WriteKey    string         `json:"writeKey,omitempty"`
}

// Batch is a batch request of identify and track events; see
// batch.schema.json. Every item of a decoded batch has Type set.
type Batch struct {
	Batch    []Event        `json:"batch"`
	WriteKey string         `json:"writeKey,omitempty"`
	Context  map[string]any `json:"context,omitempty"`
	SentAt   string         `json:"sentAt,omitempty"`
}

// Outbound delivery channels.
const (
	ChannelWebhook = "webhook"
	ChannelEmail   = "email"
)

// Outbound is a message to deliver to a receiver, produced when a trigger
// matched an inbound track event; see outbound.schema.json. URL is required
// for the webhook channel.
type Outbound struct {
	ID         string    `json:"id"`
	Account    string    `json:"account"`
	Shard      int       `json:"shard"`
	Generation int64     `json:"generation"`
	Channel    string    `json:"channel"`
	Trigger    string    `json:"trigger"`
	URL        string    `json:"url,omitempty"`
	InboundID  string    `json:"inboundId"`
	Event      Event     `json:"event"`
	CreatedAt  time.Time `json:"createdAt"`
}

// Account lifecycle event types.
const (
	AccountCreated   = "created"
	AccountSuspended = "suspended"
	AccountRestored  = "restored"
	AccountDeleted   = "deleted"
)

// AccountEvent records a change in an account's lifecycle; see
// account_event.schema.json.
type AccountEvent struct {
	Type       string    `json:"type"`
	Account    string    `json:"account"`
	Shard      int       `json:"shard"`
	Generation int64     `json:"generation"`
	At         time.Time `json:"at"`
}

// Well-known values of [DeadLetter.ErrorClass]. The schema accepts any
// non-empty string.
const (
	ErrorClassPermanent     = "permanent"
	ErrorClassTransient     = "transient"
	ErrorClassMaxDeliver    = "max_deliver"
	ErrorClassUndecodable   = "undecodable"
	ErrorClassSchemaInvalid = "schema_invalid"
	ErrorClassReceiver4xx   = "receiver_4xx"
)

// DeadLetter wraps a message that could not be processed; see
// deadletter.schema.json. ID is "<OriginStream>:<OriginSeq>". Payload is
// encoded as standard padded base64 by encoding/json. Account may be empty
// when it could not be determined (e.g. an undecodable payload).
type DeadLetter struct {
	ID              string              `json:"id"`
	OriginalSubject string              `json:"originalSubject"`
	Headers         map[string][]string `json:"headers"`
	Payload         []byte              `json:"payload"`
	Account         string              `json:"account"`
	Shard           int                 `json:"shard"`
	Stage           string              `json:"stage"`
	ErrorClass      string              `json:"errorClass"`
	Error           string              `json:"error"`
	Attempts        int                 `json:"attempts"`
	FirstFailure    time.Time           `json:"firstFailure"`
	LastFailure     time.Time           `json:"lastFailure"`
	OriginStream    string              `json:"originStream"`
	OriginSeq       uint64              `json:"originSeq"`
	TraceID         string              `json:"traceId,omitempty"`
	DeadLetteredAt  time.Time           `json:"deadLetteredAt"`
}

// MarshalJSON encodes d, writing nil Headers (or a nil header value list)
// as an empty object (list) and a nil Payload as "" rather than null, as
// the schema requires.
func (d DeadLetter) MarshalJSON() ([]byte, error) {
	type plain DeadLetter // no methods: no recursion
	p := plain(d)
	if p.Payload == nil {
		p.Payload = []byte{}
	}
	if p.Headers == nil {
		p.Headers = map[string][]string{}
	} else if hasNilValue(p.Headers) {
		h := make(map[string][]string, len(p.Headers))
		for k, v := range p.Headers {
			if v == nil {
				v = []string{}
			}
			h[k] = v
		}
		p.Headers = h
	}
	return json.Marshal(p)
}

func hasNilValue(h map[string][]string) bool {
	for _, v := range h {
		if v == nil {
			return true
		}
	}
	return false
}
