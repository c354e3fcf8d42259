// Package natsembed runs a real nats-server with JetStream inside the
// current process, for development and tests: never a mock. It is a separate
// package so that services importing streams do not link the server.
package natsembed

import (
	"cmp"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config configures an embedded server.
type Config struct {
	// Host to listen on. Default 127.0.0.1.
	Host string
	// Port to listen on; -1 (the default, also for 0) picks a free port.
	Port int
	// StoreDir is where JetStream keeps its data. Required (use a temporary
	// directory in tests).
	StoreDir string
	// MaxPayload is the server's max_payload. Default 1 MiB.
	MaxPayload int32
	// SyncAlways makes JetStream fsync before every acknowledgement
	// (sync_interval: always), as production should.
	SyncAlways bool
	// ServerName names the server. Default "shardflow-dev".
	ServerName string
	// Logging turns on the server's log (stderr). Also on when
	// NATS_LOGGING is set.
	Logging bool
	// Options, when set, is called last to adjust the server options.
	Options func(*server.Options)
}

// Run starts a server and waits until it accepts connections.
func Run(cfg Config) (*server.Server, error) {
	if cfg.StoreDir == "" {
		return nil, fmt.Errorf("natsembed: StoreDir is required")
	}
	port := cfg.Port
	if port == 0 {
		port = -1
	}
	opts := &server.Options{
		ServerName: cmp.Or(cfg.ServerName, "shardflow-dev"),
		Host:       cmp.Or(cfg.Host, "127.0.0.1"),
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		MaxPayload: cmp.Or(cfg.MaxPayload, 1<<20),
		NoSigs:     true,
		NoLog:      true,
	}
	if cfg.SyncAlways {
		opts.SyncAlways = true
	}
	if cfg.Options != nil {
		cfg.Options(opts)
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsembed: %w", err)
	}
	if cfg.Logging || os.Getenv("NATS_LOGGING") != "" {
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("natsembed: server on %s:%d not ready within 15s", opts.Host, opts.Port)
	}
	return s, nil
}

// Test starts a server with a fresh store under t.TempDir() and shuts it
// down when the test ends. opts may adjust the configuration.
func Test(t testing.TB, opts ...func(*Config)) *server.Server {
	t.Helper()
	cfg := Config{StoreDir: t.TempDir()}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := Run(cfg)
	if err != nil {
		t.Fatalf("start embedded nats-server: %v", err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}
