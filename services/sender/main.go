// Command sender consumes OUTBOUND_n and delivers by channel (webhook,
// e-mail), recording each delivery in Postgres so none is sent twice.
package main

import (
	"context"
	"net/http"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/shardflow/shardflow/services/internal/sender"
	"github.com/shardflow/shardflow/services/internal/service"
	"github.com/shardflow/shardflow/streams"
)

type config struct {
	service.Common `kong:"embed"`
	Concurrency    int           `name:"concurrency" env:"SHARDFLOW_CONCURRENCY" default:"64" help:"Handler goroutines per shard."`
	MaxInFlight    int           `name:"max-in-flight" env:"SHARDFLOW_MAX_IN_FLIGHT" default:"0" help:"Messages held per shard (default: the consumer's MaxAckPending)."`
	Timeout        time.Duration `name:"webhook-timeout" env:"SHARDFLOW_WEBHOOK_TIMEOUT" default:"10s" help:"Bound on one webhook call."`
	SMTPAddr       string        `name:"smtp-addr" env:"SHARDFLOW_SMTP_ADDR" help:"SMTP relay host:port for the email channel."`
	BreakerAfter   int           `name:"breaker-threshold" env:"SHARDFLOW_BREAKER_THRESHOLD" default:"5" help:"Failures in a row that open a destination's circuit breaker."`
	BreakerFor     time.Duration `name:"breaker-cooldown" env:"SHARDFLOW_BREAKER_COOLDOWN" default:"5s" help:"How long an open breaker waits before a probe."`
}

func main() {
	var cfg config
	service.Main("sender", "shardflow sender stage (OUTBOUND_n → webhook / e-mail).", &cfg, func(ctx context.Context) error { return run(ctx, cfg) })
}

func run(ctx context.Context, cfg config) error {
	env, err := service.Start(ctx, "sender", cfg.Common, streams.KindOutbound, streams.KindDeadLetter)
	if err != nil {
		return err
	}
	defer env.Close()
	pools, err := env.OpenShardDatabases(ctx)
	if err != nil {
		return err
	}
	dir, err := env.OpenDirectory(ctx)
	if err != nil {
		return err
	}
	client := &http.Client{
		Timeout: cfg.Timeout,
		Transport: otelhttp.NewTransport(&http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second},
			otelhttp.WithTracerProvider(env.Tel.TracerProvider), otelhttp.WithMeterProvider(env.Tel.MeterProvider)),
	}
	s, err := sender.New(sender.Config{
		DB: pools, Accounts: dir, Client: client, Timeout: cfg.Timeout, SMTPAddr: cfg.SMTPAddr,
		BreakerThreshold: cfg.BreakerAfter, BreakerCooldown: cfg.BreakerFor, Logger: env.Log,
	})
	if err != nil {
		return err
	}
	stage, err := env.RunStage(ctx, streams.StageSender, dir, s.Handle, func(c *streams.ConsumerConfig) {
		c.Concurrency, c.MaxInFlight = cfg.Concurrency, cfg.MaxInFlight
	})
	if err != nil {
		return err
	}
	var g service.Group
	g.Add("stage", stage)
	return env.Serve(ctx, &g)
}
