package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/streams"
)

// querier is what both a pool, a pooled connection and a transaction offer.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// row is a row of the accounts table.
type row struct {
	ID         string
	Shard      int
	Status     streams.AccountStatus
	Generation int64
	WriteKey   string
	Secret     string
	RateLimit  int
	CreatedAt  time.Time
	UpdatedAt  time.Time
}

const rowCols = `id, shard, status, generation, write_key, secret, rate_limit_per_sec, created_at, updated_at`

func scanRow(r pgx.Row) (row, error) {
	var a row
	var status string
	err := r.Scan(&a.ID, &a.Shard, &status, &a.Generation, &a.WriteKey, &a.Secret, &a.RateLimit, &a.CreatedAt, &a.UpdatedAt)
	a.Status = streams.AccountStatus(status)
	return a, err
}

// directoryEntry is the row as the directory carries it.
func (a row) directoryEntry() streams.Account {
	return streams.Account{
		ID: a.ID, Shard: a.Shard, Status: a.Status, Generation: a.Generation,
		WriteKey: a.WriteKey, Secret: a.Secret, RateLimit: a.RateLimit, UpdatedAt: a.UpdatedAt.UTC(),
	}
}

// getAccount reads an account; lock is "", "FOR UPDATE" or "FOR SHARE".
// A missing account is pgx.ErrNoRows.
func getAccount(ctx context.Context, q querier, id, lock string) (row, error) {
	a, err := scanRow(q.QueryRow(ctx, `SELECT `+rowCols+` FROM accounts WHERE id = $1 `+lock, id))
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return a, fmt.Errorf("read account %s: %w", id, err)
	}
	return a, err
}

// updateAccount writes the mutable columns of a and returns the row as
// stored (updated_at set by the database).
func updateAccount(ctx context.Context, q querier, a row) (row, error) {
	out, err := scanRow(q.QueryRow(ctx, `
		UPDATE accounts SET shard = $2, status = $3, generation = $4, write_key = $5, secret = $6,
		       rate_limit_per_sec = $7, created_at = $8, updated_at = now()
		 WHERE id = $1
		RETURNING `+rowCols,
		a.ID, a.Shard, string(a.Status), a.Generation, a.WriteKey, a.Secret, a.RateLimit, a.CreatedAt))
	if err != nil {
		return out, fmt.Errorf("update account %s: %w", a.ID, err)
	}
	return out, nil
}

// insertAccount inserts a new account; ok is false if the id exists.
func insertAccount(ctx context.Context, q querier, a row) (out row, ok bool, err error) {
	out, err = scanRow(q.QueryRow(ctx, `
		INSERT INTO accounts (id, shard, status, generation, write_key, secret, rate_limit_per_sec)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (id) DO NOTHING
		RETURNING `+rowCols,
		a.ID, a.Shard, string(a.Status), a.Generation, a.WriteKey, a.Secret, a.RateLimit))
	if errors.Is(err, pgx.ErrNoRows) {
		return out, false, nil
	}
	if err != nil {
		return out, false, fmt.Errorf("insert account %s: %w", a.ID, err)
	}
	return out, true, nil
}

const deletionCols = `generation, started_at, finished_at, step, audit`

func scanDeletion(r pgx.Row) (Deletion, error) {
	var d Deletion
	var audit []byte
	if err := r.Scan(&d.Generation, &d.StartedAt, &d.FinishedAt, &d.Step, &audit); err != nil {
		return d, err
	}
	if err := json.Unmarshal(audit, &d.Audit); err != nil {
		return d, fmt.Errorf("decode deletion audit: %w", err)
	}
	d.Audit.init()
	return d, nil
}

// latestDeletion returns an account's latest deletion, or nil.
func latestDeletion(ctx context.Context, q querier, id string) (*Deletion, error) {
	d, err := scanDeletion(q.QueryRow(ctx, `SELECT `+deletionCols+` FROM account_deletions
		WHERE account_id = $1 ORDER BY generation DESC LIMIT 1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read deletion of %s: %w", id, err)
	}
	return &d, nil
}

// getDeletion returns the deletion of one generation (pgx.ErrNoRows if none).
func getDeletion(ctx context.Context, q querier, id string, gen int64) (Deletion, error) {
	d, err := scanDeletion(q.QueryRow(ctx, `SELECT `+deletionCols+` FROM account_deletions
		WHERE account_id = $1 AND generation = $2`, id, gen))
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return d, fmt.Errorf("read deletion of %s generation %d: %w", id, gen, err)
	}
	return d, err
}

// saveDeletion records a deletion's step and audit.
func saveDeletion(ctx context.Context, q querier, id string, d Deletion) error {
	b, err := json.Marshal(d.Audit)
	if err != nil {
		return err
	}
	_, err = q.Exec(ctx, `UPDATE account_deletions SET step = $3, audit = $4, finished_at = $5
		WHERE account_id = $1 AND generation = $2`, id, d.Generation, d.Step, b, d.FinishedAt)
	if err != nil {
		return fmt.Errorf("record deletion of %s generation %d: %w", id, d.Generation, err)
	}
	return nil
}

const triggerCols = `account_id, name, event, channel, url, created_at`

func scanTrigger(r pgx.Row) (Trigger, error) {
	var t Trigger
	err := r.Scan(&t.Account, &t.Name, &t.Event, &t.Channel, &t.URL, &t.CreatedAt)
	return t, err
}

// The tables holding an account's data, deleted by the saga: those of its
// shard's database (db.ShardTables) and those of the main one (the
// dead-letter index). The account row itself is kept, with status deleted,
// next to its tombstone.
var (
	shardAccountTables = db.ShardTables
	mainAccountTables  = []string{"dead_letters"}
)

// deleteRows deletes an account's rows from each of tables and returns the
// counts by table.
func deleteRows(ctx context.Context, q querier, id string, tables []string) (map[string]int64, error) {
	out := make(map[string]int64, len(tables))
	for _, table := range tables {
		tag, err := q.Exec(ctx, `DELETE FROM `+pgx.Identifier{table}.Sanitize()+` WHERE account_id = $1`, id)
		if err != nil {
			return nil, fmt.Errorf("delete %s rows of %s: %w", table, id, err)
		}
		out[table] = tag.RowsAffected()
	}
	return out, nil
}

// readReceipt returns the counts a deletion step recorded in a shard's
// database (deletion_receipts), and whether there is one.
func readReceipt(ctx context.Context, q querier, id string, gen int64, step string) (map[string]int64, bool, error) {
	var b []byte
	err := q.QueryRow(ctx, `SELECT rows FROM deletion_receipts WHERE account_id = $1 AND generation = $2 AND phase = $3`,
		id, gen, step).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read deletion receipt of %s generation %d, %s: %w", id, gen, step, err)
	}
	counts := map[string]int64{}
	if err := json.Unmarshal(b, &counts); err != nil {
		return nil, false, fmt.Errorf("decode deletion receipt of %s generation %d, %s: %w", id, gen, step, err)
	}
	return counts, true, nil
}

// writeReceipt records what a deletion step deleted, in the transaction
// that deleted it. A receipt already there (a second worker that lost the
// advisory lock's session and raced this one) is a conflict: the
// transaction fails and the retry reads the receipt instead.
func writeReceipt(ctx context.Context, q querier, id string, gen int64, step string, counts map[string]int64) error {
	b, err := json.Marshal(counts)
	if err != nil {
		return err
	}
	if _, err := q.Exec(ctx, `INSERT INTO deletion_receipts (account_id, generation, phase, rows) VALUES ($1, $2, $3, $4)`,
		id, gen, step, b); err != nil {
		return fmt.Errorf("write deletion receipt of %s generation %d, %s: %w", id, gen, step, err)
	}
	return nil
}
