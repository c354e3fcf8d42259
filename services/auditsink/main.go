// Command auditsink writes every account lifecycle event (created,
// suspended, restored, deleted) into a Postgres table, audit_log, that it
// creates itself.
//
// It is the example consumer of shardflow: the template a service team
// copies to run a consumer of its own. It is written only against the
// public streams package, the standard library, pgx, kong and OpenTelemetry
// (no import of the repository's internal packages), and it passes the
// consumer contract suite (contract_test.go, package streamstest).
//
// # What it reads
//
// Consumer "auditsink" (its declaration is the --consumer flag) on
// ACCOUNTS_n, every shard. ACCOUNTS_n keeps history (limits retention), so
// this consumer reads every event beside the accounts service's own
// consumer; a consumer of its own must never read INBOUND_n or OUTBOUND_n,
// whose work-queue retention gives each message to one stage only. No
// account gate: the events of deleted accounts are exactly what an audit
// log must keep.
//
// # What it guarantees
//
// Each event becomes one row keyed by (stream, seq), inserted with ON
// CONFLICT DO NOTHING: delivery is at least once, the effect exactly once.
// An event that cannot be decoded is dead-lettered at once
// (streams.DeadLetter, class undecodable); while Postgres is unreachable the
// stage holds its events (streams.Unavailable), reports not ready and uses
// no delivery attempt; on SIGTERM it stops fetching, lets in-flight inserts
// finish (two thirds of --shutdown-timeout) and exits.
//
// # Running it
//
//	auditsink --nats-url nats://127.0.0.1:14222 --database-url postgres://postgres@127.0.0.1:5432/postgres
//
// Every flag has an environment variable (--help lists them): the
// platform's settings are SHARDFLOW_* (they must match the deployed
// topology), the sink's own are AUDITSINK_*. /healthz answers while the
// process runs, /readyz while the stage fetches and Postgres answers,
// /metrics serves Prometheus (shardflow_stage_* per shard, and
// auditsink_rows_inserted_total). Traces go to OTEL_EXPORTER_OTLP_ENDPOINT.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
)

// config is the sink's whole configuration.
type config struct {
	// The platform's settings: they must match the deployed topology.
	NATSURL       string `name:"nats-url" env:"SHARDFLOW_NATS_URL" default:"nats://127.0.0.1:14222" help:"NATS server URL(s), comma separated."`
	NATSNKeyFile  string `name:"nats-nkey" env:"SHARDFLOW_NATS_NKEY_FILE" help:"File holding this service's NKey seed (deploy/nats: one user per service)."`
	NATSInbox     string `name:"nats-inbox" env:"SHARDFLOW_NATS_INBOX_PREFIX" help:"Inbox prefix this user may subscribe to, e.g. _INBOX_auditsink (least-privilege setups)."`
	NATSCreds     string `name:"nats-creds" env:"SHARDFLOW_NATS_CREDS" help:"NATS credentials file (JWT and NKey seed)."`
	NATSUser      string `name:"nats-user" env:"SHARDFLOW_NATS_USER" help:"NATS user name."`
	NATSPassword  string `name:"nats-password" env:"SHARDFLOW_NATS_PASSWORD" help:"NATS password."`
	NATSTLSCA     string `name:"nats-tls-ca" env:"SHARDFLOW_NATS_TLS_CA" help:"CA certificate (PEM) of the NATS servers."`
	NATSTLSCert   string `name:"nats-tls-cert" env:"SHARDFLOW_NATS_TLS_CERT" help:"Client certificate (PEM), for servers that verify clients."`
	NATSTLSKey    string `name:"nats-tls-key" env:"SHARDFLOW_NATS_TLS_KEY" help:"Client certificate's key (PEM)."`
	Shards        int    `name:"shards" env:"SHARDFLOW_SHARDS" default:"4" help:"Number of shards in the topology."`
	Replicas      int    `name:"replicas" env:"SHARDFLOW_REPLICAS" default:"1" help:"Stream replicas (1 local, 3 production)."`
	MaxEventBytes int    `name:"max-event-bytes" env:"SHARDFLOW_MAX_EVENT_BYTES" default:"32768" help:"The platform's size limit; the sink refuses to start if the streams disagree."`

	// The sink's own settings.
	Consumer        string        `name:"consumer" env:"AUDITSINK_CONSUMER" default:"auditsink:accounts:max_deliver=10" help:"This consumer's declaration, name:kind[:max_deliver=N][:backoff=1s/5s/30s][:max_ack_pending=N]; the kind must be accounts."`
	Provision       bool          `name:"provision" env:"AUDITSINK_PROVISION" default:"true" negatable:"" help:"Create or update the consumer on every shard at start-up (needs consumer-create permission on ACCOUNTS_n); --no-provision where an operator declares it (sfctl provision)."`
	ConsumeShards   []int         `name:"consume-shards" env:"AUDITSINK_CONSUME_SHARDS" help:"Shards this instance consumes, e.g. 0,2 (default: all)."`
	Concurrency     int           `name:"concurrency" env:"AUDITSINK_CONCURRENCY" default:"8" help:"Inserts in flight per shard."`
	DatabaseURL     string        `name:"database-url" env:"AUDITSINK_DATABASE_URL" default:"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable" help:"Postgres DSN; audit_log is created in its search_path."`
	HealthAddr      string        `name:"health-addr" env:"AUDITSINK_HEALTH_ADDR" default:"127.0.0.1:8095" help:"Address of /healthz, /readyz and /metrics."`
	ShutdownTimeout time.Duration `name:"shutdown-timeout" env:"AUDITSINK_SHUTDOWN_TIMEOUT" default:"15s" help:"Bound on a graceful stop."`
	LogLevel        slog.Level    `name:"log-level" env:"AUDITSINK_LOG_LEVEL" default:"info" help:"debug, info, warn or error."`
}

func main() {
	var cfg config
	kong.Parse(&cfg, kong.Name("auditsink"), kong.UsageOnError(),
		kong.Description("Write every shardflow account lifecycle event into Postgres (audit_log)."))
	log := slog.New(traceLog{slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel})}).With("service", "auditsink")
	slog.SetDefault(log)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); stop() }() // a second signal kills at once

	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("auditsink failed", "err", err)
		os.Exit(1)
	}
}

// run runs the sink until ctx ends, then stops it gracefully. listening,
// when set, is told the health address once it is bound.
func run(ctx context.Context, cfg config, log *slog.Logger, listening func(addr string)) error {
	spec, err := streams.ParseConsumerSpec(cfg.Consumer)
	if err != nil {
		return err
	}
	if spec.Kind != streams.KindAccounts {
		return fmt.Errorf("--consumer %q: the audit sink reads account lifecycle events: the kind must be %s", cfg.Consumer, streams.KindAccounts)
	}
	// Declare the consumer beside the platform's own.
	topo := streams.Topology{
		Shards: cfg.Shards, Replicas: cfg.Replicas, MaxEventBytes: cfg.MaxEventBytes,
		Consumers: append(streams.DefaultConsumers(), spec),
	}.WithDefaults()
	if err := topo.Validate(); err != nil {
		return err
	}

	tel, err := setupTelemetry(ctx, "auditsink")
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tel.shutdown(sctx); err != nil {
			log.Warn("telemetry flush", "err", err)
		}
	}()

	nc, err := connect(cfg, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if cfg.Provision {
		rep, err := streams.ProvisionConsumer(ctx, js, topo, spec.Name, nil)
		if err != nil {
			return fmt.Errorf("declare consumer %s: %w", spec.Name, err)
		}
		for _, ch := range rep.Changes {
			log.Info("consumer declared", "stream", ch.Stream, "consumer", ch.Consumer, "action", ch.Action, "diff", ch.Diff)
		}
	}

	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer pool.Close()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = pool.Ping(pctx)
	cancel()
	if err != nil {
		return fmt.Errorf("postgres: cannot connect (is it running? --database-url): %w", err)
	}
	sink, err := NewSink(pool, tel.mp.Meter("github.com/shardflow/shardflow/services/auditsink"))
	if err != nil {
		return err
	}
	if err := sink.CreateTable(ctx); err != nil {
		return err
	}

	stage, err := streams.NewStage(ctx, streams.StageConfig{
		Conn: nc, JetStream: js, Topology: topo, Stage: spec.Name, Shards: cfg.ConsumeShards,
		Handler: sink.Handle, Concurrency: cfg.Concurrency,
		StopTimeout: cfg.ShutdownTimeout * 2 / 3,
		Logger:      log, TracerProvider: tel.tp, MeterProvider: tel.mp,
	})
	if err != nil {
		return err
	}
	defer stage.Close()

	ln, err := net.Listen("tcp", cfg.HealthAddr)
	if err != nil {
		return fmt.Errorf("health endpoint: %w", err)
	}
	srv := &http.Server{Handler: healthHandler(stage, pool, tel.metrics), ReadHeaderTimeout: 10 * time.Second}
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String())
	if listening != nil {
		listening(ln.Addr().String())
	}

	ctx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	stageDone := make(chan error, 1)
	go func() { stageDone <- stage.Run(ctx) }()
	log.Info("auditsink running", "consumer", spec.Name, "kind", spec.Kind, "shards", stage.Shards())

	var errs []error
	select {
	case <-ctx.Done():
		log.Info("stopping: fetching stopped, finishing in-flight inserts", "timeout", cfg.ShutdownTimeout)
	case err := <-httpDone:
		errs = append(errs, fmt.Errorf("health endpoint: %w", err))
		cancelRun()
	case err := <-stageDone:
		stageDone <- err
		errs = append(errs, fmt.Errorf("stage stopped on its own: %v", err))
		cancelRun()
	}
	select {
	case err := <-stageDone:
		errs = append(errs, err)
	case <-time.After(cfg.ShutdownTimeout):
		errs = append(errs, fmt.Errorf("stage did not stop within %v", cfg.ShutdownTimeout))
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		errs = append(errs, err)
	}
	if err := nc.FlushTimeout(2 * time.Second); err != nil { // the last acks
		log.Warn("flush acks", "err", err)
	}
	log.Info("stopped")
	return errors.Join(errs...)
}

// connect connects to NATS, reconnecting for ever. A publish or an ack the
// server refuses for permissions only shows up here (the client sees a
// timeout), so such errors are logged.
func connect(cfg config, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("auditsink"),
		nats.MaxReconnects(-1),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Error("nats error", "err", err)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("nats disconnected", "err", err) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("nats reconnected", "url", nc.ConnectedUrl()) }),
	}
	switch {
	case cfg.NATSNKeyFile != "":
		opt, err := nats.NkeyOptionFromSeed(cfg.NATSNKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats: nkey seed %s: %w", cfg.NATSNKeyFile, err)
		}
		opts = append(opts, opt)
	case cfg.NATSCreds != "":
		opts = append(opts, nats.UserCredentials(cfg.NATSCreds))
	case cfg.NATSUser != "":
		opts = append(opts, nats.UserInfo(cfg.NATSUser, cfg.NATSPassword))
	}
	if cfg.NATSInbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(cfg.NATSInbox))
	}
	if cfg.NATSTLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.NATSTLSCA))
	}
	if cfg.NATSTLSCert != "" {
		opts = append(opts, nats.ClientCert(cfg.NATSTLSCert, cfg.NATSTLSKey))
	}
	nc, err := nats.Connect(cfg.NATSURL, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats: connect %s: %w", cfg.NATSURL, err)
	}
	return nc, nil
}

// healthHandler serves /healthz (the process runs: liveness), /readyz (the
// stage fetches and Postgres answers: readiness; a database outage makes
// it 503 without restarting anything) and /metrics.
func healthHandler(stage *streams.Stage, pool *pgxpool.Pool, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		var errs []error
		if err := stage.Ready(); err != nil {
			errs = append(errs, err)
		}
		if err := pool.Ping(ctx); err != nil {
			errs = append(errs, fmt.Errorf("postgres: %w", err))
		}
		if err := errors.Join(errs...); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", metrics)
	return mux
}
