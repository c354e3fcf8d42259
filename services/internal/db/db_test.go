package db_test

import (
	"context"
	"errors"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/services/internal/db/dbtest"
)

var allTables = []string{
	"account_deletions", "account_tombstones", "accounts", "dead_letters",
	"deletion_receipts", "deliveries", "people", "triggers",
}

// latestVersion is the number of the last migration.
const latestVersion = 3

func tables(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(t.Context(), `SELECT table_name FROM information_schema.tables
		WHERE table_schema = current_schema() AND table_name <> 'goose_db_version' ORDER BY table_name`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func gooseVersion(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	var v int64
	if err := pool.QueryRow(t.Context(),
		`SELECT coalesce(max(version_id), 0) FROM goose_db_version WHERE is_applied`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMigrateIsIdempotent(t *testing.T) {
	t.Parallel()
	pool, dsn := dbtest.New(t) // migrated once already
	for range 2 {
		if err := db.Migrate(t.Context(), dsn); err != nil {
			t.Fatalf("Migrate again: %v", err)
		}
	}
	if got := tables(t, pool); !slices.Equal(got, allTables) {
		t.Errorf("tables = %v, want %v", got, allTables)
	}
	if v := gooseVersion(t, pool); v != latestVersion {
		t.Errorf("goose version = %d, want %d", v, latestVersion)
	}
	var applied int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM goose_db_version WHERE version_id = 1`).Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied != 1 {
		t.Errorf("migration 1 recorded %d times", applied)
	}
}

func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	pool, dsn := dbtest.New(t)
	if _, err := pool.Exec(t.Context(), "DROP TABLE account_tombstones, account_deletions, dead_letters, deletion_receipts, deliveries, people, triggers, accounts, goose_db_version"); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- db.Migrate(t.Context(), dsn) }()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent Migrate: %v", err)
		}
	}
	if got := tables(t, pool); !slices.Equal(got, allTables) {
		t.Errorf("tables = %v, want %v", got, allTables)
	}
}

func TestMigrationsGoDownAndUp(t *testing.T) {
	t.Parallel()
	pool, dsn := dbtest.New(t)
	provider, closeDB, err := db.NewProvider(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer closeDB()
	if _, err := provider.DownTo(t.Context(), 0); err != nil {
		t.Fatalf("down: %v", err)
	}
	if got := tables(t, pool); len(got) != 0 {
		t.Errorf("tables left after down: %v", got)
	}
	if err := db.Migrate(t.Context(), dsn); err != nil {
		t.Fatalf("up after down: %v", err)
	}
	if got := tables(t, pool); !slices.Equal(got, allTables) {
		t.Errorf("tables = %v, want %v", got, allTables)
	}
}

func TestSchema(t *testing.T) {
	t.Parallel()
	pool, _ := dbtest.New(t)
	ctx := t.Context()
	exec := func(sql string, args ...any) error {
		_, err := pool.Exec(ctx, sql, args...)
		return err
	}
	if err := exec(`INSERT INTO accounts (id, shard, write_key, secret) VALUES ('acme', 3, 'wk', 's')`); err != nil {
		t.Fatal(err)
	}
	var status string
	var gen int64
	if err := pool.QueryRow(ctx, `SELECT status, generation FROM accounts WHERE id = 'acme'`).Scan(&status, &gen); err != nil {
		t.Fatal(err)
	}
	if status != "active" || gen != 1 {
		t.Errorf("defaults: status %q generation %d", status, gen)
	}
	wantViolation := func(what, code string, err error) {
		t.Helper()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != code {
			t.Errorf("%s: err = %v, want SQLSTATE %s", what, err, code)
		}
	}
	wantViolation("bad status", "23514", exec(`UPDATE accounts SET status = 'gone' WHERE id = 'acme'`))
	wantViolation("duplicate write key", "23505",
		exec(`INSERT INTO accounts (id, shard, write_key, secret) VALUES ('other', 1, 'wk', 's')`))
	wantViolation("bad channel", "23514",
		exec(`INSERT INTO triggers (account_id, name, event, channel, url) VALUES ('acme', 't', 'e', 'sms', 'u')`))
	// A shard's database holds triggers but no accounts: no foreign key.
	if err := exec(`INSERT INTO triggers (account_id, name, event, channel, url) VALUES ('elsewhere', 't', 'e', 'email', 'u')`); err != nil {
		t.Errorf("trigger of an account in another database: %v", err)
	}
	if err := exec(`INSERT INTO deletion_receipts (account_id, generation, phase, rows) VALUES ('acme', 2, 'rows_deleted', '{"people": 3}')`); err != nil {
		t.Errorf("insert deletion receipt: %v", err)
	}
	now := time.Now()
	if err := exec(`INSERT INTO dead_letters (id, shard, account_id, stage, error_class, error, attempts,
		original_subject, payload, first_failure, last_failure, dl_stream, dl_seq)
		VALUES ('INBOUND_3:42', 3, 'acme', 'processor', 'permanent', 'bad', 5, 'inbound.3.acme.track', $1, $2, $2, 'DEADLETTER_3', 7)`,
		[]byte(`{}`), now); err != nil {
		t.Errorf("insert dead letter: %v", err)
	}
}

// TestSchemasAreIsolated runs two tests at once, each in its own schema:
// both create the same account without conflict and see only their own.
func TestSchemasAreIsolated(t *testing.T) {
	schemas := make(chan string, 2)
	t.Run("group", func(t *testing.T) {
		for _, name := range []string{"a", "b"} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				pool, dsn := dbtest.New(t)
				ctx := t.Context()
				if _, err := pool.Exec(ctx, `INSERT INTO accounts (id, shard, write_key, secret) VALUES ('acme', 1, $1, 's')`, "wk-"+name); err != nil {
					t.Fatal(err)
				}
				// A separate connection opened from the DSN (as another process would) uses the same schema.
				conn, err := pgx.Connect(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(context.WithoutCancel(ctx))
				var schema, key string
				if err := conn.QueryRow(ctx, `SELECT current_schema(), (SELECT string_agg(write_key, ',') FROM accounts)`).Scan(&schema, &key); err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(schema, "sf_") || key != "wk-"+name {
					t.Errorf("DSN connection: schema %q, accounts' write keys %q; want an sf_ schema holding only wk-%s", schema, key, name)
				}
				schemas <- schema
			})
		}
	})
	close(schemas)
	var seen []string
	for s := range schemas {
		seen = append(seen, s)
	}
	if len(seen) == 2 && seen[0] == seen[1] {
		t.Errorf("both tests got schema %s", seen[0])
	}
	// Both schemas were dropped when the subtests ended.
	admin, err := pgx.Connect(t.Context(), dbtestDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.WithoutCancel(t.Context()))
	for _, s := range seen {
		var exists bool
		if err := admin.QueryRow(t.Context(), `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, s).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists {
			t.Errorf("schema %s still exists after its test ended", s)
		}
	}
}

func dbtestDSN() string {
	if dsn := os.Getenv(dbtest.EnvDSN); dsn != "" {
		return dsn
	}
	return dbtest.DefaultDSN
}

func TestOpenUnreachableNamesAddressAndFix(t *testing.T) {
	t.Parallel()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := db.Open(ctx, "postgres://postgres@"+addr+"/postgres?sslmode=disable")
	if err == nil {
		t.Fatal("Open of a closed port succeeded")
	}
	if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "make postgres") {
		t.Errorf("error = %v; want it to name %s and `make postgres`", err, addr)
	}
	err = db.Migrate(ctx, "postgres://postgres@"+addr+"/postgres?sslmode=disable")
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Errorf("Migrate error = %v; want it to name %s", err, addr)
	}
}

func TestOpenAndDSNFromEnv(t *testing.T) {
	t.Setenv(db.EnvDSN, "")
	if got := db.DSNFromEnv(); got != db.DefaultDSN {
		t.Errorf("DSNFromEnv() = %q, want the default", got)
	}
	_, dsn := dbtest.New(t)
	t.Setenv(db.EnvDSN, dsn)
	if got := db.DSNFromEnv(); got != dsn {
		t.Errorf("DSNFromEnv() = %q, want %q", got, dsn)
	}
	pool, err := db.Open(t.Context(), db.DSNFromEnv())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := pool.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
