package sender

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/smtp"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/services/internal/dlq"
	"github.com/shardflow/shardflow/streams"
)

// Header names of a webhook delivery.
const (
	HeaderSignature      = "Shardflow-Signature"
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderAccount        = "Shardflow-Account"
)

// Secrets returns an account's webhook secret (the directory has it).
type Secrets interface {
	Lookup(id string) (streams.Account, bool)
}

// Config configures the sender.
type Config struct {
	// DB records deliveries: a pool per shard (db.Pools). Required.
	DB *db.Pools
	// Accounts gives each account's signing secret. Required.
	Accounts Secrets
	// Client sends webhooks. Default: an http.Client with Timeout.
	Client *http.Client
	// Timeout bounds one webhook call. Default 10s.
	Timeout time.Duration
	// SMTPAddr is the SMTP relay for the email channel (host:port). Empty:
	// email messages are dead-lettered as undeliverable.
	SMTPAddr string
	// SMTPFrom is the envelope sender. Default shardflow@localhost.
	SMTPFrom string
	// BreakerThreshold is how many failures in a row open a destination's
	// circuit breaker. Default 5.
	BreakerThreshold int
	// BreakerCooldown is how long an open breaker waits before a probe.
	// Default 5s.
	BreakerCooldown time.Duration
	// MaxDeferrals bounds how often one message is deferred for an open
	// breaker; past it, failures use up attempts again, so a destination
	// that never recovers ends in dead letters instead of cycling for ever.
	// Default 30.
	MaxDeferrals int
	// Logger, default slog.Default().
	Logger *slog.Logger
}

// Sender is the sender stage handler.
type Sender struct {
	cfg Config
	log *slog.Logger
	br  *breakers
}

// New returns a Sender.
func New(cfg Config) (*Sender, error) {
	if cfg.DB == nil || cfg.Accounts == nil {
		return nil, errors.New("sender: Config needs DB and Accounts")
	}
	cfg.Timeout = cmp.Or(cfg.Timeout, 10*time.Second)
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: cfg.Timeout}
	}
	cfg.SMTPFrom = cmp.Or(cfg.SMTPFrom, "shardflow@localhost")
	cfg.BreakerThreshold = cmp.Or(cfg.BreakerThreshold, 5)
	cfg.BreakerCooldown = cmp.Or(cfg.BreakerCooldown, 5*time.Second)
	cfg.MaxDeferrals = cmp.Or(cfg.MaxDeferrals, 100)
	return &Sender{cfg: cfg, log: cmp.Or(cfg.Logger, slog.Default()), br: newBreakers(cfg.BreakerThreshold, cfg.BreakerCooldown)}, nil
}

// Sign returns the signature header value of body under secret.
func Sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

func dbOutcome(err error, what string) streams.Outcome {
	return dlq.Outcome(fmt.Errorf("%s: %w", what, err))
}

// Handle is the streams.Handler.
func (s *Sender) Handle(ctx context.Context, m *streams.Msg) streams.Outcome {
	var out schemas.Outbound
	if err := json.Unmarshal(m.Data, &out); err != nil {
		return streams.DeadLetter(streams.ClassUndecodable, fmt.Errorf("decode outbound message: %w", err))
	}
	// The processor built this message from a validated event; a full
	// JSON Schema pass here cost 13% of the sender's CPU in the benchmark.
	// Check what delivery relies on instead.
	if err := checkOutbound(&out); err != nil {
		return streams.DeadLetter(streams.ClassSchemaInvalid, err)
	}
	// The logical id survives parking, release and replay.
	id := cmp.Or(m.ID, out.ID)
	var status string
	err := s.cfg.DB.For(m.Subject.Shard).QueryRow(ctx, `
		INSERT INTO deliveries (message_id, account_id, shard, channel, url, status)
		VALUES ($1, $2, $3, $4, $5, 'sending')
		ON CONFLICT (message_id) DO UPDATE SET attempts = deliveries.attempts + 1
		RETURNING status`, id, out.Account, out.Shard, out.Channel, out.URL).Scan(&status)
	if err != nil {
		return dbOutcome(err, "record delivery attempt")
	}
	if status == "delivered" {
		return streams.Ack() // a redelivery or replay of a message already sent
	}
	var code int
	var outcome streams.Outcome
	switch out.Channel {
	case "webhook":
		code, outcome = s.webhook(ctx, m, id, &out, m.Data)
	case "email":
		code, outcome = s.email(ctx, id, &out)
	default:
		return streams.DeadLetter(streams.ClassPermanent, fmt.Errorf("unknown channel %q", out.Channel))
	}
	if outcome.Kind != streams.OutcomeAck {
		return outcome
	}
	if _, err := s.cfg.DB.For(m.Subject.Shard).Exec(ctx, `UPDATE deliveries SET status = 'delivered', status_code = $2, delivered_at = now() WHERE message_id = $1`, id, code); err != nil {
		// Sent but not recorded: retried with the same Idempotency-Key.
		return dbOutcome(err, "record delivery")
	}
	return streams.Ack()
}

// webhook sends through the destination's circuit breaker. A failure while
// the breaker is closed is the message's own retry (it uses an attempt);
// once the breaker is open the message is deferred (another destination is
// healthy) or held (every destination is down), using no attempt.
func (s *Sender) webhook(ctx context.Context, m *streams.Msg, id string, out *schemas.Outbound, body []byte) (int, streams.Outcome) {
	u, err := url.Parse(out.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return 0, streams.DeadLetter(streams.ClassPermanent, fmt.Errorf("webhook url %q is not http(s)", out.URL))
	}
	dest := u.Scheme + "://" + u.Host
	if s.br.admit(dest) == stateOpen {
		return 0, s.whileOpen(m, dest, fmt.Errorf("webhook %s: circuit breaker open", u.Host))
	}
	code, outcome := s.post(ctx, id, out, u, body)
	failed := outcome.Kind == streams.OutcomeRetry
	if s.br.result(dest, !failed) && failed {
		if errors.Is(outcome.Err, context.Canceled) {
			return code, outcome
		}
		s.log.WarnContext(ctx, "receiver failing: circuit breaker open", "destination", dest, "cooldown", s.cfg.BreakerCooldown, "err", outcome.Err)
		return code, s.whileOpen(m, dest, outcome.Err)
	}
	return code, outcome
}

// whileOpen is the outcome for a message whose destination's breaker is open.
func (s *Sender) whileOpen(m *streams.Msg, dest string, err error) streams.Outcome {
	if s.br.allOpen(time.Minute) {
		return streams.Unavailable(err)
	}
	if m.Deferrals >= s.cfg.MaxDeferrals {
		return streams.Retry(fmt.Errorf("deferred %d times: %w", m.Deferrals, err))
	}
	// Back off further each time the same message finds the breaker open,
	// up to 16 cooldowns, so a long outage costs few deferrals and a
	// recovered receiver gets its backlog back within a bounded time.
	d := max(s.br.retryIn(dest), time.Second) << min(m.Deferrals, 4)
	return streams.Defer(min(d, 16*max(s.cfg.BreakerCooldown, time.Second)), "breaker_open")
}

func (s *Sender) post(ctx context.Context, id string, out *schemas.Outbound, u *url.URL, body []byte) (int, streams.Outcome) {
	acct, ok := s.cfg.Accounts.Lookup(out.Account)
	if !ok {
		return 0, streams.Retry(fmt.Errorf("%w: %s", streams.ErrUnknownAccount, out.Account))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, out.URL, bytes.NewReader(body))
	if err != nil {
		return 0, streams.DeadLetter(streams.ClassPermanent, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "shardflow-sender")
	req.Header.Set(HeaderIdempotencyKey, id)
	req.Header.Set(HeaderAccount, out.Account)
	req.Header.Set(HeaderSignature, Sign(acct.Secret, body))
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return 0, streams.Retry(fmt.Errorf("webhook %s: %w", u.Host, err))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		return code, streams.Ack()
	case code == http.StatusTooManyRequests:
		if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && ra > 0 {
			return code, streams.RetryAfter(time.Duration(ra)*time.Second, fmt.Errorf("webhook %s: 429", u.Host))
		}
		return code, streams.Retry(fmt.Errorf("webhook %s: 429", u.Host))
	case code == http.StatusRequestTimeout || code >= 500:
		return code, streams.Retry(fmt.Errorf("webhook %s: %d", u.Host, code))
	default:
		return code, streams.DeadLetter(streams.ClassReceiver4xx, fmt.Errorf("webhook %s refused the message: %d", u.Host, code))
	}
}

func (s *Sender) email(ctx context.Context, id string, out *schemas.Outbound) (int, streams.Outcome) {
	to := strings.TrimPrefix(out.URL, "mailto:")
	if s.cfg.SMTPAddr == "" {
		return 0, streams.DeadLetter(streams.ClassPermanent, errors.New("email channel: no SMTP relay configured (SHARDFLOW_SMTP_ADDR)"))
	}
	body, _ := json.MarshalIndent(out.Event, "", "  ")
	msg := fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@shardflow>\r\nContent-Type: application/json\r\n\r\n%s\r\n",
		s.cfg.SMTPFrom, to, out.Event.Event, strings.NewReplacer(":", ".", "/", ".").Replace(id), body)
	done := make(chan error, 1)
	go func() { done <- smtp.SendMail(s.cfg.SMTPAddr, nil, s.cfg.SMTPFrom, []string{to}, []byte(msg)) }()
	select {
	case err := <-done:
		if err != nil {
			var tp interface{ Temporary() bool }
			if errors.As(err, &tp) && !tp.Temporary() {
				return 0, streams.DeadLetter(streams.ClassReceiver4xx, err)
			}
			return 0, streams.Retry(err)
		}
		return 250, streams.Ack()
	case <-ctx.Done():
		return 0, streams.Retry(ctx.Err())
	case <-time.After(s.cfg.Timeout):
		return 0, streams.Retry(errors.New("smtp: timeout"))
	}
}

// checkOutbound checks the fields delivery relies on.
func checkOutbound(o *schemas.Outbound) error {
	switch {
	case o.ID == "":
		return errors.New("outbound message: id is required")
	case o.Account == "":
		return errors.New("outbound message: account is required")
	case o.Channel != schemas.ChannelWebhook && o.Channel != schemas.ChannelEmail:
		return fmt.Errorf("outbound message: channel %q is not webhook or email", o.Channel)
	case o.URL == "":
		return errors.New("outbound message: url is required")
	}
	return nil
}
