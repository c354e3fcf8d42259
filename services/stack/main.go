package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

// Config is the stack's configuration. Every field is a flag with a
// SHARDFLOW_* environment variable.
type Config struct {
	NATSPort      int           `name:"nats-port" env:"SHARDFLOW_NATS_PORT" default:"14222" help:"Port of the embedded NATS server (not 4222, so a system nats-server does not clash)."`
	DataDir       string        `name:"data-dir" env:"SHARDFLOW_DATA_DIR" help:"Where the stack keeps JetStream data, binaries and health files (default: <repo root>/.shardflow)."`
	DatabaseURL   string        `name:"database-url" env:"SHARDFLOW_DATABASE_URL" default:"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable" help:"PostgreSQL DSN (make postgres starts a local one)."`
	Shards        int           `name:"shards" env:"SHARDFLOW_SHARDS" default:"4" help:"Number of shards."`
	MaxEventBytes int           `name:"max-event-bytes" env:"SHARDFLOW_MAX_EVENT_BYTES" default:"32768" help:"THE size limit: largest event payload (the topology and every service use it)."`
	AdminToken    string        `name:"admin-token" env:"SHARDFLOW_ADMIN_TOKEN" default:"dev-admin-token" help:"Bearer token of the admin API."`
	IngestAddr    string        `name:"ingest-addr" env:"SHARDFLOW_INGEST_ADDR" default:"127.0.0.1:8080" help:"Address of the tracking API (ingest)."`
	AdminAddr     string        `name:"admin-addr" env:"SHARDFLOW_ADMIN_ADDR" default:"127.0.0.1:8081" help:"Address of the admin API (accounts)."`
	SinkAddr      string        `name:"sink-addr" env:"SHARDFLOW_SINK_ADDR" default:"127.0.0.1:8090" help:"Address of the built-in webhook sink."`
	Rate          int           `name:"rate" env:"SHARDFLOW_DEMO_RATE" default:"40" help:"Demo events per second per demo account (0: no demo traffic)."`
	ViewInterval  time.Duration `name:"view-interval" env:"SHARDFLOW_VIEW_INTERVAL" default:"3s" help:"How often the per-shard view is printed."`
	Verbose       bool          `name:"verbose" short:"v" env:"SHARDFLOW_VERBOSE" help:"Print every log line of every service (default: warnings, errors and listening lines)."`
	Duration      time.Duration `name:"duration" env:"SHARDFLOW_DURATION" default:"0" help:"Stop by itself after running this long once up (0: until Ctrl-C)."`
	JaegerUI      string        `name:"jaeger-ui" env:"SHARDFLOW_JAEGER_UI" default:"http://127.0.0.1:16686" help:"Jaeger UI link printed when OTEL_EXPORTER_OTLP_ENDPOINT is set."`
	NoJaeger      bool          `name:"no-jaeger" env:"SHARDFLOW_NO_JAEGER" help:"Do not start a jaeger binary found on PATH."`
	ReadyTimeout  time.Duration `name:"ready-timeout" env:"SHARDFLOW_READY_TIMEOUT" default:"90s" help:"How long each service may take to become ready."`
	StopTimeout   time.Duration `name:"stop-timeout" env:"SHARDFLOW_STOP_TIMEOUT" default:"20s" help:"How long services get to stop after SIGTERM before SIGKILL."`

	// Out receives every user-facing line. Default os.Stdout.
	Out io.Writer `kong:"-"`
	// Kill, when closed, kills every process at once (a second Ctrl-C).
	Kill <-chan struct{} `kong:"-"`
}

// serviceNames are the long-running services, in start order. sfctl is built
// too, for the user.
var (
	serviceNames = []string{"accounts", "ingest", "processor", "sender", "deadletter"}
	buildNames   = []string{"ingest", "processor", "sender", "accounts", "deadletter", "sfctl"}
)

func main() {
	var cfg Config
	kong.Parse(&cfg,
		kong.Name("stack"),
		kong.Description("Run the whole shardflow pipeline locally: embedded NATS, migrations, every service as a process, demo accounts and traffic, and a live per-shard view."))
	level := slog.LevelWarn
	if cfg.Verbose {
		level = slog.LevelInfo
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kill := make(chan struct{})
	cfg.Kill = kill
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Println("\n==> stopping (Ctrl-C again to kill everything at once)")
		cancel()
		<-sigs
		fmt.Println("\n==> killing every process")
		close(kill)
		time.Sleep(3 * time.Second) // run returns well before this
		os.Exit(130)
	}()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "stack:", err)
		os.Exit(1)
	}
	select {
	case <-kill:
		os.Exit(130) // killed, not stopped
	default:
	}
}

// run runs the stack until ctx ends, cfg.Duration passes or a service dies.
// It returns nil after a requested stop.
func run(ctx context.Context, cfg Config) (err error) {
	t0 := time.Now()
	if err := cfg.resolve(); err != nil {
		return err
	}
	con := newConsole(cfg.Out)
	level := slog.LevelWarn
	if cfg.Verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(con.writer("stack"), &slog.HandlerOptions{Level: level}))

	// Deferred calls run last-in first-out: the goodbye line is the last
	// thing printed, after NATS is down.
	defer func() {
		if err == nil {
			con.step("goodbye: shardflow stopped after %s; data kept in %s", time.Since(t0).Round(time.Second), cfg.DataDir)
		}
	}()
	// A requested stop (ctx ended) is not an error, whatever step it
	// interrupted.
	parent := ctx
	defer func() {
		if err != nil && parent.Err() != nil {
			con.step("stopped before it was up (%v)", err)
			err = nil
		}
	}()

	// The run context ends with the caller's, or on a hard kill.
	ctx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	sup := newSupervisor(con, cfg.Verbose)
	runDone := make(chan struct{})
	defer close(runDone)
	go func() {
		select {
		case <-cfg.Kill:
			sup.killAll()
			cancelRun()
		case <-runDone:
		}
	}()

	if err := checkPorts(cfg); err != nil {
		return err
	}

	topo := streams.Topology{Shards: cfg.Shards, MaxEventBytes: cfg.MaxEventBytes}.WithDefaults()
	if err := topo.Validate(); err != nil {
		return fmt.Errorf("topology: %w", err)
	}

	// 1. NATS, with a max_payload that carries the topology's largest message.
	natsDir := filepath.Join(cfg.DataDir, "nats")
	con.step("starting NATS with JetStream on nats://127.0.0.1:%d (data in %s)", cfg.NATSPort, natsDir)
	srv, err := natsembed.Run(natsembed.Config{Port: cfg.NATSPort, StoreDir: natsDir, MaxPayload: int32(max(1<<20, topo.RequiredMaxPayload()))})
	if err != nil {
		return fmt.Errorf("start NATS: %w", err)
	}
	defer func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	natsURL := srv.ClientURL()
	nc, err := nats.Connect(natsURL, nats.Name("shardflow-stack"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	// 2. Postgres.
	con.step("migrating Postgres at %s", describeDSN(cfg.DatabaseURL))
	if err := db.Migrate(ctx, cfg.DatabaseURL); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}

	// 3. Streams.
	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	rep, err := streams.Provision(pctx, js, topo, nil)
	cancel()
	if err != nil {
		return fmt.Errorf("provision streams (if %s was made with other settings, delete it to start afresh): %w", natsDir, err)
	}
	con.step("provisioned %d shards (%d streams, %d consumers): %s", cfg.Shards, len(topo.StreamNames()),
		len(topo.Consumers)*cfg.Shards, lastLine(rep.String()))

	// 4. Traces.
	tr := setupTraces(ctx, cfg, con, sup)
	if tr.proc != nil {
		defer sup.stop(tr.proc, 5*time.Second)
	}

	// 5. The webhook sink (it reads webhook secrets from the directory).
	dir, err := streams.OpenDirectory(ctx, js, log)
	if err != nil {
		return fmt.Errorf("open account directory: %w", err)
	}
	defer dir.Close()
	sk := newSink(dir, cfg.Shards, log)
	sinkURL, stopSink, err := sk.serve(cfg.SinkAddr)
	if err != nil {
		return err
	}
	defer stopSink()
	con.step("webhook sink listening on %s/hook (checks Shardflow-Signature, counts deliveries)", sinkURL)

	// 6. Services.
	binDir := filepath.Join(cfg.DataDir, "bin")
	con.step("building %s into %s", strings.Join(buildNames, ", "), binDir)
	if err := buildServices(ctx, servicesDir(), binDir); err != nil {
		return err
	}
	base := []string{
		"SHARDFLOW_NATS_URL=" + natsURL,
		"SHARDFLOW_DATABASE_URL=" + cfg.DatabaseURL,
		"SHARDFLOW_SHARDS=" + strconv.Itoa(cfg.Shards),
		"SHARDFLOW_MAX_EVENT_BYTES=" + strconv.Itoa(topo.MaxEventBytes),
		"SHARDFLOW_ADMIN_TOKEN=" + cfg.AdminToken,
		"SHARDFLOW_HEALTH_ADDR=127.0.0.1:0",
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + tr.endpoint, // empty: no export
	}
	defer sup.stopServices(cfg.StopTimeout)
	con.step("starting %s (admin token %q)", strings.Join(serviceNames, ", "), cfg.AdminToken)
	svc := map[string]*proc{}
	for _, name := range serviceNames {
		env := append([]string(nil), base...)
		switch name {
		case "ingest":
			env = append(env, "SHARDFLOW_INGEST_ADDR="+cfg.IngestAddr)
		case "accounts":
			env = append(env, "SHARDFLOW_ADMIN_ADDR="+cfg.AdminAddr)
		}
		healthFile := filepath.Join(cfg.DataDir, name+".health")
		env = append(env, "SHARDFLOW_HEALTH_ADDR_FILE="+healthFile)
		p, err := sup.start(name, filepath.Join(binDir, name), env, healthFile, true)
		if err != nil {
			return err
		}
		svc[name] = p
	}
	if err := sup.waitReady(ctx, cfg.ReadyTimeout); err != nil {
		return err
	}
	con.step("all services ready, %s after start", time.Since(t0).Round(100*time.Millisecond))

	// 7. Demo accounts.
	admin := &adminClient{base: "http://" + cfg.AdminAddr, token: cfg.AdminToken}
	accts, err := setupDemo(ctx, con, admin, dir, cfg.Shards, sinkURL+"/hook")
	if err != nil {
		return err
	}

	// 8. Traffic, 9. the view.
	traffic := newTraffic("http://"+cfg.IngestAddr, accts, cfg.Rate, cfg.Shards, con)
	v := &view{cfg: cfg, con: con, js: js, topo: topo, sink: sk, traffic: traffic, services: svc, start: time.Now()}
	v.header(natsURL, sinkURL, tr, accts)
	bg, stopBG := context.WithCancel(ctx)
	var bgWG sync.WaitGroup
	bgWG.Go(func() { traffic.run(bg) })
	bgWG.Go(func() { v.run(bg) })
	defer func() { stopBG(); bgWG.Wait() }()

	var timeout <-chan time.Time
	if cfg.Duration > 0 {
		tm := time.NewTimer(cfg.Duration)
		defer tm.Stop()
		timeout = tm.C
	}
	var runErr error
	select {
	case <-ctx.Done():
	case <-timeout:
		con.step("ran for --duration %s: stopping", cfg.Duration)
	case p := <-sup.exited:
		runErr = fmt.Errorf("%s exited unexpectedly: %w", p.name, p.exitError())
		con.step("%s exited unexpectedly (%v)", p.name, p.exitError())
		p.printHidden(30)
	}

	// 10. Stop: traffic first, then the services, then (deferred) the sink,
	// the directory, NATS.
	stopBG()
	bgWG.Wait()
	select {
	case <-cfg.Kill:
		return runErr // everything is dead already
	default:
	}
	v.print(context.WithoutCancel(ctx)) // one last look, while everything still runs
	con.step("stopping services: SIGTERM, SIGKILL after %s", cfg.StopTimeout)
	sup.stopServices(cfg.StopTimeout)
	if tr.proc != nil {
		sup.stop(tr.proc, 5*time.Second)
	}
	v.totals()
	return runErr
}

// resolve fills in defaults and checks the configuration.
func (c *Config) resolve() error {
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.Shards < 1 {
		return fmt.Errorf("--shards must be at least 1, not %d", c.Shards)
	}
	if c.Rate < 0 {
		return fmt.Errorf("--rate must not be negative")
	}
	if c.ViewInterval <= 0 {
		c.ViewInterval = 3 * time.Second
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = 90 * time.Second
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = 20 * time.Second
	}
	if c.NATSPort == 0 {
		c.NATSPort = 14222
	}
	if c.DatabaseURL == "" {
		c.DatabaseURL = db.DSNFromEnv()
	}
	if c.AdminToken == "" {
		c.AdminToken = "dev-admin-token"
	}
	if c.DataDir == "" {
		c.DataDir = filepath.Join(repoRoot(), ".shardflow")
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	c.DataDir = abs
	if err := os.MkdirAll(c.DataDir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	return nil
}

// checkPorts fails early, with a clear message, when an address the stack
// needs is taken (a stack already running, say).
func checkPorts(cfg Config) error {
	addrs := []struct{ what, addr, flag string }{
		{"NATS", net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.NATSPort)), "--nats-port"},
		{"tracking API (ingest)", cfg.IngestAddr, "--ingest-addr"},
		{"admin API (accounts)", cfg.AdminAddr, "--admin-addr"},
		{"webhook sink", cfg.SinkAddr, "--sink-addr"},
	}
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a.addr)
		if err != nil {
			return fmt.Errorf("%s address %s is not free (is a stack already running?); choose another with %s: %w", a.what, a.addr, a.flag, err)
		}
		_ = ln.Close()
	}
	return nil
}

// repoRoot is the directory holding go.work, found by walking up from the
// working directory; the working directory itself when there is none.
func repoRoot() string {
	wd, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := wd; ; {
		if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
			return d
		}
		parent := filepath.Dir(d)
		if parent == d {
			return wd
		}
		d = parent
	}
}

// servicesDir is the services module's directory, where the binaries are
// built from.
func servicesDir() string {
	root := repoRoot()
	if _, err := os.Stat(filepath.Join(root, "services", "go.mod")); err == nil {
		return filepath.Join(root, "services")
	}
	return root
}

// describeDSN names the database of dsn without its password.
func describeDSN(dsn string) string {
	c, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "(unparsable DSN)"
	}
	s := fmt.Sprintf("%s, database %s", db.Addr(c.Config), c.Database)
	if sp := c.RuntimeParams["search_path"]; sp != "" {
		s += ", schema " + sp
	}
	return s
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}
