package dlq

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardflow/shardflow/streams"
)

// ErrAcquireTimeout is returned by Acquire when the pool could not hand out a
// connection in time: Postgres does not answer (or every connection is stuck),
// which a handler treats as the database being unavailable.
var ErrAcquireTimeout = errors.New("timed out acquiring a database connection")

// DefaultAcquireTimeout bounds Acquire when the caller gives no timeout.
const DefaultAcquireTimeout = 5 * time.Second

// Acquire takes a connection from pool, waiting at most timeout (0:
// DefaultAcquireTimeout). A timeout is reported as ErrAcquireTimeout, so that
// IsUnavailable can tell "no connection to be had" from a slow query (a plain
// context.DeadlineExceeded, which is not an outage). Release the connection
// when done.
func Acquire(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration) (*pgxpool.Conn, error) {
	if timeout <= 0 {
		timeout = DefaultAcquireTimeout
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := pool.Acquire(actx)
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w (%v): %w", ErrAcquireTimeout, timeout, err)
		}
		return nil, fmt.Errorf("acquire database connection: %w", err)
	}
	return c, nil
}

// IsUnavailable reports whether err means Postgres itself is unreachable or
// going away, rather than that this one statement failed: a stage handler
// then returns streams.Unavailable (hold the message, stop fetching, probe),
// so an outage burns no delivery attempt and dead-letters nothing.
//
// It recognises connection failures (pgconn.ConnectError, *net.OpError,
// refused / reset / broken-pipe system errors and their texts, a connection
// lost mid-statement), errors pgconn marks safe to retry (the statement was
// never sent), a closed pool, ErrAcquireTimeout, and the server's own
// "going away" answers: SQLSTATE class 08 (connection exception), 57P01
// admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now and 53300
// too_many_connections.
//
// It deliberately does not treat a cancelled context (a stop) or a plain
// deadline (a slow statement) as an outage: a message whose statement is
// slow must be retried and, in the end, dead-lettered, not hold its shard for
// ever.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrAcquireTimeout) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"),
			pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03",
			pgErr.Code == "53300":
			return true
		}
		// Any other server answer means the server is up. (A ConnectError
		// wrapping, say, a bad password is caught below.)
		var connErr *pgconn.ConnectError
		if !errors.As(err, &connErr) {
			return false
		}
	}
	if errors.Is(err, context.Canceled) {
		return false
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, pgconn.ErrConnClosed) {
		return true
	}
	if pgconn.SafeToRetry(err) {
		return true
	}
	msg := err.Error()
	for _, s := range unavailableTexts {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// unavailableTexts are error texts of a lost or refused connection, for
// errors that arrive without their type (wrapped with %v, or from drivers
// below pgx).
var unavailableTexts = []string{
	"connection refused",
	"connection reset by peer",
	"broken pipe",
	"closed pool",
	"conn closed",
	"server closed the connection unexpectedly",
	"the database system is shutting down",
	"the database system is starting up",
	"no connection to the server",
}

// Outcome classifies a database error for a stage handler: the database
// being down is Unavailable (hold, no attempt used); a data exception or an
// integrity violation (SQLSTATE classes 22 and 23: the message's content can
// never be stored) is a permanent failure, dead-lettered at once; anything
// else is retried on the backoff schedule.
func Outcome(err error) streams.Outcome {
	if IsUnavailable(err) {
		return streams.Unavailable(err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "23")) {
		return streams.DeadLetter(streams.ClassPermanent, err)
	}
	return streams.Retry(err)
}
