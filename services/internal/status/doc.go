// Package status takes a snapshot of the pipeline, shard by shard: what
// every stage still has to do, how fast it is getting through it, what it
// gave up on and what it threw away. `sfctl status` prints it (a table, or
// JSON with --json) and the accounts service serves it at GET /v1/status.
//
// # Sources
//
// Every number says where it comes from; nothing is estimated from another
// source's number.
//
//   - JetStream (always): each stream's message count, and each stage
//     consumer's num_pending (in the stream, not yet delivered),
//     num_ack_pending (delivered, not yet acknowledged), num_redelivered
//     (messages delivered more than once and still unacknowledged) and ack
//     floor. A shard's dead letters are the messages of its DEADLETTER_n
//     stream (kept DeadLetterMaxAge, replayed or not).
//   - Postgres (when a pool is given): dead letters by error class, from the
//     dead_letters table the deadletter service indexes — rows an operator
//     did not drop, replayed or not, the same selection as
//     GET /v1/deadletters.
//   - Prometheus (when /metrics addresses are given): drops by reason,
//     dead-lettered by reason, retries, redeliveries, deferrals and parked
//     messages, summed over every series of
//     shardflow_stage_{acked,retried,redeliveries,dead_lettered,dropped,
//     deferred,parked}_total of the endpoints given (give every processor
//     and sender instance). These are the consumer runtime's own counters:
//     they count since each process started, so they restart at zero with
//     the process. JetStream's MSG_TERMINATED advisories were not used: they
//     are core-NATS messages, seen only by whoever listens at that moment,
//     so a CLI taking a snapshot would count only the drops of its own
//     sampling window and call that a total.
//
// A source that is not given is absent from the snapshot (JSON null), never
// zero: a zero is a measured zero. An optional source that fails (an
// endpoint down) leaves its numbers null and adds a line to Warnings; the
// JetStream part never fails silently (Collect returns the error).
//
// # Rates and the drain ETA
//
// A rate needs two samples (WithRates, or Collector.Sample which takes them
// gap apart). processed/s of a stage consumer is the advance of its ack
// floor (a consumer sequence) per second between the two samples: every
// message the stage finished (acked, dead-lettered or dropped) and did not
// leave behind an unfinished one. A consumer sequence counts deliveries, so
// a redelivery counts as one more to get through. A consumer re-created
// between the samples (its floor went back) counts as no progress.
//
// The drain ETA of a consumer is its pending work (num_pending +
// num_ack_pending) divided by that rate, in seconds: "idle" (seconds null)
// when nothing is pending, "∞" (seconds null) when something is pending and
// the floor did not move. A shard's ETA is that of its slowest consumer:
// "idle" when every consumer is idle, "∞" when any is stuck. Without a
// previous sample there is no rate and no ETA ("").
package status
