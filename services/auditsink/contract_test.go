package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/streamstest"
)

// The sink passes the consumer contract suite: crash before ack, poison,
// oversize, a Postgres outage and a stop mid-batch. (Features.AccountGate
// is off: an audit log must record the events of deleted accounts.)
func TestContract(t *testing.T) {
	dsn := testSchema(t)
	db := newBreakablePool(t, dsn)
	check := newPool(t, dsn) // Effect reads through a pool that is never broken
	sink, err := NewSink(db.Pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sink.CreateTable(t.Context()); err != nil {
		t.Fatal(err)
	}
	message := func(account, data string) streams.Message {
		return streams.Message{
			Subject:    streams.Subject{Kind: streams.KindAccounts, Account: account, Type: "created"},
			ID:         streams.MessageID(account, 1, "created"),
			Generation: 1,
			Data:       []byte(data),
		}
	}
	streamstest.Run(t, streamstest.Harness{
		Stage: streams.ConsumerSpec{Name: "auditsink", Kind: streams.KindAccounts},
		NewHandler: func(t *testing.T, _ *streamstest.Env) streams.Handler {
			s, err := NewSink(db.Pool, nil)
			if err != nil {
				t.Fatal(err)
			}
			return s.Handle
		},
		GoodMessage: func(i int) streams.Message {
			account := fmt.Sprintf("acct-%d", i)
			data, _ := json.Marshal(accountEvent{Type: "created", Account: account, Generation: 1, At: time.Now().UTC()})
			return message(account, string(data))
		},
		PoisonMessage: func() streams.Message { return message("poison", `{"type":"created","account":`) },
		Effect: func(t *testing.T, _ *streamstest.Env, m streams.Message) int {
			var n int
			if err := check.QueryRow(t.Context(), `SELECT count(*) FROM audit_log WHERE account = $1`, m.Subject.Account).Scan(&n); err != nil {
				t.Fatalf("count audit rows: %v", err)
			}
			return n
		},
		// Each subtest's server numbers its stream from 1 again.
		Reset: func(t *testing.T, _ *streamstest.Env) {
			if _, err := check.Exec(t.Context(), `TRUNCATE audit_log`); err != nil {
				t.Fatal(err)
			}
		},
		BreakDependency: func(*testing.T) func() { return db.Break() },
	})
}

// A different event at a position already taken (the stream was re-created)
// is dead-lettered, not silently skipped as a duplicate; the same event
// again is acknowledged.
func TestSinkRefusesDifferentEventAtTakenPosition(t *testing.T) {
	dsn := testSchema(t)
	pool := newPool(t, dsn)
	sink, _ := NewSink(pool, nil)
	if err := sink.CreateTable(t.Context()); err != nil {
		t.Fatal(err)
	}
	msg := func(account string) *streams.Msg {
		data, _ := json.Marshal(accountEvent{Type: "created", Account: account, Generation: 1, At: time.Unix(1700000000, 0).UTC()})
		return &streams.Msg{Subject: streams.Subject{Kind: streams.KindAccounts, Account: account, Type: "created"}, Data: data, Stream: "ACCOUNTS_0", Sequence: 7}
	}
	for i, c := range []struct {
		m    *streams.Msg
		want streams.OutcomeKind
	}{{msg("acme"), streams.OutcomeAck}, {msg("acme"), streams.OutcomeAck}, {msg("globex"), streams.OutcomeDeadLetter}} {
		if out := sink.Handle(t.Context(), c.m); out.Kind != c.want {
			t.Errorf("call %d: %s, want %s", i, out, c.want)
		}
	}
}

// testSchema creates a schema for the test in the test database and returns
// a DSN whose search_path selects it. Postgres must run (`make postgres`).
func testSchema(t *testing.T) string {
	t.Helper()
	base := cmp.Or(os.Getenv("SHARDFLOW_TEST_DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	admin, err := pgx.Connect(t.Context(), base)
	if err != nil {
		t.Fatalf("cannot reach the test database %s (start one with `make postgres` or set SHARDFLOW_TEST_DATABASE_URL): %v", base, err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "auditsink_" + hex.EncodeToString(b)
	if _, err := admin.Exec(t.Context(), "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = admin.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
		_ = admin.Close(ctx)
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func newPool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// breakablePool is a pool whose database can be made unreachable: Break
// closes its connections and points new ones at a port nobody listens on,
// so every statement fails with "connection refused", as in a real outage.
type breakablePool struct {
	*pgxpool.Pool
	broken atomic.Bool
}

func newBreakablePool(t *testing.T, dsn string) *breakablePool {
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
	b := &breakablePool{}
	cfg.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
		if b.broken.Load() {
			cc.Host, cc.Port, cc.Fallbacks = "127.0.0.1", uint16(deadPort), nil
		}
		return nil
	}
	if b.Pool, err = pgxpool.NewWithConfig(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Pool.Close)
	return b
}

// Break makes the database unreachable and returns the function that
// brings it back.
func (b *breakablePool) Break() (restore func()) {
	b.broken.Store(true)
	b.Pool.Reset() // close every connection; checked-out ones close on release
	return func() { b.broken.Store(false) }
}
