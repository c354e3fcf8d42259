package db_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/services/internal/db/dbtest"
)

// A shard whose handlers hold every connection of its pool (poison failing
// at the database, a slow query) leaves the other shard's pool untouched.
func TestPoolsKeepOneShardFromTakingAnothersConnections(t *testing.T) {
	_, dsn := dbtest.New(t)
	pools, err := db.OpenPools(t.Context(), func(int) string { return dsn }, []int{0, 2}, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pools.Close()
	if pools.For(0) == pools.For(2) {
		t.Fatal("shards 0 and 2 share a pool")
	}
	if err := pools.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		c, err := pools.For(0).Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if c, err := pools.For(0).Acquire(ctx); err == nil {
		c.Release()
		t.Fatal("shard 0 got a third connection from a pool of 2")
	}
	ctx, cancel = context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var one int
	if err := pools.For(2).QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("shard 2 while shard 0's pool is exhausted: %d, %v", one, err)
	}
	defer func() {
		if recover() == nil {
			t.Error("For(1), a shard not opened, did not panic")
		}
	}()
	pools.For(1)
}

func TestPerShardSplitsTheProcessBudget(t *testing.T) {
	for n, want := range map[int]int32{1: db.DefaultMaxConns, 4: db.DefaultMaxConns / 4, 16: 4, 0: db.DefaultMaxConns} {
		if got := db.PerShard(n); got != want {
			t.Errorf("PerShard(%d) = %d, want %d", n, got, want)
		}
	}
}

// Each shard's pool is opened on the database its DSN names, and a failing
// shard is named by Ping and PingShard while the others still answer.
func TestPoolsOpenEachShardOnItsDatabase(t *testing.T) {
	_, dsnA := dbtest.New(t)
	_, dsnB := dbtest.New(t)
	dsns, err := db.ParseShardDSNs("1="+dsnB, dsnA, 3)
	if err != nil {
		t.Fatal(err)
	}
	pools, err := db.OpenPools(t.Context(), dsns.For, []int{0, 1, 2}, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pools.Close()
	if got := pools.Shards(); !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("Shards() = %v", got)
	}
	schema := func(shard int) string {
		var s string
		if err := pools.For(shard).QueryRow(t.Context(), "SELECT current_schema()").Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	if schema(0) != schema(2) || schema(0) == schema(1) {
		t.Errorf("schemas: shard 0 %s, 1 %s, 2 %s; want 1 alone on its own", schema(0), schema(1), schema(2))
	}
	pools.For(1).Close() // shard 1's database "goes away"
	err = pools.Ping(t.Context())
	if err == nil || !strings.Contains(err.Error(), "shard 1:") || strings.Contains(err.Error(), "shard 0") || strings.Contains(err.Error(), "shard 2") {
		t.Errorf("Ping with shard 1 down = %v; want only shard 1 named", err)
	}
	if err := pools.PingShard(t.Context(), 1); err == nil || !strings.Contains(err.Error(), "shard 1: database") {
		t.Errorf("PingShard(1) = %v; want it to name shard 1 and its database", err)
	}
	if err := pools.PingShard(t.Context(), 0); err != nil {
		t.Errorf("PingShard(0) with shard 1 down: %v", err)
	}
}
