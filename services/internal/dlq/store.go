package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardflow/shardflow/schemas"
)

// Listing limits.
const (
	// DefaultLimit is how many rows List returns when Filter.Limit is 0.
	DefaultLimit = 100
	// MaxLimit is the most rows List returns at once.
	MaxLimit = 1000
)

// ErrNotFound is returned by Get for an id that is not indexed.
var ErrNotFound = errors.New("dead letter not found")

// Filter selects dead letters. Zero fields select everything; set fields are
// combined with AND.
type Filter struct {
	// IDs selects these dead letters (ids are <originStream>:<originSeq>).
	IDs []string
	// Shard selects one shard.
	Shard *int
	// Account, Stage and Reason select by account, by the stage that gave up,
	// and by error class (transient, permanent, max_deliver...).
	Account, Stage, Reason string
	// Since (inclusive) and Until (exclusive) bound the time the stage gave
	// up (the dead letter's last failure).
	Since, Until time.Time
	// Limit bounds the rows returned by List (0: DefaultLimit, at most
	// MaxLimit) and the rows acted on by Replay and Drop (0: all). Counts
	// ignores it.
	Limit int
	// IncludeDropped includes dead letters an operator dropped.
	IncludeDropped bool
}

// Empty reports whether f selects every dead letter (no ids, no filter).
// Limit and IncludeDropped do not narrow the selection.
func (f Filter) Empty() bool {
	return len(f.IDs) == 0 && f.Shard == nil && f.Account == "" && f.Stage == "" && f.Reason == "" &&
		f.Since.IsZero() && f.Until.IsZero()
}

// Row is one indexed dead letter.
type Row struct {
	ID              string
	Shard           int
	Account         string
	Stage           string
	ErrorClass      string
	Error           string
	Attempts        int
	OriginalSubject string
	Headers         map[string][]string
	Payload         []byte
	TraceID         string
	FirstFailure    time.Time
	LastFailure     time.Time
	// DLStream and DLSeq locate the envelope in the dead-letter stream.
	DLStream    string
	DLSeq       uint64
	CreatedAt   time.Time
	ReplayedAt  *time.Time
	ReplayCount int
	DroppedAt   *time.Time
}

// StoreConfig configures a Store.
type StoreConfig struct {
	// Pool is the database. Required.
	Pool *pgxpool.Pool
	// AcquireTimeout bounds the wait for a connection; running out of it is
	// reported as ErrAcquireTimeout (IsUnavailable). Default
	// DefaultAcquireTimeout.
	AcquireTimeout time.Duration
	// StatementTimeout bounds each statement when the caller's context has
	// no deadline. Default 30s.
	StatementTimeout time.Duration
}

// Store is the dead-letter index (table dead_letters). It is safe for
// concurrent use.
type Store struct {
	cfg StoreConfig
}

// NewStore returns a Store over pool with the default timeouts.
func NewStore(pool *pgxpool.Pool) *Store {
	s, _ := NewStoreWithConfig(StoreConfig{Pool: pool})
	return s
}

// NewStoreWithConfig returns a Store.
func NewStoreWithConfig(cfg StoreConfig) (*Store, error) {
	if cfg.Pool == nil {
		return nil, errors.New("dlq: StoreConfig.Pool is required")
	}
	if cfg.AcquireTimeout <= 0 {
		cfg.AcquireTimeout = DefaultAcquireTimeout
	}
	if cfg.StatementTimeout <= 0 {
		cfg.StatementTimeout = 30 * time.Second
	}
	return &Store{cfg: cfg}, nil
}

// conn acquires a connection (ErrAcquireTimeout when none comes) and bounds
// the statement's context.
func (s *Store) conn(ctx context.Context) (*pgxpool.Conn, context.Context, context.CancelFunc, error) {
	c, err := Acquire(ctx, s.cfg.Pool, s.cfg.AcquireTimeout)
	if err != nil {
		return nil, nil, nil, err
	}
	cancel := context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, s.cfg.StatementTimeout)
	}
	return c, ctx, func() { cancel(); c.Release() }, nil
}

// Index stores a dead letter found at dlSeq of dlStream. It is keyed by the
// envelope's id (<originStream>:<originSeq>): indexing the same dead letter
// again changes nothing.
func (s *Store) Index(ctx context.Context, env schemas.DeadLetter, dlStream string, dlSeq uint64) error {
	if env.ID == "" {
		return errors.New("dlq: index: dead letter without an id")
	}
	headers := env.Headers
	if headers == nil {
		headers = map[string][]string{}
	}
	hj, err := json.Marshal(headers)
	if err != nil {
		return fmt.Errorf("dlq: index %s: encode headers: %w", env.ID, err)
	}
	payload := env.Payload
	if payload == nil {
		payload = []byte{}
	}
	c, ctx, done, err := s.conn(ctx)
	if err != nil {
		return fmt.Errorf("dlq: index %s: %w", env.ID, err)
	}
	defer done()
	_, err = c.Exec(ctx, `
INSERT INTO dead_letters (id, shard, account_id, stage, error_class, error, attempts, original_subject,
  headers, payload, trace_id, first_failure, last_failure, dl_stream, dl_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
ON CONFLICT (id) DO NOTHING`,
		env.ID, env.Shard, env.Account, env.Stage, env.ErrorClass, env.Error, env.Attempts, env.OriginalSubject,
		hj, payload, env.TraceID, env.FirstFailure, env.LastFailure, dlStream, int64(dlSeq))
	if err != nil {
		return fmt.Errorf("dlq: index %s: %w", env.ID, err)
	}
	return nil
}

const rowColumns = `id, shard, account_id, stage, error_class, error, attempts, original_subject, headers, payload,
  trace_id, first_failure, last_failure, dl_stream, dl_seq, created_at, replayed_at, replay_count, dropped_at`

func scanRow(r pgx.Row) (Row, error) {
	var (
		row   Row
		hj    []byte
		dlSeq int64
	)
	err := r.Scan(&row.ID, &row.Shard, &row.Account, &row.Stage, &row.ErrorClass, &row.Error, &row.Attempts,
		&row.OriginalSubject, &hj, &row.Payload, &row.TraceID, &row.FirstFailure, &row.LastFailure,
		&row.DLStream, &dlSeq, &row.CreatedAt, &row.ReplayedAt, &row.ReplayCount, &row.DroppedAt)
	if err != nil {
		return Row{}, err
	}
	row.DLSeq = uint64(dlSeq)
	if len(hj) > 0 {
		if err := json.Unmarshal(hj, &row.Headers); err != nil {
			return Row{}, fmt.Errorf("decode headers of %s: %w", row.ID, err)
		}
	}
	if row.Headers == nil {
		row.Headers = map[string][]string{}
	}
	return row, nil
}

// where renders f as a WHERE clause (with a leading " WHERE ", or "") and
// its arguments.
func (f Filter) where() (string, []any) {
	var (
		conds []string
		args  []any
	)
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(args))))
	}
	if len(f.IDs) > 0 {
		add("id = ANY(?)", f.IDs)
	}
	if f.Shard != nil {
		add("shard = ?", *f.Shard)
	}
	if f.Account != "" {
		add("account_id = ?", f.Account)
	}
	if f.Stage != "" {
		add("stage = ?", f.Stage)
	}
	if f.Reason != "" {
		add("error_class = ?", f.Reason)
	}
	if !f.Since.IsZero() {
		add("last_failure >= ?", f.Since)
	}
	if !f.Until.IsZero() {
		add("last_failure < ?", f.Until)
	}
	if !f.IncludeDropped {
		conds = append(conds, "dropped_at IS NULL")
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// cursor is a position in the listing order (last_failure, id), for paging.
type cursor struct {
	lastFailure time.Time
	id          string
}

// List returns the dead letters f selects, oldest failure first, at most
// f.Limit of them (see Filter.Limit).
func (s *Store) List(ctx context.Context, f Filter) ([]Row, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultLimit
	}
	return s.list(ctx, f, nil, min(limit, MaxLimit))
}

func (s *Store) list(ctx context.Context, f Filter, after *cursor, limit int) ([]Row, error) {
	where, args := f.where()
	if after != nil {
		args = append(args, after.lastFailure, after.id)
		cond := fmt.Sprintf("(last_failure, id) > ($%d, $%d)", len(args)-1, len(args))
		if where == "" {
			where = " WHERE " + cond
		} else {
			where += " AND " + cond
		}
	}
	args = append(args, limit)
	q := "SELECT " + rowColumns + " FROM dead_letters" + where +
		fmt.Sprintf(" ORDER BY last_failure, id LIMIT $%d", len(args))
	c, ctx, done, err := s.conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("dlq: list: %w", err)
	}
	defer done()
	rows, err := c.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("dlq: list: %w", err)
	}
	defer rows.Close()
	var out []Row
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			return nil, fmt.Errorf("dlq: list: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("dlq: list: %w", err)
	}
	return out, nil
}

// Counts returns how many dead letters f selects, by error class ("reason").
// f.Limit is ignored.
func (s *Store) Counts(ctx context.Context, f Filter) (map[string]int, error) {
	where, args := f.where()
	c, ctx, done, err := s.conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("dlq: counts: %w", err)
	}
	defer done()
	rows, err := c.Query(ctx, "SELECT error_class, count(*) FROM dead_letters"+where+" GROUP BY error_class", args...)
	if err != nil {
		return nil, fmt.Errorf("dlq: counts: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var (
			class string
			n     int64
		)
		if err := rows.Scan(&class, &n); err != nil {
			return nil, fmt.Errorf("dlq: counts: %w", err)
		}
		out[class] = int(n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("dlq: counts: %w", err)
	}
	return out, nil
}

// Get returns one dead letter, dropped or not; ErrNotFound if it is not
// indexed.
func (s *Store) Get(ctx context.Context, id string) (Row, error) {
	c, ctx, done, err := s.conn(ctx)
	if err != nil {
		return Row{}, fmt.Errorf("dlq: get %s: %w", id, err)
	}
	defer done()
	r, err := scanRow(c.QueryRow(ctx, "SELECT "+rowColumns+" FROM dead_letters WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Row{}, fmt.Errorf("dlq: get %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Row{}, fmt.Errorf("dlq: get %s: %w", id, err)
	}
	return r, nil
}

// MarkReplayed records that the dead letters ids were replayed once more
// (replayed_at now, replay_count + 1).
func (s *Store) MarkReplayed(ctx context.Context, ids []string) error {
	return s.exec(ctx, "mark replayed", `UPDATE dead_letters SET replayed_at = now(), replay_count = replay_count + 1 WHERE id = ANY($1)`, ids)
}

// MarkDropped records that an operator dropped the dead letters ids: they
// leave the listing (Filter.IncludeDropped brings them back) and are no
// longer replayed. Dropping twice keeps the first time.
func (s *Store) MarkDropped(ctx context.Context, ids []string) error {
	return s.exec(ctx, "mark dropped", `UPDATE dead_letters SET dropped_at = now() WHERE id = ANY($1) AND dropped_at IS NULL`, ids)
}

func (s *Store) exec(ctx context.Context, op, q string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	c, ctx, done, err := s.conn(ctx)
	if err != nil {
		return fmt.Errorf("dlq: %s: %w", op, err)
	}
	defer done()
	if _, err := c.Exec(ctx, q, ids); err != nil {
		return fmt.Errorf("dlq: %s: %w", op, err)
	}
	return nil
}
