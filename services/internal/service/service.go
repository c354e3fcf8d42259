package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow/services/internal/health"
	"github.com/shardflow/shardflow/services/internal/logging"
	"github.com/shardflow/shardflow/services/internal/natsconn"
	"github.com/shardflow/shardflow/services/internal/telemetry"
	"github.com/shardflow/shardflow/streams"
)

// Common is the configuration every service takes. Each field is a flag and
// a SHARDFLOW_* environment variable (kong tags).
type Common struct {
	NATSURL         string        `name:"nats-url" env:"SHARDFLOW_NATS_URL" default:"nats://127.0.0.1:14222" help:"NATS server URL(s), comma separated."`
	NATSUser        string        `name:"nats-user" env:"SHARDFLOW_NATS_USER" help:"NATS user name."`
	NATSPassword    string        `name:"nats-password" env:"SHARDFLOW_NATS_PASSWORD" help:"NATS password."`
	NATSNKeyFile    string        `name:"nats-nkey" env:"SHARDFLOW_NATS_NKEY_FILE" help:"File holding this service's NKey seed."`
	NATSInbox       string        `name:"nats-inbox" env:"SHARDFLOW_NATS_INBOX_PREFIX" help:"Custom inbox prefix (least-privilege setups)."`
	NATSTLSCA       string        `name:"nats-tls-ca" env:"SHARDFLOW_NATS_TLS_CA" help:"CA certificate (PEM) that signed the NATS servers' certificates."`
	NATSTLSCert     string        `name:"nats-tls-cert" env:"SHARDFLOW_NATS_TLS_CERT" help:"Client certificate (PEM) for servers that verify clients."`
	NATSTLSKey      string        `name:"nats-tls-key" env:"SHARDFLOW_NATS_TLS_KEY" help:"Client key (PEM) for --nats-tls-cert."`
	DatabaseURL     string        `name:"database-url" env:"SHARDFLOW_DATABASE_URL" default:"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable" help:"PostgreSQL DSN of the main database (accounts, deletion audit, dead-letter index; every shard's people, triggers and deliveries unless --shard-database-urls moves them)."`
	BrakeAbove      float64       `name:"brake-above" env:"SHARDFLOW_BRAKE_ABOVE" default:"0.9" help:"Stages: a shard's consumer slows to --brake-rate while more than this share of its recent messages ends dead-lettered (0: never), so a shard flooded with poison leaves the shared CPU and database to the others."`
	BrakeRate       float64       `name:"brake-rate" env:"SHARDFLOW_BRAKE_RATE" default:"200" help:"Stages: messages/s a braked shard's consumer fetches."`
	BrakeAnnounce   bool          `name:"brake-announce" env:"SHARDFLOW_BRAKE_ANNOUNCE" default:"true" negatable:"" help:"Stages: also judge each account by its own messages and announce the accounts nearly all of whose messages end dead-lettered, so ingest slows them at the source (needs --brake-above > 0)."`
	DBConnsPerShard int32         `name:"db-conns-per-shard" env:"SHARDFLOW_DB_CONNS_PER_SHARD" help:"Stages: connections of each consumed shard's own pool (default: 32 split over the consumed shards, at least 4)."`
	Shards          int           `name:"shards" env:"SHARDFLOW_SHARDS" default:"4" help:"Number of shards in the topology."`
	ConsumeShards   string        `name:"consume-shards" env:"SHARDFLOW_CONSUME_SHARDS" help:"Shards this instance consumes, e.g. 0,2 (default: all)."`
	MaxEventBytes   int           `name:"max-event-bytes" env:"SHARDFLOW_MAX_EVENT_BYTES" default:"32768" help:"THE size limit: largest event payload; every stream size derives from it."`
	Replicas        int           `name:"replicas" env:"SHARDFLOW_REPLICAS" default:"1" help:"Stream replicas (1 local, 3 production)."`
	HealthAddr      string        `name:"health-addr" env:"SHARDFLOW_HEALTH_ADDR" default:"127.0.0.1:0" help:"Address of /healthz, /readyz and /metrics."`
	LogLevel        string        `name:"log-level" env:"SHARDFLOW_LOG_LEVEL" default:"info" help:"debug, info, warn or error."`
	ShutdownTimeout time.Duration `name:"shutdown-timeout" env:"SHARDFLOW_SHUTDOWN_TIMEOUT" default:"15s" help:"Bound on a graceful stop."`

	// ShardDatabaseURLs moves shards' rows (people, triggers, deliveries)
	// to databases of their own; parsed by db.ParseShardDSNs.
	ShardDatabaseURLs string `name:"shard-database-urls" env:"SHARDFLOW_SHARD_DATABASE_URLS" help:"Shards whose people, triggers and deliveries live in a database of their own: N=DSN entries separated by ';', e.g. 0=postgres://pg-a/shard0;2=postgres://pg-b/shard2. Shards not listed use --database-url."`
}

// Topology is the topology this configuration describes.
func (c Common) Topology() streams.Topology {
	return streams.Topology{Shards: c.Shards, Replicas: c.Replicas, MaxEventBytes: c.MaxEventBytes}.WithDefaults()
}

// ShardList parses ConsumeShards (empty: every shard).
func (c Common) ShardList() ([]int, error) {
	if strings.TrimSpace(c.ConsumeShards) == "" {
		out := make([]int, c.Shards)
		for i := range out {
			out[i] = i
		}
		return out, nil
	}
	var out []int
	for _, f := range strings.Split(c.ConsumeShards, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 || n >= c.Shards {
			return nil, fmt.Errorf("consume-shards: %q is not a shard in 0..%d", f, c.Shards-1)
		}
		out = append(out, n)
	}
	return out, nil
}

// Env is a started service's shared state.
type Env struct {
	Name   string
	Config Common
	Log    *slog.Logger
	Tel    *telemetry.Telemetry
	NC     *nats.Conn
	JS     jetstream.JetStream
	Topo   streams.Topology
	Checks *health.Checks
	Meter  metric.Meter

	permViolations metric.Int64Counter
	healthLn       net.Listener
	closers        []func()
}

// onClose registers f to run at Close, before the connection is drained
// (last registered, first run).
func (e *Env) onClose(f func()) { e.closers = append(e.closers, f) }

// Start sets up logging, telemetry and the NATS connection, and checks the
// size limits against the server (refusing to start on a mismatch, naming
// both numbers). kinds are the stream kinds this service reads or writes.
func Start(ctx context.Context, name string, c Common, kinds ...streams.Kind) (*Env, error) {
	return start(ctx, name, c, nil, kinds)
}

// StartEdge is Start for a service that answers clients synchronously
// (ingest): while NATS is unreachable its publishes fail at once instead of
// waiting in the client's reconnect buffer and reaching the server after
// the client was already told they failed. A refusal then means "not
// stored" (except for the unavoidable case of an acknowledgement lost on
// the way back, which the client's retry with the same messageId covers).
func StartEdge(ctx context.Context, name string, c Common, kinds ...streams.Kind) (*Env, error) {
	return start(ctx, name, c, []nats.Option{nats.ReconnectBufSize(-1)}, kinds)
}

func start(ctx context.Context, name string, c Common, natsOpts []nats.Option, kinds []streams.Kind) (*Env, error) {
	level, err := logging.ParseLevel(c.LogLevel)
	if err != nil {
		return nil, err
	}
	log := logging.New(os.Stderr, level, name)
	slog.SetDefault(log)
	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: name})
	if err != nil {
		return nil, fmt.Errorf("%s: telemetry: %w", name, err)
	}
	e := &Env{Name: name, Config: c, Log: log, Tel: tel, Checks: &health.Checks{}, Topo: c.Topology()}
	e.Meter = tel.MeterProvider.Meter("github.com/shardflow/shardflow/services/" + name)
	e.permViolations, _ = e.Meter.Int64Counter("shardflow_nats_permission_violations", metric.WithDescription("Permission violations reported by the NATS server."))
	if err := e.Topo.Validate(); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	e.NC, err = natsconn.Connect(cctx, natsconn.Config{
		URL: c.NATSURL, Name: name, InboxPrefix: c.NATSInbox,
		User: c.NATSUser, Password: c.NATSPassword, NKeySeedFile: c.NATSNKeyFile,
		TLSCAFile: c.NATSTLSCA, TLSCertFile: c.NATSTLSCert, TLSKeyFile: c.NATSTLSKey,
		Logger: log, Options: natsOpts,
		OnPermissionViolation: func(err error) {
			e.permViolations.Add(context.Background(), 1, metric.WithAttributes(attribute.String("service", name)))
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	e.JS, err = jetstream.New(e.NC, jetstream.WithDefaultTimeout(5*time.Second))
	if err != nil {
		return nil, err
	}
	if len(kinds) > 0 {
		if err := streams.CheckLimits(cctx, e.JS, e.Topo, kinds...); err != nil {
			return nil, fmt.Errorf("%s refuses to start: %w", name, err)
		}
	}
	e.Checks.Add("nats", func(context.Context) error {
		if !e.NC.IsConnected() {
			return fmt.Errorf("nats: %s", e.NC.Status())
		}
		return nil
	})
	return e, nil
}

// Close releases what the service opened (directory, database pool), then
// drains the connection and flushes telemetry.
func (e *Env) Close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if e.NC != nil {
		_ = e.NC.Drain()
	}
	_ = e.Tel.Shutdown(ctx)
}

// Group runs actors until the first returns or a signal arrives, then stops
// them all (each actor must return once its context is cancelled).
type Group struct {
	actors []func(context.Context) error
	names  []string
}

// Add adds an actor.
func (g *Group) Add(name string, run func(ctx context.Context) error) {
	g.actors = append(g.actors, run)
	g.names = append(g.names, name)
}

// Run runs the group. It returns nil on a signal or a clean stop, or the
// first actor's error. After cancellation, actors get timeout to return.
func (g *Group) Run(ctx context.Context, log *slog.Logger, timeout time.Duration) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(g.actors))
	var wg sync.WaitGroup
	for i, run := range g.actors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := run(ctx)
			if err != nil && ctx.Err() == nil {
				err = fmt.Errorf("%s: %w", g.names[i], err)
			} else {
				err = nil
			}
			errs <- err
			cancel()
		}()
	}
	<-ctx.Done()
	log.Info("stopping", "timeout", timeout)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		return fmt.Errorf("actors did not stop within %v", timeout)
	}
	close(errs)
	var all []error
	for err := range errs {
		if err != nil {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

// ServeHealth listens on the health address and returns the actor serving
// /healthz, /readyz and /metrics. The bound address is logged (port 0 picks
// one) and written to SHARDFLOW_HEALTH_ADDR_FILE when set, for the local stack.
func (e *Env) ServeHealth() (func(context.Context) error, error) {
	return e.ServeHTTP("health", e.Config.HealthAddr, health.Handler(e.Checks, e.Tel.MetricsHandler))
}

// ServeHTTP listens on addr and returns an actor serving h until its context
// ends, then shutting down gracefully.
func (e *Env) ServeHTTP(name, addr string, h http.Handler) (func(context.Context) error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen %s: %w", name, addr, err)
	}
	e.Log.Info("listening", "what", name, "addr", ln.Addr().String())
	if name == "health" {
		e.healthLn = ln
		if f := os.Getenv("SHARDFLOW_HEALTH_ADDR_FILE"); f != "" {
			_ = os.WriteFile(f, []byte(ln.Addr().String()), 0o644)
		}
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	return func(ctx context.Context) error {
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ln) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		}
	}, nil
}

// HealthAddr is the bound health address (after ServeHealth).
func (e *Env) HealthAddr() string {
	if e.healthLn == nil {
		return ""
	}
	return e.healthLn.Addr().String()
}

// RunStage builds one streams.Consumer per shard for stage and returns an
// actor running them all, with their readiness registered.
func (e *Env) RunStage(ctx context.Context, stage string, gate streams.AccountGate, h streams.Handler, tune func(*streams.ConsumerConfig)) (func(context.Context) error, error) {
	shards, err := e.Config.ShardList()
	if err != nil {
		return nil, err
	}
	var consumers []*streams.Consumer
	for _, shard := range shards {
		cfg := streams.ConsumerConfig{
			JetStream: e.JS, Topology: e.Topo, Stage: stage, Shard: shard, Handler: h, Gate: gate,
			Logger: e.Log, TracerProvider: e.Tel.TracerProvider, MeterProvider: e.Tel.MeterProvider,
			StopTimeout: e.Config.ShutdownTimeout * 2 / 3,
			Brake:       streams.Brake{Above: e.Config.BrakeAbove, Rate: e.Config.BrakeRate, Announce: e.Config.BrakeAnnounce && e.Config.BrakeAbove > 0},
		}
		if tune != nil {
			tune(&cfg)
		}
		c, err := streams.NewConsumer(ctx, cfg)
		if err != nil {
			return nil, err
		}
		consumers = append(consumers, c)
		e.Checks.Add(fmt.Sprintf("%s-%d", stage, shard), func(context.Context) error { return c.Ready() })
	}
	return func(ctx context.Context) error {
		var wg sync.WaitGroup
		errs := make([]error, len(consumers))
		for i, c := range consumers {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = c.Run(ctx) }()
		}
		wg.Wait()
		return errors.Join(errs...)
	}, nil
}
