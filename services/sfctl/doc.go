// Command sfctl is shardflow's operator CLI.
//
//	sfctl provision [--dry-run]      create or update every stream and consumer of the topology
//	sfctl migrate                    apply the pending Postgres migrations
//	sfctl status [--watch 2s]        per shard: stream sizes, backlogs, processed/s, drain ETA
//	sfctl accounts create|get|update|delete|suspend|restore|trigger|triggers ...
//	sfctl dlq list|show|replay|drop ...
//
// Global flags (each also a SHARDFLOW_* variable) are those of every service
// (service.Common: --nats-url, --shards, --replicas, --max-event-bytes, the
// NATS credentials, --database-url...) plus --admin-url and --admin-token
// for the accounts service's admin API, --json to print data as JSON and
// --timeout. The topology flags must match the services' (they describe the
// same streams).
//
// provision and status talk to JetStream directly; accounts and dlq are thin
// clients of the admin API and print its JSON answers. The exit status is 0
// on success, 1 on a failure (an API error, or drift found by
// provision --dry-run) and 2 on a usage error.
//
// status computes rates from two samples (--sample apart, 1s by default; with
// --watch, between refreshes): processed/s is the advance of each consumer's
// ack floor (consumer sequence), and the drain ETA is its pending work
// (num_pending + num_ack_pending) divided by that rate, "idle" when nothing
// is pending and "∞" when nothing advances. Dead letters by reason come from
// Postgres (--db) and drops by reason from the stages' /metrics
// (--metrics-url); a source not given shows as null, never as 0. The
// collection lives in services/internal/status, which the admin API's
// GET /v1/status serves too.
package main
