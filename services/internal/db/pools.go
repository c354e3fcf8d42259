package db

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Pools gives each shard a stage consumes a connection pool of its own.
//
// With one pool per process, a shard whose messages all fail at the
// database (poison: each handler takes a connection, gets an error, and
// takes the next) or all wait on it (a slow query, a locked table) holds
// every connection, and the other shards' handlers queue behind it: in the
// isolation benchmark a healthy shard offered half its rate fell to two
// thirds of it, with a p99 of seconds, while another shard was flooded with
// poison. With a pool per shard a shard can only exhaust its own.
type Pools struct {
	byShard map[int]*pgxpool.Pool
	shared  *pgxpool.Pool // SharedPool: every shard uses it
}

// OpenPools opens one pool per shard of shards, on the database dsnFor
// names for it (ShardDSNs.For: shards sharing a database still get a pool
// each), each of perShard connections (a pool_max_conns in the DSN wins,
// per pool). If any cannot be opened, the ones opened are closed and the
// error names the shard.
func OpenPools(ctx context.Context, dsnFor func(shard int) string, shards []int, perShard int32) (*Pools, error) {
	if len(shards) == 0 || perShard < 1 {
		return nil, fmt.Errorf("db open pools: need shards and at least one connection each (got %d shards, %d connections)", len(shards), perShard)
	}
	p := &Pools{byShard: make(map[int]*pgxpool.Pool, len(shards))}
	for _, n := range shards {
		pool, err := openWith(ctx, dsnFor(n), perShard)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("shard %d: %w", n, err)
		}
		p.byShard[n] = pool
	}
	return p, nil
}

// SharedPool returns Pools in which every shard uses pool (tests, and
// components that serve no shard in particular). Close does not close it.
func SharedPool(pool *pgxpool.Pool) *Pools {
	return &Pools{shared: pool}
}

// PerShard is the connections each of n shards gets from a process budget
// of DefaultMaxConns, at least 4.
func PerShard(n int) int32 {
	return max(4, DefaultMaxConns/int32(max(n, 1)))
}

// Otherwise makes pool the pool of every shard p has none of (the accounts
// service: a shard without a database of its own is served by the main
// pool itself). Close does not close it. It returns p.
func (p *Pools) Otherwise(pool *pgxpool.Pool) *Pools {
	p.shared = pool
	return p
}

// For returns shard's pool: its own, else the shared one (SharedPool,
// Otherwise). A shard with neither is a programming error: a stage consumes
// only the shards it opened pools for.
func (p *Pools) For(shard int) *pgxpool.Pool {
	if pool, ok := p.byShard[shard]; ok {
		return pool
	}
	if p.shared == nil {
		panic(fmt.Sprintf("db: no pool for shard %d", shard))
	}
	return p.shared
}

// Shards returns the shards OpenPools opened pools for, in order (none
// for SharedPool).
func (p *Pools) Shards() []int {
	return slices.Sorted(maps.Keys(p.byShard))
}

// Ping checks every pool; each failure names its shard and database.
func (p *Pools) Ping(ctx context.Context) error {
	var errs []error
	if p.shared != nil {
		errs = append(errs, p.shared.Ping(ctx))
	}
	for _, n := range p.Shards() {
		errs = append(errs, p.PingShard(ctx, n))
	}
	return errors.Join(errs...)
}

// PingShard checks shard's pool. The error names the shard and its
// database (host, port and name), so a readiness failure says whose
// database is down.
func (p *Pools) PingShard(ctx context.Context, shard int) error {
	pool := p.For(shard)
	if err := pool.Ping(ctx); err != nil {
		c := pool.Config().ConnConfig.Config
		return fmt.Errorf("shard %d: database %q at %s: %w", shard, c.Database, Addr(c), err)
	}
	return nil
}

// Close closes the pools OpenPools opened.
func (p *Pools) Close() {
	for _, pool := range p.byShard {
		pool.Close()
	}
}
