// Package dlq is the dead-letter side of shardflow: it indexes dead letters
// in Postgres, catches messages that hit MaxDeliver without any handler
// outcome, and replays or drops dead letters on an operator's request.
//
// # Components
//
//   - Store is the dead_letters table: Index (idempotent, keyed by the dead
//     letter's id <stream>:<seq>), List, Counts, Get, MarkReplayed and
//     MarkDropped. Listing leaves dropped rows out unless asked.
//   - Indexer is the streams.Handler of the indexer stage on DEADLETTER_n:
//     it decodes each envelope and indexes it. Postgres being down is an
//     Unavailable outcome (the runtime holds the message and probes, so an
//     outage loses nothing and burns no delivery attempt); an undecodable
//     envelope is dropped (dead-lettering a dead letter would loop).
//   - Sweeper dead-letters messages a stage gave up on without an outcome
//     (a consumer that crashes or hangs on a message every time). JetStream
//     leaves such a message in its work-queue stream for ever and only says
//     so in a core-NATS max-deliveries advisory, which is lost if nobody
//     listens at that moment. The Sweeper therefore both listens to the
//     advisories and, periodically, looks for messages still stored at or
//     below a stage consumer's ack floor: those were max-delivered and left
//     behind. Both paths are idempotent.
//   - Replayer republishes dead letters to their original subjects (rate
//     limited, with a fresh trace linked to the original, the logical message
//     id kept so the sender does not deliver twice), refusing those of
//     deleted accounts, or drops them from the index.
//   - Handler is the admin HTTP API over Store and Replayer (the accounts
//     service mounts it).
//
// IsUnavailable recognises "the database is down" errors; the processor and
// sender use it too, to turn an outage into streams.Unavailable.
package dlq
