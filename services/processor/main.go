// Command processor consumes INBOUND_n: identify upserts people, track
// evaluates triggers and publishes outbound messages to OUTBOUND_n.
package main

import (
	"context"

	"github.com/shardflow/shardflow/services/internal/processor"
	"github.com/shardflow/shardflow/services/internal/service"
	"github.com/shardflow/shardflow/streams"
)

type config struct {
	service.Common `kong:"embed"`
	Concurrency    int    `name:"concurrency" env:"SHARDFLOW_CONCURRENCY" default:"32" help:"Handler goroutines per shard."`
	MaxInFlight    int    `name:"max-in-flight" env:"SHARDFLOW_MAX_IN_FLIGHT" default:"256" help:"Messages held per shard (at most the consumer's MaxAckPending). Each held message costs about 11 KB of resident memory here (the input, its outbound messages and their publish acks, doubled by the garbage collector); 256 keeps a draining processor within 1.5× its idle memory at about 85% of the drain rate 1000 gives (make bench, backlog)."`
	GCPercent      string `name:"gc-percent" env:"GOGC" default:"50" help:"Go GC target percentage (or off). 50 instead of Go's 100 keeps a draining processor's memory flat (make bench, backlog: peak 1.32x idle RSS through a 1,000,000-message backlog, 1.57x at 100) for about a sixth of its drain rate; the end-to-end rate is the sender's. GOGC, if set, wins as usual."`
	CrashOnEvent   string `name:"test-crash-event" env:"SHARDFLOW_TEST_CRASH_EVENT" hidden:"" help:"TEST ONLY: exit when handling a track event of this name."`
}

func main() {
	var cfg config
	service.Main("processor", "shardflow processor stage (INBOUND_n → OUTBOUND_n).", &cfg, func(ctx context.Context) error { return run(ctx, cfg) })
}

func run(ctx context.Context, cfg config) error {
	if err := service.SetGCPercent(cfg.GCPercent); err != nil {
		return err
	}
	env, err := service.Start(ctx, "processor", cfg.Common, streams.KindInbound, streams.KindOutbound, streams.KindDeadLetter)
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
	if cfg.CrashOnEvent != "" {
		env.Log.Warn("TEST HOOK ACTIVE: the process exits when it handles this event", "event", cfg.CrashOnEvent)
	}
	p, err := processor.New(processor.Config{DB: pools, CrashOnEvent: cfg.CrashOnEvent, Logger: env.Log})
	if err != nil {
		return err
	}
	stage, err := env.RunStage(ctx, streams.StageProcessor, dir, p.Handle, func(c *streams.ConsumerConfig) {
		c.Concurrency, c.MaxInFlight = cfg.Concurrency, cfg.MaxInFlight
	})
	if err != nil {
		return err
	}
	var g service.Group
	g.Add("stage", stage)
	return env.Serve(ctx, &g)
}
