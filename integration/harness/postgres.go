package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultTestDSN is the database the suites use when
// SHARDFLOW_TEST_DATABASE_URL is not set.
const DefaultTestDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// Schema creates a fresh schema for the test and returns a DSN whose
// connections use it (search_path in the DSN, so the service processes use
// it too) and a pool on it. The services run their migrations into it. The
// schema is dropped when the test ends.
func Schema(t testing.TB) (dsn string, pool *pgxpool.Pool) {
	t.Helper()
	schema := "sf_it_" + randomHex()
	return isolated(t, "CREATE SCHEMA "+schema, "DROP SCHEMA "+schema+" CASCADE", func(u *url.URL) {
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
	})
}

// Database creates a fresh database (not just a schema) for a test that
// breaks the database itself (an outage), so no other test is affected. It
// is dropped when the test ends.
func Database(t testing.TB) (dsn string, pool *pgxpool.Pool) {
	t.Helper()
	name := "sf_itdb_" + randomHex()
	return isolated(t, "CREATE DATABASE "+name, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)", func(u *url.URL) {
		u.Path = "/" + name
	})
}

// isolated runs create on the test server, points the base DSN at what it
// created (with point), opens a pool there, and runs drop when the test ends.
func isolated(t testing.TB, create, drop string, point func(*url.URL)) (dsn string, pool *pgxpool.Pool) {
	t.Helper()
	base, admin := adminPool(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.Exec(ctx, create); err != nil {
		t.Fatalf("%s: %v", create, err)
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	point(u)
	dsn = u.String()
	pool, err = pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = admin.Exec(ctx, drop)
		admin.Close()
	})
	return dsn, pool
}

// adminPool connects to the test server's base database, failing the test
// with how to start Postgres when it does not answer (never a skip).
func adminPool(t testing.TB) (base string, admin *pgxpool.Pool) {
	t.Helper()
	base = os.Getenv("SHARDFLOW_TEST_DATABASE_URL")
	if base == "" {
		base = DefaultTestDSN
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgxpool.New(ctx, base)
	if err == nil {
		err = admin.Ping(ctx)
	}
	if err != nil {
		t.Fatalf("Postgres is not reachable at %s: %v\nstart it with `make postgres` (or set SHARDFLOW_TEST_DATABASE_URL); this suite needs a real database and does not skip", base, err)
	}
	return base, admin
}

func randomHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
