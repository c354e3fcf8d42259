package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

// NATS is an embedded nats-server with JetStream (file storage in a fresh
// temporary directory) and a client connection to it.
type NATS struct {
	Srv        *server.Server
	URL        string
	NC         *nats.Conn
	JS         jetstream.JetStream
	Topo       streams.Topology
	SyncAlways bool
	dir        string
}

// StartNATS starts a server and provisions topo on it.
func StartNATS(ctx context.Context, topo streams.Topology, syncAlways bool) (*NATS, error) {
	dir, err := os.MkdirTemp("", "shardflow-bench-js-")
	if err != nil {
		return nil, err
	}
	srv, err := natsembed.Run(natsembed.Config{StoreDir: dir, SyncAlways: syncAlways, ServerName: "shardflow-bench"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	n := &NATS{Srv: srv, URL: srv.ClientURL(), Topo: topo, SyncAlways: syncAlways, dir: dir}
	n.NC, err = nats.Connect(n.URL, nats.Name("bench"), nats.MaxReconnects(-1))
	if err != nil {
		n.Close()
		return nil, err
	}
	n.JS, err = jetstream.New(n.NC, jetstream.WithPublishAsyncMaxPending(1000))
	if err != nil {
		n.Close()
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := streams.Provision(pctx, n.JS, topo, nil); err != nil {
		n.Close()
		return nil, fmt.Errorf("provision: %w", err)
	}
	return n, nil
}

// Connect opens another client connection (each load generator or stage
// under test gets its own, as separate processes would).
func (n *NATS) Connect(name string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(n.URL, nats.Name(name), nats.MaxReconnects(-1))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1000))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// Msgs returns the number of messages stored in a stream.
func (n *NATS) Msgs(ctx context.Context, stream string) (uint64, error) {
	st, err := n.JS.Stream(ctx, stream)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// WaitMsgs polls a stream until cond holds for its message count.
func (n *NATS) WaitMsgs(ctx context.Context, stream string, every time.Duration, cond func(uint64) bool) (uint64, error) {
	for {
		m, err := n.Msgs(ctx, stream)
		if err == nil && cond(m) {
			return m, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("%s holds %d messages: %w", stream, m, ctx.Err())
			}
			return m, err
		case <-time.After(every):
		}
	}
}

// Close shuts the server down and removes its store.
func (n *NATS) Close() {
	if n.NC != nil {
		n.NC.Close()
	}
	if n.Srv != nil {
		n.Srv.Shutdown()
		n.Srv.WaitForShutdown()
	}
	os.RemoveAll(n.dir)
}

// DefaultDSN is the Postgres server the suite creates its databases in,
// unless SHARDFLOW_BENCH_DATABASE_URL (or SHARDFLOW_TEST_DATABASE_URL) names
// another.
const DefaultDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

func baseDSN() string {
	for _, k := range []string{"SHARDFLOW_BENCH_DATABASE_URL", "SHARDFLOW_TEST_DATABASE_URL"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return DefaultDSN
}

// Database is a fresh Postgres database, dropped by Close.
type Database struct {
	DSN   string
	Pool  *pgxpool.Pool
	name  string
	admin *pgxpool.Pool
}

// NewDatabase creates a database named sf_bench_<random>.
func NewDatabase(ctx context.Context) (*Database, error) {
	base := baseDSN()
	admin, err := pgxpool.New(ctx, base)
	if err == nil {
		err = admin.Ping(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("Postgres is not reachable at %s: %w (start it with `make postgres`, or set SHARDFLOW_BENCH_DATABASE_URL)", base, err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "sf_bench_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		admin.Close()
		return nil, fmt.Errorf("create database: %w", err)
	}
	u, err := url.Parse(base)
	if err != nil {
		admin.Close()
		return nil, err
	}
	u.Path = "/" + name
	d := &Database{DSN: u.String(), name: name, admin: admin}
	d.Pool, err = pgxpool.New(ctx, d.DSN)
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Count runs a counting query.
func (d *Database) Count(ctx context.Context, q string, args ...any) (int, error) {
	var n int
	err := d.Pool.QueryRow(ctx, q, args...).Scan(&n)
	return n, err
}

// Close drops the database.
func (d *Database) Close() {
	if d.Pool != nil {
		d.Pool.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = d.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+d.name+" WITH (FORCE)")
	d.admin.Close()
}

// machineCPU reads the machine's busy and total CPU time from /proc/stat
// (all cores, in clock ticks).
func machineCPU() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	for i, f := range fields[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// busyShare returns the share of the machine's CPU time that was busy
// while f ran.
func busyShare(f func()) float64 {
	b0, t0 := machineCPU()
	f()
	b1, t1 := machineCPU()
	if t1 <= t0 {
		return 0
	}
	return float64(b1-b0) / float64(t1-t0)
}
