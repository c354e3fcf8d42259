// Package telemetry sets up OpenTelemetry tracing and metrics for a shardflow
// service (DESIGN.md §7) in one call, [Setup].
//
// # Traces
//
// Spans are exported over OTLP/HTTP with a batch span processor, but only when
// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set;
// the exporter reads the rest of the standard OTEL_EXPORTER_OTLP_* variables
// itself (headers, timeout, an http:// endpoint meaning no TLS, ...). Without
// an endpoint (and no OTEL_TRACES_SAMPLER) spans are not recorded — they would
// be built and discarded on every message — but trace and span ids are still
// made and propagated, so they show up in logs and message headers.
//
// With an endpoint, the sampler is not passed to the SDK, so the SDK chooses
// it from the standard OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG
// variables (always_on, always_off, traceidratio, parentbased_always_on,
// parentbased_always_off, parentbased_traceidratio); when they are unset it
// uses parentbased_always_on. This was checked against the SDK's source
// (sdk/trace NewTracerProvider applies samplerFromEnv before the options and
// defaults to ParentBased(AlwaysSample())) and is covered by a test.
//
// The resource has service.name and service.instance.id from [Config], on top
// of what OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME say
// (resource.WithFromEnv) and the SDK's telemetry.sdk.* attributes. A
// non-empty Config.ServiceName wins over OTEL_SERVICE_NAME, since one process
// (the local stack) may run several services.
//
// Setup installs the tracer and meter providers as the otel globals, sets the
// global propagator to W3C TraceContext + Baggage, and routes the SDK's
// internal errors (for example a failed export) to slog.Default at warn
// level. Calling Setup again replaces the globals; each Telemetry keeps its
// own providers and registry.
//
// # Metrics
//
// Metrics are pulled: Telemetry.MetricsHandler serves the Prometheus text
// exposition of a dedicated prometheus.Registry (not the client library's
// global one) holding the OTel Prometheus exporter and the Go runtime and
// process collectors. The exporter is configured explicitly with
// otlptranslator.UnderscoreEscapingWithSuffixes and without scope labels, so
// names come out as Prometheus users expect and never carry otel_scope_*
// labels:
//
//   - a counter gets exactly one _total suffix: an instrument named
//     shardflow_stage_acked (or shardflow_stage_acked_total) is exposed as
//     shardflow_stage_acked_total;
//   - a unit adds its Prometheus suffix unless the name already contains it:
//     a histogram shardflow_stage_handler_duration_seconds with unit "s" is
//     exposed as shardflow_stage_handler_duration_seconds_{bucket,sum,count},
//     and so is shardflow_stage_handler_duration with unit "s"; a unit in
//     braces such as "{message}" adds nothing;
//   - a gauge with unit "1" gets _ratio.
//
// Name instruments in Prometheus style (snake_case, shardflow_ prefix) and
// give durations the unit "s" and sizes "By".
//
// Histograms without explicit bucket boundaries use Prometheus' default
// buckets (prometheus.DefBuckets, 5 ms to 10 s), which suit durations in
// seconds; the OTel SDK's own default (0 to 10000) assumes milliseconds. An
// instrument measuring anything else must pass
// metric.WithExplicitBucketBoundaries, which takes precedence.
//
// A target_info series carries the resource attributes.
package telemetry
