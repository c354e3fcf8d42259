package dbtest

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardflow/shardflow/services/internal/db"
)

// DefaultDSN is the test database used when SHARDFLOW_TEST_DATABASE_URL is unset.
const DefaultDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// EnvDSN is the environment variable naming the database tests create their schemas in.
const EnvDSN = "SHARDFLOW_TEST_DATABASE_URL"

// setupTimeout bounds connecting, creating the schema and migrating it.
const setupTimeout = time.Minute

// New creates a migrated schema for t and returns a pool using it and a DSN
// that selects it. Both are valid until t ends; the pool is closed and the
// schema dropped in t.Cleanup.
func New(t testing.TB) (pool *pgxpool.Pool, dsn string) {
	t.Helper()
	base := cmp.Or(os.Getenv(EnvDSN), DefaultDSN)
	ctx, cancel := context.WithTimeout(t.Context(), setupTimeout)
	defer cancel()

	cfg, err := pgx.ParseConfig(base)
	if err != nil {
		t.Fatalf("dbtest: parse %s: %v", EnvDSN, err)
	}
	admin, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("dbtest: cannot reach the test database at %s (database %q): %v\n"+
			"Postgres must be running for this test: start it with `make postgres` "+
			"(it also creates the %q database), or set %s to a reachable database.",
			db.Addr(cfg.Config), cfg.Database, err, cfg.Database, EnvDSN)
	}

	schema := "sf_" + randomHex(6)
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		_ = admin.Close(context.WithoutCancel(ctx))
		t.Fatalf("dbtest: create schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 30*time.Second)
		defer cancel()
		if _, err := admin.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Logf("dbtest: drop schema %s (left behind): %v", schema, err)
		}
		_ = admin.Close(ctx)
	})

	dsn, err = withSearchPath(base, schema)
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	if err := db.Migrate(ctx, dsn); err != nil {
		t.Fatalf("dbtest: migrate schema %s: %v", schema, err)
	}
	pool, err = db.Open(ctx, dsn)
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	t.Cleanup(pool.Close) // runs before the schema is dropped (cleanups run last-in first-out)
	return pool, dsn
}

// withSearchPath returns dsn with its search_path runtime parameter set to
// schema, in the DSN's own syntax (URL or key=value).
func withSearchPath(dsn, schema string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("parse %s: %w", EnvDSN, err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return dsn + " search_path=" + schema, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
