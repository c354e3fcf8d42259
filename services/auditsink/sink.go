package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/shardflow/shardflow/streams"
)

// createTable is the sink's whole schema. It is created at start-up
// (idempotently): the sink owns this one table and nothing else.
const createTable = `
CREATE TABLE IF NOT EXISTS audit_log (
  stream     text        NOT NULL,
  seq        bigint      NOT NULL,
  account    text        NOT NULL,
  type       text        NOT NULL,
  generation bigint      NOT NULL,
  at         timestamptz NOT NULL,
  payload    jsonb       NOT NULL,
  PRIMARY KEY (stream, seq)
);
CREATE INDEX IF NOT EXISTS audit_log_account ON audit_log (account, at);`

// insertEvent writes one event. The key is the event's place in its stream,
// so a redelivery (at-least-once) inserts nothing the second time.
const insertEvent = `
INSERT INTO audit_log (stream, seq, account, type, generation, at, payload)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
ON CONFLICT (stream, seq) DO NOTHING`

// sameEvent says whether the row at a position holds this very event.
const sameEvent = `SELECT payload = $3::jsonb FROM audit_log WHERE stream = $1 AND seq = $2`

// accountEvent is an account lifecycle event as the accounts service
// publishes it on accounts.<shard>.<account>.<type> (the schema is
// account_event.schema.json in the schemas module).
type accountEvent struct {
	Type       string    `json:"type"`
	Account    string    `json:"account"`
	Shard      int       `json:"shard"`
	Generation int64     `json:"generation"`
	At         time.Time `json:"at"`
}

// Sink writes every account lifecycle event into audit_log.
type Sink struct {
	pool    *pgxpool.Pool
	timeout time.Duration

	inserted, duplicates metric.Int64Counter
}

// NewSink returns a Sink writing through pool. meter may be nil.
func NewSink(pool *pgxpool.Pool, meter metric.Meter) (*Sink, error) {
	if meter == nil {
		meter = noop.Meter{}
	}
	s := &Sink{pool: pool, timeout: 10 * time.Second}
	var err error
	if s.inserted, err = meter.Int64Counter("auditsink_rows_inserted", metric.WithDescription("Lifecycle events written to audit_log.")); err != nil {
		return nil, err
	}
	if s.duplicates, err = meter.Int64Counter("auditsink_duplicates", metric.WithDescription("Redelivered events already in audit_log.")); err != nil {
		return nil, err
	}
	return s, nil
}

// CreateTable creates audit_log if it does not exist.
func (s *Sink) CreateTable(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, createTable); err != nil {
		return fmt.Errorf("create audit_log: %w", err)
	}
	return nil
}

// Handle is the streams.Handler: one event, one row.
//
//   - an event that does not decode, or whose body disagrees with its
//     subject, can never be written: DeadLetter (class undecodable or
//     schema_invalid), at once;
//   - Postgres unreachable: Unavailable, so the runtime holds the event,
//     stops fetching and probes, using no delivery attempt;
//   - any other failure: Retry, on the consumer's backoff schedule;
//   - written (or already there): Ack, only after the INSERT committed.
func (s *Sink) Handle(ctx context.Context, m *streams.Msg) streams.Outcome {
	var ev accountEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return streams.DeadLetter(streams.ClassUndecodable, fmt.Errorf("decode account event: %w", err))
	}
	if ev.Account != m.Subject.Account || ev.Type != m.Subject.Type {
		return streams.DeadLetter(streams.ClassSchemaInvalid,
			fmt.Errorf("event %q of account %q published on subject %s", ev.Type, ev.Account, m.Subject))
	}
	at := cmp.Or(ev.At, m.Published)
	ictx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	tag, err := s.pool.Exec(ictx, insertEvent, m.Stream, int64(m.Sequence), ev.Account, ev.Type, ev.Generation, at, string(m.Data))
	if err != nil {
		return s.failed(ctx, fmt.Errorf("insert %s:%d into audit_log: %w", m.Stream, m.Sequence, err))
	}
	if tag.RowsAffected() == 1 {
		s.inserted.Add(ctx, 1)
		return streams.Ack()
	}
	// The position is taken. A redelivery finds its own event there; a
	// different event means the stream was re-created and its sequences
	// restarted: say so loudly (a dead letter) rather than lose the event.
	var same bool
	err = s.pool.QueryRow(ictx, sameEvent, m.Stream, int64(m.Sequence), string(m.Data)).Scan(&same)
	if err != nil {
		return s.failed(ctx, fmt.Errorf("compare %s:%d with audit_log: %w", m.Stream, m.Sequence, err))
	}
	if !same {
		return streams.DeadLetter(streams.ClassPermanent, fmt.Errorf(
			"audit_log already holds a different event at %s:%d; was the stream re-created (its sequences restart at 1)?", m.Stream, m.Sequence))
	}
	s.duplicates.Add(ctx, 1)
	return streams.Ack()
}

// failed classifies a database error.
func (s *Sink) failed(ctx context.Context, err error) streams.Outcome {
	if ctx.Err() != nil {
		return streams.Retry(err) // stopping: left unacked for the next consumer
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "22"), strings.HasPrefix(pgErr.Code, "23"):
			return streams.DeadLetter(streams.ClassPermanent, err) // data the table can never take
		case strings.HasPrefix(pgErr.Code, "08"), strings.HasPrefix(pgErr.Code, "57P"), pgErr.Code == "53300":
			return streams.Unavailable(err) // the server is going away or full
		}
		return streams.Retry(err) // the server answered: it is up
	}
	// No connection to be had (refused, unreachable, the pool closed): the
	// statement never reached the server, so this is the database, not the
	// event.
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) || pgconn.SafeToRetry(err) {
		return streams.Unavailable(err)
	}
	// No answer mid-statement (a timeout, a connection lost): whether the
	// server is down or this statement was unlucky, a ping decides.
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if perr := s.pool.Ping(pctx); perr != nil {
		return streams.Unavailable(err)
	}
	return streams.Retry(err)
}
