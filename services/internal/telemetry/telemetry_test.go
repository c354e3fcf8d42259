package telemetry_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.uber.org/goleak"

	"github.com/shardflow/shardflow/services/internal/telemetry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clearOTelEnv makes a test independent of the OTEL_* variables of the
// machine running it. Tests here are not parallel: Setup sets otel globals.
func clearOTelEnv(t *testing.T) {
	for _, k := range []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
		"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
		"OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME",
	} {
		t.Setenv(k, "")
	}
}

func setup(t *testing.T, cfg telemetry.Config) *telemetry.Telemetry {
	t.Helper()
	tel, err := telemetry.Setup(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 10*time.Second)
		defer cancel()
		if err := tel.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return tel
}

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("scrape: status %d: %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("scrape: Content-Type %q, want the text exposition", ct)
	}
	return rec.Body.String()
}

// seriesNames returns the distinct metric names of the samples in a text exposition.
func seriesNames(body string) []string {
	var names []string
	for line := range strings.Lines(body) {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

func TestMetricsExposedWithPrometheusNames(t *testing.T) {
	clearOTelEnv(t)
	tel := setup(t, telemetry.Config{ServiceName: "processor", ServiceInstance: "p-1"})

	m := tel.MeterProvider.Meter("github.com/shardflow/shardflow/services/internal/telemetry_test")
	attrs := metric.WithAttributes(attribute.Int("shard", 3), attribute.String("stage", "processor"))
	ctx := t.Context()

	acked, err := m.Int64Counter("shardflow_stage_acked", metric.WithUnit("{message}"))
	if err != nil {
		t.Fatal(err)
	}
	acked.Add(ctx, 2, attrs)
	accepted, err := m.Int64Counter("shardflow_ingest_accepted_total")
	if err != nil {
		t.Fatal(err)
	}
	accepted.Add(ctx, 1)
	latency, err := m.Float64Histogram("shardflow_stage_handler_duration_seconds", metric.WithUnit("s"))
	if err != nil {
		t.Fatal(err)
	}
	latency.Record(ctx, 0.012, attrs)
	purge, err := m.Float64Histogram("shardflow_deletion_purge_duration", metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(1, 60))
	if err != nil {
		t.Fatal(err)
	}
	purge.Record(ctx, 3)
	pending, err := m.Int64UpDownCounter("shardflow_stage_pending", metric.WithUnit("{message}"))
	if err != nil {
		t.Fatal(err)
	}
	pending.Add(ctx, 7, attrs)

	body := scrape(t, tel.MetricsHandler)
	names := seriesNames(body)
	for _, want := range []string{
		"shardflow_stage_acked_total",
		"shardflow_ingest_accepted_total",
		"shardflow_stage_handler_duration_seconds_bucket",
		"shardflow_stage_handler_duration_seconds_sum",
		"shardflow_stage_handler_duration_seconds_count",
		"shardflow_deletion_purge_duration_seconds_bucket",
		"shardflow_stage_pending",
		"target_info",
		"go_goroutines",
		"process_cpu_seconds_total",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("metric %s not exposed", want)
		}
	}
	for _, name := range names {
		if strings.HasPrefix(name, "shardflow_") && !slices.Contains([]string{
			"shardflow_stage_acked_total",
			"shardflow_ingest_accepted_total",
			"shardflow_stage_handler_duration_seconds_bucket",
			"shardflow_stage_handler_duration_seconds_sum",
			"shardflow_stage_handler_duration_seconds_count",
			"shardflow_deletion_purge_duration_seconds_bucket",
			"shardflow_deletion_purge_duration_seconds_sum",
			"shardflow_deletion_purge_duration_seconds_count",
			"shardflow_stage_pending",
		}, name) {
			t.Errorf("unexpected metric name %s", name)
		}
	}
	for _, want := range []string{
		`shardflow_stage_acked_total{shard="3",stage="processor"} 2`,
		`shardflow_stage_pending{shard="3",stage="processor"} 7`,
		// Default buckets are Prometheus' seconds buckets...
		`shardflow_stage_handler_duration_seconds_bucket{shard="3",stage="processor",le="0.005"} 0`,
		`shardflow_stage_handler_duration_seconds_bucket{shard="3",stage="processor",le="0.025"} 1`,
		// ...and boundaries given to the instrument win.
		`shardflow_deletion_purge_duration_seconds_bucket{le="1"} 0`,
		`shardflow_deletion_purge_duration_seconds_bucket{le="60"} 1`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("exposition lacks line %q", want)
		}
	}
	if strings.Contains(body, "otel_scope") {
		t.Errorf("exposition carries otel_scope labels:\n%s", body)
	}
	if !strings.Contains(body, `service_name="processor"`) || !strings.Contains(body, `service_instance_id="p-1"`) {
		t.Errorf("target_info lacks the service attributes:\n%s", grep(body, "target_info"))
	}
}

func grep(body, s string) string {
	var out []string
	for line := range strings.Lines(body) {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

func TestResourceFromEnv(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test,service.name=fromenv")
	tel := setup(t, telemetry.Config{ServiceName: "ingest"})
	info := grep(scrape(t, tel.MetricsHandler), "target_info{")
	if !strings.Contains(info, `deployment_environment_name="test"`) {
		t.Errorf("OTEL_RESOURCE_ATTRIBUTES not honoured: %s", info)
	}
	if !strings.Contains(info, `service_name="ingest"`) {
		t.Errorf("Config.ServiceName should win over the environment: %s", info)
	}
	if !strings.Contains(info, `service_instance_id="`) {
		t.Errorf("no default service.instance.id: %s", info)
	}
}

func TestGlobalsAndDefaultSampler(t *testing.T) {
	clearOTelEnv(t)
	tel := setup(t, telemetry.Config{ServiceName: "ingest"})

	if otel.GetTracerProvider() != tel.TracerProvider {
		t.Error("global tracer provider not installed")
	}
	if otel.GetMeterProvider() != tel.MeterProvider {
		t.Error("global meter provider not installed")
	}
	fields := otel.GetTextMapPropagator().Fields()
	if !slices.Contains(fields, "traceparent") || !slices.Contains(fields, "baggage") {
		t.Errorf("global propagator fields = %v, want traceparent and baggage", fields)
	}

	// No exporter configured: spans are not recorded (nothing would take
	// them), but ids are still made and propagated for logs and envelopes.
	ctx, span := otel.Tracer("test").Start(t.Context(), "op")
	defer span.End()
	if span.SpanContext().IsSampled() || span.IsRecording() {
		t.Error("without an exporter a root span was sampled and recorded")
	}
	if !span.SpanContext().TraceID().IsValid() {
		t.Error("without an exporter the span has no trace id (log lines need it)")
	}
	carrier := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, carrier)
	if carrier["traceparent"] == "" {
		t.Error("propagator injected no traceparent")
	}
}

func TestSamplerFromEnv(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_TRACES_SAMPLER", "always_off")
	tel := setup(t, telemetry.Config{ServiceName: "ingest"})
	_, span := tel.TracerProvider.Tracer("test").Start(t.Context(), "op")
	defer span.End()
	if span.SpanContext().IsSampled() {
		t.Error("OTEL_TRACES_SAMPLER=always_off ignored: span sampled")
	}
}

func TestSpansExportedOnlyWithEndpoint(t *testing.T) {
	clearOTelEnv(t)
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodPost && r.URL.Path == "/v1/traces" {
			posts.Add(1)
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()

	// Without an endpoint nothing is exported (and nothing would reach srv).
	t.Run("no endpoint", func(t *testing.T) {
		tel := setup(t, telemetry.Config{ServiceName: "ingest"})
		_, span := tel.TracerProvider.Tracer("test").Start(t.Context(), "op")
		span.End()
	})
	if n := posts.Load(); n != 0 {
		t.Fatalf("spans exported without an endpoint: %d posts", n)
	}

	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	tel, err := telemetry.Setup(t.Context(), telemetry.Config{ServiceName: "ingest"})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.TracerProvider.Tracer("test").Start(t.Context(), "op")
	span.End()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := posts.Load(); n == 0 {
		t.Fatal("Shutdown did not flush the span to the OTLP endpoint")
	}
	srv.CloseClientConnections()
}
