package service

import (
	"context"
	"fmt"
	"os"

	"github.com/alecthomas/kong"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/streams"
)

// Main parses the binary's configuration (a struct embedding Common, with
// kong tags) from flags and SHARDFLOW_* variables, then calls run; an error
// is printed and the process exits 1.
func Main(name, description string, cfg any, run func(context.Context) error) {
	kong.Parse(cfg, kong.Name(name), kong.Description(description), kong.UsageOnError())
	if err := run(context.Background()); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

// OpenDatabase runs the migrations (idempotent, safe from several
// processes at once) and opens a pool, which Close closes; the pool is
// also a readiness check.
func (e *Env) OpenDatabase(ctx context.Context) (*pgxpool.Pool, error) {
	if err := db.Migrate(ctx, e.Config.DatabaseURL); err != nil {
		return nil, err
	}
	pool, err := db.Open(ctx, e.Config.DatabaseURL)
	if err != nil {
		return nil, err
	}
	e.onClose(pool.Close)
	e.Checks.Add("postgres", pool.Ping)
	return pool, nil
}

// OpenShardDatabases runs the migrations, as OpenDatabase does, and opens
// a pool for each shard the process consumes (db.Pools: one shard's
// handlers cannot take the others' connections), which Close closes; the
// pools are also a readiness check.
func (e *Env) OpenShardDatabases(ctx context.Context) (*db.Pools, error) {
	if err := db.Migrate(ctx, e.Config.DatabaseURL); err != nil {
		return nil, err
	}
	shards, err := e.Config.ShardList()
	if err != nil {
		return nil, err
	}
	per := e.Config.DBConnsPerShard
	if per == 0 {
		per = db.PerShard(len(shards))
	}
	pools, err := db.OpenPools(ctx, e.Config.DatabaseURL, shards, per)
	if err != nil {
		return nil, err
	}
	e.onClose(pools.Close)
	e.Checks.Add("postgres", pools.Ping)
	return pools, nil
}

// OpenDirectory loads the account directory and keeps it current until
// Close.
func (e *Env) OpenDirectory(ctx context.Context) (*streams.Directory, error) {
	dir, err := streams.OpenDirectory(ctx, e.JS, e.Log)
	if err != nil {
		return nil, err
	}
	e.onClose(dir.Close)
	return dir, nil
}

// NewPublisher returns a publisher for the service's topology and tracer.
// groupCommit is streams.PublisherConfig.GroupCommit (0: off).
func (e *Env) NewPublisher(groupCommit int) (*streams.Publisher, error) {
	return streams.NewPublisher(streams.PublisherConfig{JetStream: e.JS, Topology: e.Topo, TracerProvider: e.Tel.TracerProvider, GroupCommit: groupCommit})
}

// Serve runs the actors and the health endpoint until one fails or a
// signal arrives, then stops them within the shutdown timeout.
func (e *Env) Serve(ctx context.Context, g *Group) error {
	health, err := e.ServeHealth()
	if err != nil {
		return err
	}
	g.Add("health", health)
	return g.Run(ctx, e.Log, e.Config.ShutdownTimeout)
}
