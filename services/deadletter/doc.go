// Command deadletter catches what the stages gave up on: it indexes the
// dead letters of every DEADLETTER_n stream in Postgres (the indexer stage),
// and dead-letters messages that reached MaxDeliver without any handler
// outcome (a consumer crashing or hanging on a message every time), from the
// max-deliveries advisories and from a periodic sweep of the stage streams.
//
// The admin HTTP API over the index (list, inspect, replay, drop) is
// dlq.Handler; the accounts service mounts it on the admin address.
//
// Configuration: the common service flags (service.Common) plus
// --sweep-interval (SHARDFLOW_SWEEP_INTERVAL, default 30s).
package main
