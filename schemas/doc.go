// Package schemas defines the wire formats of shardflow and validates them.
//
// It holds, embedded, the JSON Schema (draft 2020-12) documents of every
// message that crosses a process boundary, the Go types that mirror them,
// and the decoders the HTTP ingest service uses on client input:
//
//   - identify.schema.json, track.schema.json: single inbound events, following
//     the conventions of the Segment HTTP tracking API (event.schema.json holds
//     the fields they share);
//   - batch.schema.json: a batch request of identify and track events;
//   - outbound.schema.json: a message to deliver to a receiver ([Outbound]);
//   - account_event.schema.json: account lifecycle events ([AccountEvent]);
//   - deadletter.schema.json: the dead-letter envelope ([DeadLetter]).
//
// [DecodeEvent] and [DecodeBatch] enforce size [Limits], parse and validate a
// request body and decode it into [Event] or [Batch]. Failures are typed so
// that callers map them to HTTP status codes without matching strings:
//
//   - [*LimitError]: the body, or an event in a batch, is too large (413);
//   - [*SyntaxError]: the body is not well-formed JSON or not an object (400);
//   - [*ValidationError]: the body breaks the schema; each [FieldError] names
//     the offending field as a dotted path such as "batch[3].event" and the
//     rule it breaks, in words meant for API users (400).
//
// [DecodeBatchRaw] also returns the JSON text of each event as sent, and
// [AppendEvent] encodes an event by copying its free-form objects from that
// text rather than encoding them again: how ingest stores events.
//
// [ValidateOutbound], [ValidateAccountEvent] and [ValidateDeadLetter] check
// internal messages against their schemas. [SchemaFiles] exposes the schema
// documents so that tools and documentation can serve them.
//
// The package knows nothing about transport: it never imports NATS.
package schemas
