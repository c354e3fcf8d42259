package telemetry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Config describes the service whose telemetry is being set up.
type Config struct {
	// ServiceName is the resource's service.name, e.g. "ingest".
	// Default: OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES)
	// if set, else "shardflow".
	ServiceName string
	// ServiceInstance is the resource's service.instance.id.
	// Default: "<hostname>-<pid>".
	ServiceInstance string
}

// Telemetry holds the providers Setup created. Call Shutdown before exiting.
type Telemetry struct {
	// TracerProvider is also installed as otel's global tracer provider.
	TracerProvider *sdktrace.TracerProvider
	// MeterProvider is also installed as otel's global meter provider.
	MeterProvider *sdkmetric.MeterProvider
	// MetricsHandler serves the Prometheus text exposition (mount it at /metrics).
	MetricsHandler http.Handler
	// Registry is the dedicated registry MetricsHandler serves; register
	// extra Prometheus collectors here if a component needs them.
	Registry *prometheus.Registry
}

// tracesEndpointVars are the variables whose presence turns span export on.
var tracesEndpointVars = []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"}

// Setup creates the tracer and meter providers described in the package
// documentation and installs them, with the W3C propagators, as the otel
// globals.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	host, _ := os.Hostname()
	cfg.ServiceInstance = cmp.Or(cfg.ServiceInstance, cmp.Or(host, "localhost")+"-"+strconv.Itoa(os.Getpid()))

	res, err := newResource(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("telemetry setup: build resource: %w", err)
	}

	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("telemetry setup: register go collector: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("telemetry setup: register process collector: %w", err)
	}
	promExp, err := otelprom.New(
		otelprom.WithRegisterer(reg),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes),
		otelprom.WithoutScopeInfo(),
		otelprom.WithAggregationSelector(aggregationSelector),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry setup: create prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(promExp), sdkmetric.WithResource(res))

	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if exportTraces() {
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			_ = mp.Shutdown(ctx)
			return nil, fmt.Errorf("telemetry setup: create OTLP/HTTP trace exporter: %w", err)
		}
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp))
	}
	// With an exporter, no WithSampler: the SDK reads
	// OTEL_TRACES_SAMPLER(_ARG) itself. Without one (and no sampler asked
	// for), spans are not recorded at all: they would be built and thrown
	// away on every message (the largest allocation site of the stages in
	// the benchmark). Trace and span ids are still made and propagated, so
	// log lines and dead letters keep their trace ids.
	if !exportTraces() && os.Getenv("OTEL_TRACES_SAMPLER") == "" {
		tpOpts = append(tpOpts, sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)

	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(
		propagation.TraceContext{}, propagation.Baggage{}))
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		slog.Default().Warn("opentelemetry error", "err", err)
	}))

	return &Telemetry{
		TracerProvider: tp,
		MeterProvider:  mp,
		Registry:       reg,
		MetricsHandler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{
			Registry:      reg, // exposes promhttp_metric_handler_errors_total
			ErrorHandling: promhttp.ContinueOnError,
		}),
	}, nil
}

// Shutdown flushes buffered spans to the exporter and stops both providers.
// It returns once done or when ctx ends; give it a deadline.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	if err := t.TracerProvider.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("telemetry shutdown: tracer provider: %w", err))
	}
	if err := t.MeterProvider.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("telemetry shutdown: meter provider: %w", err))
	}
	return errors.Join(errs...)
}

func exportTraces() bool {
	for _, k := range tracesEndpointVars {
		if os.Getenv(k) != "" {
			return true
		}
	}
	return false
}

func newResource(ctx context.Context, cfg Config) (*resource.Resource, error) {
	// Later options win: Config beats the environment.
	opts := []resource.Option{
		resource.WithAttributes(semconv.ServiceName("shardflow")),
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceInstanceID(cfg.ServiceInstance)),
	}
	if cfg.ServiceName != "" {
		opts = append(opts, resource.WithAttributes(semconv.ServiceName(cfg.ServiceName)))
	}
	return resource.New(ctx, opts...)
}

// aggregationSelector is the SDK default except for histograms, whose default
// buckets become Prometheus' (seconds) instead of OTel's (milliseconds).
// Boundaries passed to an instrument still take precedence.
func aggregationSelector(k sdkmetric.InstrumentKind) sdkmetric.Aggregation {
	if k == sdkmetric.InstrumentKindHistogram {
		return sdkmetric.AggregationExplicitBucketHistogram{Boundaries: prometheus.DefBuckets}
	}
	return sdkmetric.DefaultAggregationSelector(k)
}
