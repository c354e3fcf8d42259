// Package health builds the operational HTTP endpoints every shardflow
// service serves on its admin port:
//
//	GET /healthz  200 "ok" while the process runs (liveness)
//	GET /readyz   200 {"ready":true} when every check passes, else
//	              503 {"ready":false,"failed":{"<name>":"<error text>"}}
//	GET /metrics  the Prometheus exposition (telemetry.Telemetry.MetricsHandler)
//
// Readiness checks are registered with [Checks.Add]; on each /readyz request
// they run concurrently, each with its own [CheckTimeout], so a request takes
// at most about that long. A check that panics counts as failed.
//
//	var checks health.Checks
//	checks.Add("postgres", pool.Ping)
//	checks.Add("nats", func(ctx context.Context) error { ... })
//	srv := &http.Server{Addr: addr, Handler: health.Handler(&checks, tel.MetricsHandler)}
package health
