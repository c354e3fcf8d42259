package streams

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
)

// ClientConfig configures a Client. Only Conn (or JetStream) is required.
type ClientConfig struct {
	// Conn is the NATS connection. Required unless JetStream is set.
	Conn *nats.Conn
	// JetStream is the client to use. Default: jetstream.New(Conn).
	JetStream jetstream.JetStream
	// Topology gives the shard count and size limits. Default
	// DefaultTopology(); it must match the deployed one.
	Topology Topology
	// Kind is the kind of stream the client publishes to. Default
	// KindInbound (events for the processor, as ingest publishes them).
	Kind Kind
	// Directory resolves accounts. Default: NewClient opens one (a KV watch,
	// current within milliseconds) and Close closes it. Pass an open one to
	// share it.
	Directory *Directory
	// Timeout bounds the wait for JetStream's acknowledgement when the
	// context has no deadline. Default 5s. A publish refused by the server's
	// permissions looks like this timeout to the client (see the package
	// documentation).
	Timeout time.Duration
	// TracerProvider creates the producer spans. Default: the otel global.
	TracerProvider trace.TracerProvider
	// Logger, for the directory watch. Default slog.Default().
	Logger *slog.Logger
}

// Client publishes events for accounts: it resolves the account's shard and
// generation in the account directory, refuses accounts that are not active,
// builds the message id with the generation (MessageID), checks the size
// limit before sending, carries the caller's trace context and waits for
// JetStream's acknowledgement. It is a thin layer over Directory and
// Publisher, safe for concurrent use.
type Client struct {
	pub     *Publisher
	dir     *Directory
	ownsDir bool
	kind    Kind
	topo    Topology
}

// NewClient returns a Client. It checks the size limits of the streams it
// publishes to against the topology (ErrLimitMismatch: refuse to start) and
// loads the account directory.
func NewClient(ctx context.Context, cfg ClientConfig) (*Client, error) {
	js := cfg.JetStream
	if js == nil {
		if cfg.Conn == nil {
			return nil, errors.New("streams: ClientConfig needs Conn (or JetStream)")
		}
		var err error
		if js, err = jetstream.New(cfg.Conn); err != nil {
			return nil, fmt.Errorf("streams: client: %w", err)
		}
	}
	if cfg.Topology.Shards == 0 {
		cfg.Topology = DefaultTopology()
	}
	if cfg.Kind == "" {
		cfg.Kind = KindInbound
	}
	if (Subject{Kind: cfg.Kind, Account: "x", Type: "x"}).Validate() != nil {
		return nil, fmt.Errorf("streams: client: unknown kind %q", cfg.Kind)
	}
	if err := CheckLimits(ctx, js, cfg.Topology, cfg.Kind); err != nil {
		return nil, fmt.Errorf("streams: client: %w", err)
	}
	pub, err := NewPublisher(PublisherConfig{JetStream: js, Topology: cfg.Topology, Timeout: cfg.Timeout, TracerProvider: cfg.TracerProvider})
	if err != nil {
		return nil, err
	}
	c := &Client{pub: pub, dir: cfg.Directory, kind: cfg.Kind, topo: cfg.Topology}
	if c.dir == nil {
		if c.dir, err = OpenDirectory(ctx, js, cfg.Logger); err != nil {
			return nil, fmt.Errorf("streams: client: %w", err)
		}
		c.ownsDir = true
	}
	return c, nil
}

// Publish publishes data as an event of type typ for account, to
// <kind>.<shard>.<account>.<type> on the account's shard, and returns once
// JetStream has stored it.
//
// id is the caller's idempotency key for the event (an order id, a
// Segment messageId): publishing the same id for the same account again
// inside the duplicate window is acknowledged without storing a second copy.
// The id sent is MessageID(account, generation, id), so an account deleted
// and re-created within the window does not lose its new events as
// duplicates of the old ones.
//
// Errors: ErrUnknownAccount for an account the directory has never seen,
// ErrAccountClosed for one that is suspended, deleting or deleted,
// ErrInvalidAccountID, ErrTooLarge (a *SizeError: nothing was sent), or the
// publish error (nothing is known to be stored; publishing again with the
// same id is safe).
func (c *Client) Publish(ctx context.Context, account, typ, id string, data []byte) error {
	if err := ValidateAccountID(account); err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("streams: publish %s for %s: id is required", typ, account)
	}
	a, ok := c.dir.Lookup(account)
	if !ok {
		return fmt.Errorf("streams: publish %s for %s: %w", typ, account, ErrUnknownAccount)
	}
	if a.Status != StatusActive {
		return fmt.Errorf("streams: publish %s for %s: %w (%s)", typ, account, ErrAccountClosed, a.Status)
	}
	if a.Shard < 0 || a.Shard >= c.topo.Shards {
		return fmt.Errorf("streams: publish %s for %s: account is on shard %d, outside this topology's %d shards", typ, account, a.Shard, c.topo.Shards)
	}
	sub, err := NewSubject(c.kind, a.Shard, account, typ)
	if err != nil {
		return err
	}
	_, err = c.pub.Publish(ctx, Message{Subject: sub, ID: MessageID(account, a.Generation, id), Generation: a.Generation, Data: data})
	return err
}

// Directory returns the account directory the client resolves accounts in.
func (c *Client) Directory() *Directory { return c.dir }

// Publisher returns the underlying Publisher, for messages Publish does not
// cover (batches, explicit subjects).
func (c *Client) Publisher() *Publisher { return c.pub }

// Close stops the directory watch NewClient opened. It does not close the
// NATS connection.
func (c *Client) Close() {
	if c.ownsDir {
		c.dir.Close()
		c.ownsDir = false
	}
}
