package natsconn

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Config describes a service's NATS connection. At most one of User,
// NKeySeedFile and CredsFile may be set; credentials in URL also work.
type Config struct {
	// URL is the server URL, or several separated by commas.
	// Default: nats.DefaultURL ("nats://127.0.0.1:4222").
	URL string
	// Name is the connection name shown by the server's monitoring
	// (e.g. "ingest"). Default: none.
	Name string
	// InboxPrefix replaces "_INBOX" as the prefix of reply subjects, so a
	// user's permissions can allow its own replies only. Default: "_INBOX".
	InboxPrefix string
	// User and Password authenticate with a user name and password.
	User     string
	Password string
	// NKeySeedFile authenticates with the nkey seed in this file.
	NKeySeedFile string
	// CredsFile authenticates with this JWT + seed credentials file.
	CredsFile string
	// TLSCAFile verifies the server's certificate against this CA (PEM).
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are the client certificate and key (PEM)
	// for servers that require one (tls { verify: true }).
	TLSCertFile, TLSKeyFile string
	// ReconnectWait is the pause between reconnect attempts to one server.
	// Default: 250ms.
	ReconnectWait time.Duration
	// Logger receives connection events. Default: slog.Default().
	Logger *slog.Logger
	// OnPermissionViolation, if set, is called (on the connection's
	// callback goroutine: do not block) for each permissions violation the
	// server reports, after it was logged.
	OnPermissionViolation func(error)
	// Options are extra nats options, applied last.
	Options []nats.Option
}

// DefaultReconnectWait is Config.ReconnectWait's default.
const DefaultReconnectWait = 250 * time.Millisecond

// Connect connects to NATS and waits until the connection is established.
// If the server cannot be reached (or refuses the credentials) before ctx
// ends, it fails with an error naming the URL and the last connection error.
// A ctx without deadline waits as long as it takes. Once connected, the
// connection outlives ctx; Close (or Drain) it when done.
func Connect(ctx context.Context, cfg Config) (*nats.Conn, error) {
	cfg.URL = cmp.Or(cfg.URL, nats.DefaultURL)
	cfg.ReconnectWait = cmp.Or(cfg.ReconnectWait, DefaultReconnectWait)
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "nats")
	shownURL := redactURLs(cfg.URL)

	connected := make(chan struct{})
	closed := make(chan struct{})
	var connectedOnce, closedOnce sync.Once

	opts := []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(cfg.ReconnectWait),
		nats.RetryOnFailedConnect(true),
		nats.ConnectHandler(func(nc *nats.Conn) {
			connectedOnce.Do(func() { close(connected) })
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			log.Warn("nats disconnected", "url", nc.ConnectedUrlRedacted(), "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ReconnectErrHandler(func(nc *nats.Conn, err error) {
			log.Debug("nats reconnect attempt failed", "err", err)
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			log.Info("nats connection closed", "err", nc.LastError())
			closedOnce.Do(func() { close(closed) })
		}),
		nats.LameDuckModeHandler(func(nc *nats.Conn) {
			log.Warn("nats server entering lame duck mode", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			attrs := []any{"err", err}
			if sub != nil {
				attrs = append(attrs, "subject", sub.Subject)
			}
			if IsPermissionViolation(err) {
				log.Error("nats permissions violation", attrs...)
				if cfg.OnPermissionViolation != nil {
					cfg.OnPermissionViolation(err)
				}
				return
			}
			log.Warn("nats async error", attrs...)
		}),
	}
	if cfg.Name != "" {
		opts = append(opts, nats.Name(cfg.Name))
	}
	if cfg.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(cfg.InboxPrefix))
	}
	auth, err := authOption(cfg)
	if err != nil {
		return nil, fmt.Errorf("natsconn: connect to %s: %w", shownURL, err)
	}
	if auth != nil {
		opts = append(opts, auth)
	}
	if cfg.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCAFile))
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, fmt.Errorf("natsconn: connect to %s: a client certificate needs both the certificate and the key file", shownURL)
	}
	if cfg.TLSCertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCertFile, cfg.TLSKeyFile))
	}
	opts = append(opts, cfg.Options...)

	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("natsconn: connect to %s: %w", shownURL, err)
	}
	if !nc.IsConnected() {
		log.Info("nats not reachable yet, retrying", "url", shownURL)
		select {
		case <-connected:
		case <-closed:
			err := nc.LastError()
			nc.Close()
			return nil, fmt.Errorf("natsconn: connect to %s: connection closed: %w", shownURL, cmp.Or(err, nats.ErrConnectionClosed))
		case <-ctx.Done():
			last := nc.LastError()
			nc.Close()
			if last == nil {
				return nil, fmt.Errorf("natsconn: connect to %s: server not reachable: %w", shownURL, context.Cause(ctx))
			}
			return nil, fmt.Errorf("natsconn: connect to %s: server not reachable (last error: %w): %w", shownURL, last, context.Cause(ctx))
		}
	}
	log.Info("nats connected", "url", nc.ConnectedUrlRedacted(), "server", nc.ConnectedServerName())
	return nc, nil
}

// IsPermissionViolation reports whether err is the server refusing a publish
// or subscribe for lack of permission.
func IsPermissionViolation(err error) bool {
	return err != nil && (errors.Is(err, nats.ErrPermissionViolation) ||
		strings.Contains(strings.ToLower(err.Error()), "permissions violation"))
}

func authOption(cfg Config) (nats.Option, error) {
	n := 0
	for _, set := range []bool{cfg.User != "", cfg.NKeySeedFile != "", cfg.CredsFile != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		return nil, errors.New("configure at most one of user/password, nkey seed file and credentials file")
	}
	switch {
	case cfg.User != "":
		return nats.UserInfo(cfg.User, cfg.Password), nil
	case cfg.NKeySeedFile != "":
		opt, err := nats.NkeyOptionFromSeed(cfg.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("load nkey seed: %w", err)
		}
		return opt, nil
	case cfg.CredsFile != "":
		return nats.UserCredentials(cfg.CredsFile), nil
	}
	if cfg.Password != "" {
		return nil, errors.New("password given without user")
	}
	return nil, nil
}

// redactURLs hides passwords in a comma-separated URL list.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if u, err := url.Parse(p); err == nil && u.User != nil {
			if _, has := u.User.Password(); has {
				p = u.Redacted()
			} else if u.User.Username() != "" {
				// A lone user part may be a token.
				u.User = url.User("xxxxx")
				p = u.String()
			}
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
}
