package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/services/internal/natsconn"
	"github.com/shardflow/shardflow/services/internal/service"
)

// CLI is sfctl's configuration: the global flags and the commands.
type CLI struct {
	service.Common `kong:"embed"`

	AdminURL   string        `name:"admin-url" env:"SHARDFLOW_ADMIN_URL" default:"http://127.0.0.1:8081" help:"Base URL of the accounts service's admin API."`
	AdminToken string        `name:"admin-token" env:"SHARDFLOW_ADMIN_TOKEN" help:"Bearer token of the admin API."`
	JSON       bool          `name:"json" help:"Print data as JSON."`
	Timeout    time.Duration `name:"timeout" default:"30s" help:"Bound on connecting and on each request."`

	Provision ProvisionCmd `cmd:"" help:"Create or update every stream and consumer of the topology (idempotent); report drift."`
	Migrate   MigrateCmd   `cmd:"" help:"Apply the pending Postgres migrations."`
	Status    StatusCmd    `cmd:"" help:"Per shard: stream sizes, consumer backlogs, processing rates and drain ETAs."`
	Accounts  AccountsCmd  `cmd:"" help:"Manage accounts through the admin API."`
	DLQ       DLQCmd       `cmd:"" name:"dlq" help:"Inspect, replay and drop dead letters through the admin API."`
	NATSConf  NATSConfCmd  `cmd:"" name:"nats-config" help:"Generate the NATS cluster configuration: configs, least-privilege NKey users, TLS certificates, Helm values."`
}

// app is what every command's Run receives.
type app struct {
	ctx    context.Context
	cli    *CLI
	out    io.Writer
	errOut io.Writer
}

// lockedWriter serialises writes from callbacks with the command's own.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// exitError carries an exit status other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run parses args and runs the command, returning the exit status: 0 on
// success, 1 on failure (or drift found by a dry run), 2 on a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var cli CLI
	exited := -1
	parser, err := kong.New(&cli,
		kong.Name("sfctl"),
		kong.Description("shardflow operator CLI."),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { exited = code; panic(exitPanic{}) }),
		kong.UsageOnError(),
	)
	if err != nil {
		fmt.Fprintln(stderr, "sfctl:", err)
		return 2
	}
	kctx, code, ok := parse(parser, args)
	if !ok {
		if exited >= 0 {
			return exited
		}
		return code
	}
	a := &app{ctx: ctx, cli: &cli, out: stdout, errOut: &lockedWriter{w: stderr}}
	if err := kctx.Run(a); err != nil {
		fmt.Fprintln(stderr, "sfctl:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

type exitPanic struct{}

// parse runs the parser, turning kong's exit (after --help, say) into a
// return.
func parse(p *kong.Kong, args []string) (kctx *kong.Context, code int, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			if _, is := r.(exitPanic); !is {
				panic(r)
			}
			kctx, code, ok = nil, 0, false
		}
	}()
	kctx, err := p.Parse(args)
	if err != nil {
		p.Errorf("%s", err)
		return nil, 2, false
	}
	return kctx, 0, true
}

// connect opens the NATS connection the global flags describe.
func (a *app) connect(ctx context.Context) (*nats.Conn, jetstream.JetStream, error) {
	c := a.cli.Common
	cctx, cancel := context.WithTimeout(ctx, a.cli.Timeout)
	defer cancel()
	nc, err := natsconn.Connect(cctx, natsconn.Config{
		URL: c.NATSURL, Name: "sfctl", InboxPrefix: c.NATSInbox,
		User: c.NATSUser, Password: c.NATSPassword, NKeySeedFile: c.NATSNKeyFile,
		TLSCAFile: c.NATSTLSCA, TLSCertFile: c.NATSTLSCert, TLSKeyFile: c.NATSTLSKey,
		// Warn and below are connection events (our own Close logs a
		// disconnect, asynchronously): noise for a CLI.
		Logger: slog.New(slog.NewTextHandler(a.errOut, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(a.cli.Timeout))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}
