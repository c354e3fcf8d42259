package main

import (
	"context"
	"fmt"
	"time"

	"github.com/shardflow/shardflow/services/internal/dlq"
	"github.com/shardflow/shardflow/services/internal/service"
	"github.com/shardflow/shardflow/streams"
)

// config is the deadletter service's configuration: the common flags plus
// the sweep period. Every field is a flag and a SHARDFLOW_* variable.
type config struct {
	service.Common `kong:"embed"`
	// SweepInterval is how often the stage streams are swept for messages
	// left behind after MaxDeliver whose advisory was missed.
	SweepInterval time.Duration `name:"sweep-interval" env:"SHARDFLOW_SWEEP_INTERVAL" default:"30s" help:"How often stage streams are swept for max-delivered messages whose advisory was missed."`
}

func main() {
	var cfg config
	service.Main("deadletter", "shardflow dead-letter service: index dead letters, sweep max-delivered messages.", &cfg, func(ctx context.Context) error { return run(ctx, cfg) })
}

// run starts the service and blocks until ctx ends or SIGTERM/SIGINT.
func run(ctx context.Context, cfg config) error {
	if cfg.SweepInterval <= 0 {
		return fmt.Errorf("sweep-interval must be positive, got %v", cfg.SweepInterval)
	}
	env, err := service.Start(ctx, "deadletter", cfg.Common, streams.KindInbound, streams.KindOutbound, streams.KindDeadLetter)
	if err != nil {
		return err
	}
	defer env.Close()
	pool, err := env.OpenDatabase(ctx)
	if err != nil {
		return err
	}

	store := dlq.NewStore(pool)
	indexer, err := dlq.NewIndexer(dlq.IndexerConfig{Store: store, Logger: env.Log})
	if err != nil {
		return err
	}
	runIndexer, err := env.RunStage(ctx, streams.StageIndexer, nil, indexer.Handle, nil)
	if err != nil {
		return err
	}
	shards, err := cfg.ShardList()
	if err != nil {
		return err
	}
	sweeper, err := dlq.NewSweeper(dlq.SweeperConfig{
		NATS: env.NC, JetStream: env.JS, Topology: env.Topo, Shards: shards, Interval: cfg.SweepInterval,
		Logger: env.Log, MeterProvider: env.Tel.MeterProvider,
	})
	if err != nil {
		return err
	}
	env.Checks.Add("sweeper", func(context.Context) error { return sweeper.Ready() })
	var g service.Group
	g.Add("indexer", runIndexer)
	g.Add("sweeper", sweeper.Run)
	return env.Serve(ctx, &g)
}
