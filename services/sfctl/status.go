package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/services/internal/status"
	"github.com/shardflow/shardflow/streams"
)

// StatusCmd is `sfctl status`. The collection, rates and rendering live in
// package services/internal/status (the admin API's GET /v1/status serves
// the same snapshot).
type StatusCmd struct {
	Watch      time.Duration `name:"watch" help:"Refresh at this interval until interrupted (e.g. 2s); rates are computed between refreshes."`
	Sample     time.Duration `name:"sample" default:"1s" help:"Without --watch: the gap between the two samples rates are computed from."`
	MetricsURL []string      `name:"metrics-url" env:"SHARDFLOW_STATUS_METRICS_URLS" sep:"," help:"/metrics endpoints (or health host:port) of every processor and sender instance: adds drops, dead-lettered and redeliveries by reason from their counters."`
	DB         bool          `name:"db" help:"Also count dead letters by error class in Postgres (--database-url)."`
}

// Snapshot, ShardStatus and ConsumerStatus are the status package's.
type (
	Snapshot       = status.Snapshot
	ShardStatus    = status.ShardStatus
	ConsumerStatus = status.ConsumerStatus
)

// withRates fills cur's rates and drain ETAs from the earlier sample prev.
func withRates(prev, cur Snapshot) Snapshot { return status.WithRates(prev, cur) }

// Run prints the status once (from two samples) or, with --watch, until
// interrupted.
func (c *StatusCmd) Run(a *app) error {
	ctx := a.ctx
	if c.Watch < 0 || c.Sample < 0 {
		return errors.New("status: --watch and --sample cannot be negative")
	}
	topo := a.cli.Topology()
	if err := topo.Validate(); err != nil {
		return err
	}
	nc, js, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	col, closeDB, err := c.collector(ctx, a, js, topo)
	if err != nil {
		return err
	}
	defer closeDB()
	show := func(s Snapshot) error {
		if a.cli.JSON {
			return writeJSON(a.out, s)
		}
		return status.Render(a.out, s)
	}
	collect := func() (Snapshot, error) {
		cctx, cancel := context.WithTimeout(ctx, a.cli.Timeout)
		defer cancel()
		return col.Collect(cctx)
	}
	if c.Watch == 0 {
		cctx, cancel := context.WithTimeout(ctx, a.cli.Timeout+c.Sample)
		defer cancel()
		s, err := col.Sample(cctx, c.Sample)
		if err != nil {
			return err
		}
		return show(s)
	}
	prev, err := collect()
	if err != nil {
		return err
	}
	if err := show(prev); err != nil {
		return err
	}
	t := time.NewTicker(c.Watch)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil // interrupted: a normal end of --watch
		case <-t.C:
		}
		cur, err := collect()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		cur = withRates(prev, cur)
		if !a.cli.JSON {
			fmt.Fprintln(a.out)
		}
		if err := show(cur); err != nil {
			return err
		}
		prev = cur
	}
}

// collector builds the status collector the flags describe; the returned
// function closes the database pool (if any).
func (c *StatusCmd) collector(ctx context.Context, a *app, js jetstream.JetStream, topo streams.Topology) (*status.Collector, func(), error) {
	cfg := status.Config{JetStream: js, Topology: topo, MetricsURLs: c.MetricsURL}
	closeDB := func() {}
	if c.DB {
		cctx, cancel := context.WithTimeout(ctx, a.cli.Timeout)
		defer cancel()
		pool, err := db.Open(cctx, a.cli.DatabaseURL)
		if err != nil {
			return nil, nil, fmt.Errorf("status --db: %w", err)
		}
		cfg.Pool, closeDB = pool, pool.Close
	}
	col, err := status.New(cfg)
	if err != nil {
		closeDB()
		return nil, nil, err
	}
	return col, closeDB, nil
}
