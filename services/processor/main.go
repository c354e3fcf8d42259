// Command processor consumes INBOUND_n: identify upserts people, track
// evaluates triggers and publishes outbound messages to OUTBOUND_n.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/alecthomas/kong"

	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/services/internal/processor"
	"github.com/shardflow/shardflow/services/internal/service"
	"github.com/shardflow/shardflow/streams"
)

type config struct {
	service.Common `kong:"embed"`
	Concurrency    int    `name:"concurrency" env:"SHARDFLOW_CONCURRENCY" default:"32" help:"Handler goroutines per shard."`
	MaxInFlight    int    `name:"max-in-flight" env:"SHARDFLOW_MAX_IN_FLIGHT" default:"0" help:"Messages held per shard (default: the consumer's MaxAckPending)."`
	CrashOnEvent   string `name:"test-crash-event" env:"SHARDFLOW_TEST_CRASH_EVENT" hidden:"" help:"TEST ONLY: exit when handling a track event of this name."`
}

func main() {
	var cfg config
	kong.Parse(&cfg, kong.Name("processor"), kong.Description("shardflow processor stage (INBOUND_n → OUTBOUND_n)."))
	if err := run(context.Background(), cfg); err != nil {
		fmt.Fprintln(os.Stderr, "processor:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config) error {
	env, err := service.Start(ctx, "processor", cfg.Common, streams.KindInbound, streams.KindOutbound, streams.KindDeadLetter)
	if err != nil {
		return err
	}
	defer env.Close()
	if err := db.Migrate(ctx, cfg.DatabaseURL); err != nil {
		return err
	}
	pool, err := db.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	dir, err := streams.OpenDirectory(ctx, env.JS, env.Log)
	if err != nil {
		return err
	}
	defer dir.Close()
	pub, err := streams.NewPublisher(streams.PublisherConfig{JetStream: env.JS, Topology: env.Topo, TracerProvider: env.Tel.TracerProvider})
	if err != nil {
		return err
	}
	p, err := processor.New(processor.Config{DB: pool, Publisher: pub, CrashOnEvent: cfg.CrashOnEvent, Logger: env.Log})
	if err != nil {
		return err
	}
	stage, err := env.RunStage(ctx, streams.StageProcessor, dir, p.Handle, func(c *streams.ConsumerConfig) {
		c.Concurrency, c.MaxInFlight = cfg.Concurrency, cfg.MaxInFlight
	})
	if err != nil {
		return err
	}
	healthSrv, err := env.ServeHealth()
	if err != nil {
		return err
	}
	var g service.Group
	g.Add("stage", stage)
	g.Add("health", healthSrv)
	return g.Run(ctx, env.Log, env.Config.ShutdownTimeout)
}
