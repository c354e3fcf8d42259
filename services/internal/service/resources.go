package service

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"

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

// ShardDSNs parses --shard-database-urls (SHARDFLOW_SHARD_DATABASE_URLS)
// for the topology's shards: which database holds each shard's people,
// triggers and deliveries. A bad entry is an error naming it and the rule
// it breaks; the service refuses to start with it.
func (e *Env) ShardDSNs() (db.ShardDSNs, error) {
	dsns, err := db.ParseShardDSNs(e.Config.ShardDatabaseURLs, e.Config.DatabaseURL, e.Topo.Shards)
	if err != nil {
		return db.ShardDSNs{}, fmt.Errorf("%s refuses to start: %w", e.Name, err)
	}
	return dsns, nil
}

// SetGCPercent applies a binary's --gc-percent (env GOGC): a whole number,
// or off. Each binary picks its default for its garbage: ingest trades heap
// for CPU, the processor the other way round.
func SetGCPercent(v string) error {
	if v == "off" {
		debug.SetGCPercent(-1)
		return nil
	}
	pct, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("gc-percent (GOGC) %q: a whole number or off", v)
	}
	debug.SetGCPercent(pct)
	return nil
}

// OpenDatabase runs the migrations on the main database (idempotent, safe
// from several processes at once) and opens a pool on it, which Close
// closes; the pool is also a readiness check. It checks the shard database
// configuration too, so every service using Postgres refuses a bad one.
func (e *Env) OpenDatabase(ctx context.Context) (*pgxpool.Pool, error) {
	if _, err := e.ShardDSNs(); err != nil {
		return nil, err
	}
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

// OpenShardDatabases opens a pool for each shard the process consumes, on
// that shard's database (db.Pools: one shard's handlers cannot take the
// others' connections, and with per-shard databases one shard's outage
// cannot reach the others), after migrating each distinct database once.
// Close closes the pools. Each pool is a readiness check of its own,
// "postgres-shard-<n>", whose failure names the shard and its database.
func (e *Env) OpenShardDatabases(ctx context.Context) (*db.Pools, error) {
	shards, err := e.Config.ShardList()
	if err != nil {
		return nil, err
	}
	pools, err := e.openShardPools(ctx, shards)
	if err != nil {
		return nil, err
	}
	for _, n := range shards {
		e.Checks.Add(fmt.Sprintf("postgres-shard-%d", n), func(ctx context.Context) error { return pools.PingShard(ctx, n) })
	}
	return pools, nil
}

// OpenAllShardDatabases gives the accounts service, which serves every
// account, a pool for each shard that has a database of its own; every
// other shard is served by main itself, so that in the default
// configuration (one database) a deletion's row step stays one transaction
// on the connection the saga holds. No readiness checks: one shard's
// database being down must not take the admin API away from the accounts
// of the other shards; the requests that need that database fail, naming
// its shard.
func (e *Env) OpenAllShardDatabases(ctx context.Context, main *pgxpool.Pool) (*db.Pools, error) {
	dsns, err := e.ShardDSNs()
	if err != nil {
		return nil, err
	}
	var own []int
	for n := range e.Topo.Shards {
		if dsns.Own(n) {
			own = append(own, n)
		}
	}
	if len(own) == 0 {
		return db.SharedPool(main), nil
	}
	pools, err := e.openShardPools(ctx, own)
	if err != nil {
		return nil, err
	}
	return pools.Otherwise(main), nil
}

// openShardPools migrates each distinct database of shards once, then opens
// a pool per shard on its database, of DBConnsPerShard connections (default:
// the process budget split over the shards).
func (e *Env) openShardPools(ctx context.Context, shards []int) (*db.Pools, error) {
	dsns, err := e.ShardDSNs()
	if err != nil {
		return nil, err
	}
	for _, dsn := range dsns.Distinct(shards) {
		if err := db.Migrate(ctx, dsn); err != nil {
			return nil, err
		}
	}
	per := e.Config.DBConnsPerShard
	if per == 0 {
		per = db.PerShard(len(shards))
	}
	pools, err := db.OpenPools(ctx, dsns.For, shards, per)
	if err != nil {
		return nil, err
	}
	e.onClose(pools.Close)
	for _, n := range shards {
		if dsns.Own(n) {
			e.Log.InfoContext(ctx, "shard has a database of its own", "shard", n, "database", db.Describe(dsns.For(n)))
		}
	}
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
