package dbtest

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// BreakablePool is a pool whose database can be made unreachable, as in an
// outage: Break closes its connections and points new ones at a port
// nobody listens on, so every statement fails with "connection refused"
// until the returned restore function is called.
type BreakablePool struct {
	*pgxpool.Pool
	broken atomic.Bool
}

// Breakable opens a BreakablePool on dsn, closed when the test ends.
func Breakable(t testing.TB, dsn string) *BreakablePool {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	b := &BreakablePool{}
	cfg.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
		if b.broken.Load() {
			cc.Host, cc.Port, cc.Fallbacks = "127.0.0.1", uint16(deadPort), nil
		}
		return nil
	}
	if b.Pool, err = pgxpool.NewWithConfig(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Pool.Close)
	return b
}

// Break makes the database unreachable; restore brings it back.
func (b *BreakablePool) Break() (restore func()) {
	b.broken.Store(true)
	b.Pool.Reset()
	return func() { b.broken.Store(false) }
}
