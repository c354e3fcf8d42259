// Package service is the start-up and shutdown plumbing every shardflow
// binary shares: the common configuration (flags and SHARDFLOW_* variables),
// JSON logs, OpenTelemetry, the NATS connection, the start-up size-limit
// check, the health/readiness/metrics endpoint, and a run group that stops
// everything on SIGINT/SIGTERM within a bounded time.
package service
