// Command ingest is the HTTP edge: Segment's tracking API (POST /v1/identify,
// /v1/track, /v1/batch) into the per-shard INBOUND streams.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"

	"github.com/alecthomas/kong"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/shardflow/shardflow/services/internal/ingest"
	"github.com/shardflow/shardflow/services/internal/service"
	"github.com/shardflow/shardflow/streams"
)

type config struct {
	service.Common `kong:"embed"`
	Addr           string `name:"addr" env:"SHARDFLOW_INGEST_ADDR" default:"127.0.0.1:8080" help:"Tracking API address."`
	MaxBatchBytes  int    `name:"max-batch-bytes" env:"SHARDFLOW_MAX_BATCH_BYTES" default:"512000" help:"Largest batch request body."`
	DefaultRate    int    `name:"default-rate" env:"SHARDFLOW_INGEST_DEFAULT_RATE" default:"5000" help:"Per-account events/s when the account sets none."`
}

func main() {
	var cfg config
	kong.Parse(&cfg, kong.Name("ingest"), kong.Description("shardflow HTTP ingest (Segment-compatible tracking API)."))
	if err := run(context.Background(), cfg); err != nil {
		fmt.Fprintln(os.Stderr, "ingest:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config) error {
	env, err := service.Start(ctx, "ingest", cfg.Common, streams.KindInbound)
	if err != nil {
		return err
	}
	defer env.Close()
	dir, err := streams.OpenDirectory(ctx, env.JS, env.Log)
	if err != nil {
		return err
	}
	defer dir.Close()
	pub, err := streams.NewPublisher(streams.PublisherConfig{JetStream: env.JS, Topology: env.Topo, TracerProvider: env.Tel.TracerProvider})
	if err != nil {
		return err
	}
	h, err := ingest.New(ingest.Config{Directory: dir, Publisher: pub, Topology: env.Topo, MaxBatchBytes: cfg.MaxBatchBytes, DefaultRate: cfg.DefaultRate, Logger: env.Log, Meter: env.Meter})
	if err != nil {
		return err
	}
	api, err := env.ServeHTTP("tracking API", cfg.Addr, otelhttp.NewHandler(h.Routes(), "ingest",
		otelhttp.WithTracerProvider(env.Tel.TracerProvider), otelhttp.WithMeterProvider(env.Tel.MeterProvider),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + r.URL.Path })))
	if err != nil {
		return err
	}
	healthSrv, err := env.ServeHealth()
	if err != nil {
		return err
	}
	var g service.Group
	g.Add("api", api)
	g.Add("health", healthSrv)
	return g.Run(ctx, env.Log, env.Config.ShutdownTimeout)
}
