package db_test

import (
	"context"
	"testing"
	"time"

	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/services/internal/db/dbtest"
)

// A shard whose handlers hold every connection of its pool (poison failing
// at the database, a slow query) leaves the other shard's pool untouched.
func TestPoolsKeepOneShardFromTakingAnothersConnections(t *testing.T) {
	_, dsn := dbtest.New(t)
	pools, err := db.OpenPools(t.Context(), dsn, []int{0, 2}, 2)
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
