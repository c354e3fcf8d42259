// Command stack runs the whole shardflow pipeline on one machine: it is what
// `make run` starts (`cd services && go run ./stack`).
//
// It is meant for a new user on a fresh machine with only Go and a local
// Postgres (`make postgres` ensures one before `make run`). In order, each
// step announced with one line on stdout, it:
//
//  1. starts an embedded nats-server with JetStream on 127.0.0.1:14222
//     (--nats-port; not 4222, so it never clashes with a system nats-server),
//     keeping its data under <repo root>/.shardflow/nats (--data-dir; the
//     repository root is the directory holding go.work);
//  2. runs the Postgres migrations on SHARDFLOW_DATABASE_URL (default: the
//     local postgres database);
//  3. provisions every stream and consumer of the topology (--shards,
//     default 4) and prints the provisioning summary;
//  4. sets up tracing: OTEL_EXPORTER_OTLP_ENDPOINT when set, else a `jaeger`
//     (or `jaeger-all-in-one`) binary found on PATH, started with its
//     in-memory storage, else a line saying how to turn traces on;
//  5. starts a webhook sink in this process (--sink-addr, default
//     127.0.0.1:8090) that verifies each delivery's Shardflow-Signature and
//     counts deliveries per account and shard;
//  6. builds every service binary once into <data dir>/bin and starts each as
//     its own process (ingest on :8080, accounts — the admin API — on :8081,
//     processor, sender, deadletter), waiting for every /readyz. Their JSON
//     log lines are prefixed with the service name; only warnings, errors and
//     the "listening" lines are shown unless --verbose;
//  7. creates demo accounts (demo-1, demo-2, ...) through the admin API until
//     every shard has one, each with a trigger that sends "Signed Up" events
//     to the sink (a re-run finds them again: the admin API answers 409 and
//     they are read back);
//  8. sends steady demo traffic to the tracking API (--rate events/s per
//     account, as /v1/batch requests every 500 ms; most events are
//     "Signed Up", a few "Page Viewed" that match no trigger);
//  9. prints the endpoints once, then every --view-interval one line per
//     shard: events accepted by ingest, processed (acked by the processor),
//     delivered to the sink, pending in the processor and sender consumers,
//     and dead letters stored;
//  10. on Ctrl-C (or after --duration) stops the traffic, sends SIGTERM to
//     every service and waits for them (--stop-timeout, then SIGKILL), stops
//     jaeger if it started it, shuts NATS down, prints totals per demo
//     account and exits 0. A second Ctrl-C kills everything at once.
//
// Every flag has a SHARDFLOW_* environment variable (see --help). The data
// directory survives runs (JetStream keeps its streams there); delete it to
// start afresh. The services are ordinary processes in their own process
// groups: a Ctrl-C reaches only the stack, which stops them in order.
package main
