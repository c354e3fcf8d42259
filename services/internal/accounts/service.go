package accounts

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/streams"
)

// Config configures the accounts service.
type Config struct {
	// Pool is the main database's pool (accounts, the deletion audit and
	// tombstones, the dead-letter index). Required.
	Pool *pgxpool.Pool
	// ShardPools gives each shard's pool on the database of its people,
	// triggers and deliveries (service.Env.OpenAllShardDatabases): a shard
	// without a database of its own must be given Pool itself, so its rows
	// go through the connection a transaction already holds. Nil: every
	// shard's rows are in Pool's database.
	ShardPools *db.Pools
	// JetStream is the client for the directory, lifecycle events, purges
	// and held-message release; its connection (JetStream.Conn()) sends the
	// purge requests. Required.
	JetStream jetstream.JetStream
	// Topology is the declared topology (shard count, streams and stage
	// consumers). Default streams.DefaultTopology().
	Topology streams.Topology
	// AdminToken is the bearer token the admin API requires. Required.
	AdminToken string
	// DeletionGrace is how long the saga waits after verification before
	// the second purge, which catches messages published during the race
	// with ingress closing. Default 2s.
	DeletionGrace time.Duration
	// ReleaseRecheck is how long after a restore the held messages are
	// released a second time, catching messages a stage parked while the
	// restore was spreading through the directory. Default 2s.
	ReleaseRecheck time.Duration
	// MaxConcurrentSagas bounds the deletion sagas running at once in this
	// instance, over all shards; more wait their turn (their events kept in
	// progress). Each running saga holds one pooled Postgres connection, so
	// keep it under the pool size. Default 2.
	MaxConcurrentSagas int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Meter creates the deletion metrics. Default: the global meter
	// provider's meter for this package.
	Meter metric.Meter
	// TracerProvider creates the publisher's spans. Default: the global one.
	TracerProvider trace.TracerProvider
	// AfterStep, when set, is called right after each saga step is
	// recorded. FOR TESTS ONLY: an error makes the saga stop there and the
	// event be retried (as a crash would); the accounts binary uses it to
	// exit when SHARDFLOW_TEST_CRASH_AFTER_STEP names the step.
	AfterStep func(ctx context.Context, account string, generation int64, step string) error
}

// Service is the accounts service: the admin API ([Service.Handler]) and the
// deletion saga ([Service.HandleEvent]). Create it with New; Close it to
// wait for its background work.
type Service struct {
	cfg  Config
	pool *pgxpool.Pool
	// shards gives each shard's pool (Pool itself for every shard when
	// Config.ShardPools is nil).
	shards *db.Pools
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	pub    *streams.Publisher
	topo   streams.Topology
	log    *slog.Logger
	met    *sagaMetrics
	// sagas holds a token per running saga (MaxConcurrentSagas).
	sagas chan struct{}
	// afterShardRowsDeleted, when set (tests only), is called between the
	// shard database's commit and the main one's in a row-deleting step.
	afterShardRowsDeleted func(step string) error

	bg       context.Context
	bgCancel context.CancelFunc
	bgWG     sync.WaitGroup
}

// New checks cfg and returns a Service. The directory bucket must have been
// provisioned (streams.Provision).
func New(ctx context.Context, cfg Config) (*Service, error) {
	switch {
	case cfg.Pool == nil:
		return nil, errors.New("accounts: Config.Pool is required")
	case cfg.JetStream == nil:
		return nil, errors.New("accounts: Config.JetStream is required")
	case cfg.AdminToken == "":
		return nil, errors.New("accounts: Config.AdminToken is required (the admin API refuses to run unauthenticated)")
	case cfg.DeletionGrace < 0, cfg.ReleaseRecheck < 0, cfg.MaxConcurrentSagas < 0:
		return nil, errors.New("accounts: DeletionGrace, ReleaseRecheck and MaxConcurrentSagas cannot be negative")
	}
	if cfg.Topology.Shards == 0 {
		cfg.Topology = streams.DefaultTopology()
	}
	if err := cfg.Topology.Validate(); err != nil {
		return nil, fmt.Errorf("accounts: %w", err)
	}
	cfg.DeletionGrace = cmp.Or(cfg.DeletionGrace, 2*time.Second)
	cfg.ReleaseRecheck = cmp.Or(cfg.ReleaseRecheck, 2*time.Second)
	cfg.MaxConcurrentSagas = cmp.Or(cfg.MaxConcurrentSagas, 2)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Meter == nil {
		cfg.Meter = otel.GetMeterProvider().Meter("github.com/shardflow/shardflow/services/internal/accounts")
	}
	kv, err := streams.DirectoryKV(ctx, cfg.JetStream)
	if err != nil {
		return nil, fmt.Errorf("accounts: %w", err)
	}
	pub, err := streams.NewPublisher(streams.PublisherConfig{JetStream: cfg.JetStream, Topology: cfg.Topology, TracerProvider: cfg.TracerProvider})
	if err != nil {
		return nil, fmt.Errorf("accounts: %w", err)
	}
	met, err := newSagaMetrics(cfg.Meter)
	if err != nil {
		return nil, fmt.Errorf("accounts: metrics: %w", err)
	}
	shards := cfg.ShardPools
	if shards == nil {
		shards = db.SharedPool(cfg.Pool)
	}
	bg, cancel := context.WithCancel(context.Background())
	return &Service{
		cfg: cfg, pool: cfg.Pool, shards: shards, js: cfg.JetStream, kv: kv, pub: pub, topo: cfg.Topology,
		log: cfg.Logger.With("component", "accounts"), met: met, sagas: make(chan struct{}, cfg.MaxConcurrentSagas),
		bg: bg, bgCancel: cancel,
	}, nil
}

// Close stops the background work (the second release sweep after a
// restore) and waits for it.
func (s *Service) Close() {
	s.bgCancel()
	s.bgWG.Wait()
}

// Error is a failure with its HTTP status; Message names the field or limit.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return e.Message }

func errorf(status int, format string, args ...any) error {
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

// putDirectory writes an account's directory entry.
func (s *Service) putDirectory(ctx context.Context, a row) error {
	if err := streams.PutAccount(ctx, s.kv, a.directoryEntry()); err != nil {
		return fmt.Errorf("directory: %w", err)
	}
	return nil
}

// publishEvent publishes a lifecycle event. key distinguishes repeatable
// events (suspend, restore) inside one generation; "" uses the type alone.
func (s *Service) publishEvent(ctx context.Context, a row, typ, key string) error {
	ev := schemas.AccountEvent{Type: typ, Account: a.ID, Shard: a.Shard, Generation: a.Generation, At: time.Now().UTC()}
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	sub, err := streams.NewSubject(streams.KindAccounts, a.Shard, a.ID, typ)
	if err != nil {
		return fmt.Errorf("lifecycle event: %w", err)
	}
	_, err = s.pub.Publish(ctx, streams.Message{
		Subject: sub, ID: streams.MessageID(a.ID, a.Generation, cmp.Or(key, typ)), Generation: a.Generation, Data: data,
	})
	if err != nil {
		return fmt.Errorf("publish %s event of %s: %w", typ, a.ID, err)
	}
	return nil
}

// inTx runs fn in a transaction on q's pool or connection.
func inTx(ctx context.Context, q txBeginner, fn func(tx pgx.Tx) error) error {
	tx, err := q.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// txBeginner is what a pool and a pooled connection offer to run a
// transaction.
type txBeginner interface {
	Begin(context.Context) (pgx.Tx, error)
}

// shardPool returns the pool of the database holding shard's people,
// triggers and deliveries, and whether it is the main pool itself (every
// shard in the main database, Config.ShardPools nil): then a caller holding
// a main connection must use that connection, not take a second one from
// the same pool (enough callers doing that at once would exhaust it and
// wait for each other for ever).
func (s *Service) shardPool(shard int) (pool *pgxpool.Pool, isMain bool) {
	p := s.shards.For(shard)
	return p, p == s.pool
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// newWriteKey returns wk_ followed by 32 random hex characters.
func newWriteKey() string { return "wk_" + randomHex(16) }

// newSecret returns a webhook signing secret: 32 random bytes, hex.
func newSecret() string { return randomHex(32) }

// SyncDirectory makes the directory match Postgres: every account whose
// entry is missing or differs is written again. Run it at start-up; it heals
// a directory write lost to a crash between a commit and the Put. It returns
// how many entries it wrote.
func (s *Service) SyncDirectory(ctx context.Context) (int, error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM accounts ORDER BY id`)
	if err != nil {
		return 0, fmt.Errorf("accounts: sync directory: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("accounts: sync directory: %w", err)
	}
	n := 0
	for _, id := range ids {
		err := inTx(ctx, s.pool, func(tx pgx.Tx) error {
			a, err := getAccount(ctx, tx, id, "FOR UPDATE")
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			if err != nil {
				return err
			}
			if s.directoryMatches(ctx, a) {
				return nil
			}
			n++
			return s.putDirectory(ctx, a)
		})
		if err != nil {
			return n, fmt.Errorf("accounts: sync directory: %w", err)
		}
	}
	return n, nil
}

func (s *Service) directoryMatches(ctx context.Context, a row) bool {
	e, err := s.kv.Get(ctx, a.ID)
	if err != nil {
		return false
	}
	var have streams.Account
	if json.Unmarshal(e.Value(), &have) != nil {
		return false
	}
	want := a.directoryEntry()
	return have.Shard == want.Shard && have.Status == want.Status && have.Generation == want.Generation &&
		have.WriteKey == want.WriteKey && have.Secret == want.Secret && have.RateLimit == want.RateLimit
}

// StaleAfter is the age from which CheckDeletions reports an unfinished
// deletion.
const StaleAfter = time.Minute

// CheckDeletions is run at start-up. It logs every deletion that is
// unfinished and older than StaleAfter, and publishes its deleted event again
// (same Nats-Msg-Id, so a no-op inside the duplicate window): normally the
// unacknowledged event is redelivered and resumes the saga by itself, but a
// crash between the DELETE's commit and its publish, or an event that was
// dead-lettered, would otherwise leave the deletion stuck. It returns how
// many deletions it found.
func (s *Service) CheckDeletions(ctx context.Context) (int, error) {
	rows, err := s.pool.Query(ctx, `SELECT account_id, generation, step, started_at FROM account_deletions
		WHERE finished_at IS NULL AND started_at < now() - $1::interval ORDER BY started_at`,
		fmt.Sprintf("%d milliseconds", StaleAfter.Milliseconds()))
	if err != nil {
		return 0, fmt.Errorf("accounts: check deletions: %w", err)
	}
	type stale struct {
		id      string
		gen     int64
		step    string
		started time.Time
	}
	var all []stale
	for rows.Next() {
		var st stale
		if err := rows.Scan(&st.id, &st.gen, &st.step, &st.started); err != nil {
			rows.Close()
			return 0, fmt.Errorf("accounts: check deletions: %w", err)
		}
		all = append(all, st)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("accounts: check deletions: %w", err)
	}
	var errs []error
	for _, st := range all {
		s.log.WarnContext(ctx, "unfinished account deletion; its deleted event resumes it",
			"account", st.id, "generation", st.gen, "step", st.step, "started_at", st.started, "age", time.Since(st.started).Round(time.Second))
		a, err := getAccount(ctx, s.pool, st.id, "")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		a.Generation = st.gen
		if err := s.publishEvent(ctx, a, schemas.AccountDeleted, ""); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return len(all), fmt.Errorf("accounts: check deletions: %w", err)
	}
	return len(all), nil
}
