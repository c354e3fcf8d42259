package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardflow/shardflow/services/internal/db/dbtest"
	"github.com/shardflow/shardflow/services/internal/dlq"
)

// safeToRetry is an error pgconn would mark as never sent.
type safeToRetry struct{}

func (safeToRetry) Error() string     { return "lock failed" }
func (safeToRetry) SafeToRetry() bool { return true }

func TestIsUnavailable(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, dsn := dbtest.New(t)

	// Real errors from a real driver.
	_, refused := pgx.Connect(ctx, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2")
	if refused == nil {
		t.Fatal("connected to port 1")
	}
	closed, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	_, closedPool := closed.Exec(ctx, "SELECT 1")

	exhausted, err := pgxpool.New(ctx, dsn+"&pool_max_conns=1")
	if err != nil {
		t.Fatal(err)
	}
	defer exhausted.Close()
	held, err := exhausted.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, acquireTimeout := dlq.Acquire(ctx, exhausted, 50*time.Millisecond)
	held.Release()

	live, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	_, undefinedTable := live.Exec(ctx, "SELECT * FROM no_such_table")
	_, uniqueViolation := live.Exec(ctx, "INSERT INTO accounts (id, shard, write_key, secret) VALUES ('a', 0, 'k', 's'), ('b', 0, 'k', 's')")
	sctx, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, slowStatement := live.Exec(sctx, "SELECT pg_sleep(5)")
	scancel()

	pgErr := func(code string) error { return &pgconn.PgError{Code: code, Message: "sqlstate " + code} }
	opErr := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}

	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain error", errors.New("something else"), false},
		{"connect refused (pgconn.ConnectError)", refused, true},
		{"closed pool", closedPool, true},
		{"acquire timeout", acquireTimeout, true},
		{"net.OpError", opErr, true},
		{"wrapped net.OpError", fmt.Errorf("index: %w", opErr), true},
		{"ECONNREFUSED", fmt.Errorf("x: %w", syscall.ECONNREFUSED), true},
		{"ECONNRESET", fmt.Errorf("x: %w", syscall.ECONNRESET), true},
		{"text: connection refused", errors.New("dial tcp 10.0.0.1:5432: connect: connection refused"), true},
		{"connection lost mid-statement", fmt.Errorf("receive message: %w", io.ErrUnexpectedEOF), true},
		{"conn closed", pgconn.ErrConnClosed, true},
		{"safe to retry", safeToRetry{}, true},
		{"57P01 admin_shutdown", pgErr("57P01"), true},
		{"57P02 crash_shutdown", pgErr("57P02"), true},
		{"57P03 cannot_connect_now", pgErr("57P03"), true},
		{"08006 connection_failure", pgErr("08006"), true},
		{"08001 unable to connect", fmt.Errorf("wrapped: %w", pgErr("08001")), true},
		{"53300 too_many_connections", pgErr("53300"), true},
		{"42P01 undefined_table (real)", undefinedTable, false},
		{"23505 unique_violation (real)", uniqueViolation, false},
		{"57014 query_canceled", pgErr("57014"), false},
		{"slow statement (deadline)", slowStatement, false},
		{"context canceled", context.Canceled, false},
		{"context deadline", context.DeadlineExceeded, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil && tc.name != "nil" {
				t.Fatal("the test could not produce its error")
			}
			if got := dlq.IsUnavailable(tc.err); got != tc.want {
				t.Fatalf("IsUnavailable(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
	if !errors.Is(acquireTimeout, dlq.ErrAcquireTimeout) {
		t.Fatalf("acquire timeout error %v", acquireTimeout)
	}
}
