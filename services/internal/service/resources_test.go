package service

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/shardflow/shardflow/services/internal/db/dbtest"
	"github.com/shardflow/shardflow/services/internal/health"
)

// testEnv is an Env with what the database methods use (no NATS).
func testEnv(t *testing.T, c Common) *Env {
	t.Helper()
	e := &Env{Name: "processor", Config: c, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Checks: &health.Checks{}, Topo: c.Topology()}
	t.Cleanup(func() {
		for i := len(e.closers) - 1; i >= 0; i-- {
			e.closers[i]()
		}
	})
	return e
}

// A shard listed in ShardDatabaseURLs gets a pool on its own database,
// migrated at open; the others use the main one; readiness names the shard
// whose database is down.
func TestOpenShardDatabasesPutsEachShardOnItsDatabase(t *testing.T) {
	mainPool, mainDSN := dbtest.New(t)
	ownPool, ownDSN := dbtest.New(t)
	// The shard's database starts empty: opening must migrate it.
	if _, err := ownPool.Exec(t.Context(), "DROP TABLE account_tombstones, account_deletions, dead_letters, deletion_receipts, deliveries, people, triggers, accounts, goose_db_version"); err != nil {
		t.Fatal(err)
	}
	e := testEnv(t, Common{DatabaseURL: mainDSN, ShardDatabaseURLs: "1=" + ownDSN, Shards: 3, ConsumeShards: "0,1"})
	pools, err := e.OpenShardDatabases(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	schemaOf := func(shard int) string {
		var s string
		if err := pools.For(shard).QueryRow(t.Context(), "SELECT current_schema()").Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	var mainSchema, ownSchema string
	_ = mainPool.QueryRow(t.Context(), "SELECT current_schema()").Scan(&mainSchema)
	_ = ownPool.QueryRow(t.Context(), "SELECT current_schema()").Scan(&ownSchema)
	if got := schemaOf(0); got != mainSchema {
		t.Errorf("shard 0 uses %s, want the main database's %s", got, mainSchema)
	}
	if got := schemaOf(1); got != ownSchema {
		t.Errorf("shard 1 uses %s, want its own %s", got, ownSchema)
	}
	var n int
	if err := pools.For(1).QueryRow(t.Context(), "SELECT count(*) FROM triggers").Scan(&n); err != nil {
		t.Errorf("shard 1's database was not migrated: %v", err)
	}
	if failed := e.Checks.Run(t.Context()); len(failed) != 0 {
		t.Fatalf("not ready with both databases up: %v", failed)
	}
	pools.For(1).Close() // shard 1's database "goes away"
	failed := e.Checks.Run(t.Context())
	if msg, ok := failed["postgres-shard-1"]; !ok || !strings.Contains(msg, "shard 1: database") || len(failed) != 1 {
		t.Errorf("readiness with shard 1's database down: %v; want only postgres-shard-1 failing, naming shard 1", failed)
	}
}

func TestOpenDatabasesRefuseABadShardConfiguration(t *testing.T) {
	_, dsn := dbtest.New(t)
	e := testEnv(t, Common{DatabaseURL: dsn, ShardDatabaseURLs: "0=" + dsn + ";2=" + dsn, Shards: 2})
	for name, open := range map[string]func(context.Context) error{
		"OpenDatabase":          func(ctx context.Context) error { _, err := e.OpenDatabase(ctx); return err },
		"OpenShardDatabases":    func(ctx context.Context) error { _, err := e.OpenShardDatabases(ctx); return err },
		"OpenAllShardDatabases": func(ctx context.Context) error { _, err := e.OpenAllShardDatabases(ctx, nil); return err },
	} {
		err := open(t.Context())
		if err == nil || !strings.Contains(err.Error(), "processor refuses to start") || !strings.Contains(err.Error(), "entry 2") ||
			!strings.Contains(err.Error(), "shard 2 is not in the topology's shards 0..1") {
			t.Errorf("%s with shard 2 of 2: %v; want a refusal naming entry 2 and the rule", name, err)
		}
	}
}

// The accounts service gets a pool for each shard with a database of its
// own and the main pool itself for every other shard (in the default
// configuration, only the main pool: a deletion's row step stays one
// transaction), and no readiness check: one shard's database down must not
// take its admin API from the others.
func TestOpenAllShardDatabasesOpensOnlyShardsWithTheirOwnDatabase(t *testing.T) {
	main, dsn := dbtest.New(t)
	e := testEnv(t, Common{DatabaseURL: dsn, Shards: 3, ConsumeShards: "1"})
	pools, err := e.OpenAllShardDatabases(t.Context(), main)
	if err != nil {
		t.Fatal(err)
	}
	for n := range 3 {
		if pools.For(n) != main {
			t.Errorf("one database: shard %d has a pool of its own, want the main pool", n)
		}
	}

	_, own := dbtest.New(t)
	e = testEnv(t, Common{DatabaseURL: dsn, ShardDatabaseURLs: "2=" + own, Shards: 3, ConsumeShards: "1"})
	pools, err = e.OpenAllShardDatabases(t.Context(), main)
	if err != nil {
		t.Fatal(err)
	}
	if got := pools.Shards(); len(got) != 1 || got[0] != 2 {
		t.Errorf("pools for shards %v, want only 2's", got)
	}
	if pools.For(0) != main || pools.For(1) != main || pools.For(2) == main {
		t.Error("shards 0 and 1 must use the main pool, shard 2 its own")
	}
	pools.For(2).Close()
	if failed := e.Checks.Run(t.Context()); len(failed) != 0 {
		t.Errorf("readiness %v; want no shard database check", failed)
	}
}
