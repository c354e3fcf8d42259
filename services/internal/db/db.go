package db

import (
	"cmp"
	"context"
	"embed"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// DefaultDSN is the local development database started by `make postgres`.
const DefaultDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// EnvDSN is the environment variable naming the database to use.
const EnvDSN = "SHARDFLOW_DATABASE_URL"

// DSNFromEnv returns $SHARDFLOW_DATABASE_URL, or DefaultDSN when it is unset or empty.
func DSNFromEnv() string {
	return cmp.Or(os.Getenv(EnvDSN), DefaultDSN)
}

//go:embed migrations/*.sql
var embedded embed.FS

// Migrations returns the embedded migration files (NNNNN_name.sql at the root).
func Migrations() fs.FS {
	sub, err := fs.Sub(embedded, "migrations")
	if err != nil {
		panic(err) // cannot happen: the directory is embedded
	}
	return sub
}

// DefaultMaxConns is the pool size when the DSN sets no pool_max_conns.
const DefaultMaxConns = 32

// Open opens a connection pool for dsn and checks that the database answers.
// If it does not, the error names the host and port and says how to start a
// local Postgres.
func Open(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	return openWith(ctx, dsn, DefaultMaxConns)
}

// openWith is Open with maxConns connections unless the DSN sets
// pool_max_conns.
func openWith(ctx context.Context, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("db open: parse DSN: %w", err)
	}
	// pgxpool's default is max(4, cores) connections: on a small machine
	// that, not Postgres, bounds a stage running dozens of handlers (each
	// delivery commits twice). The DSN's pool_max_conns still wins.
	if !strings.Contains(dsn, "pool_max_conns") {
		cfg.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("db open: create pool for %s: %w", Addr(cfg.ConnConfig.Config), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, unreachable("db open", cfg.ConnConfig.Config, err)
	}
	return pool, nil
}

// Migrate applies every pending embedded migration to the database (and
// schema, through search_path) dsn names. Running it again is a no-op.
func Migrate(ctx context.Context, dsn string) error {
	provider, closeDB, err := newProvider(ctx, dsn)
	if err != nil {
		return err
	}
	defer closeDB()
	results, err := provider.Up(ctx)
	if err != nil {
		return fmt.Errorf("db migrate: %w", err)
	}
	for _, r := range results {
		slog.Default().InfoContext(ctx, "db migration applied",
			"migration", r.Source.Path, "version", r.Source.Version, "duration", r.Duration)
	}
	return nil
}

// newProvider returns a goose provider over a database/sql handle for dsn,
// and the function closing that handle.
func newProvider(ctx context.Context, dsn string) (*goose.Provider, func(), error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, nil, fmt.Errorf("db migrate: parse DSN: %w", err)
	}
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(lockID(cfg.RuntimeParams["search_path"])),
		lock.WithLockTimeout(1, 300), // poll each second, up to 5 minutes
	)
	if err != nil {
		return nil, nil, fmt.Errorf("db migrate: create locker: %w", err)
	}
	sqlDB := stdlib.OpenDB(*cfg)
	provider, err := goose.NewProvider(goose.DialectPostgres, sqlDB, Migrations(),
		goose.WithSessionLocker(locker))
	if err != nil {
		_ = sqlDB.Close()
		return nil, nil, fmt.Errorf("db migrate: create goose provider: %w", err)
	}
	if err := provider.Ping(ctx); err != nil {
		_ = sqlDB.Close()
		return nil, nil, unreachable("db migrate", cfg.Config, err)
	}
	return provider, func() { _ = sqlDB.Close() }, nil
}

// lockID is the advisory lock key for migrating the schema(s) of searchPath.
func lockID(searchPath string) int64 {
	if searchPath == "" {
		return lock.DefaultLockID
	}
	h := fnv.New64a()
	h.Write([]byte("shardflow migrate " + searchPath))
	return int64(h.Sum64())
}

// Addr is host:port of a connection config (the socket directory for a Unix socket).
func Addr(c pgconn.Config) string {
	if strings.HasPrefix(c.Host, "/") {
		return c.Host
	}
	return net.JoinHostPort(c.Host, strconv.Itoa(int(c.Port)))
}

func unreachable(op string, c pgconn.Config, err error) error {
	return fmt.Errorf("%s: cannot connect to Postgres at %s (database %q): %w; "+
		"is it running? start a local one with `make postgres`, or set %s to a reachable database",
		op, Addr(c), c.Database, err, EnvDSN)
}
