package processor

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/services/internal/dlq"
	"github.com/shardflow/shardflow/streams"
)

// Config configures the processor.
type Config struct {
	// DB holds people and triggers: a pool per shard (db.Pools). Required.
	DB *db.Pools
	// TriggerCacheTTL is how long an account's triggers are cached, so a
	// busy account does not cost a query per event. Default 2s.
	TriggerCacheTTL time.Duration
	// CrashOnEvent, test-only: the process exits when it handles a track
	// event of this name (the crash-loop test). Set by
	// SHARDFLOW_TEST_CRASH_EVENT; never in production.
	CrashOnEvent string
	// Logger, default slog.Default().
	Logger *slog.Logger
}

// Processor is the processor stage handler.
type Processor struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	cache map[string]cachedTriggers
}

// Trigger routes a track event to a channel.
type Trigger struct {
	Name, Event, Channel, URL string
}

type cachedTriggers struct {
	at       time.Time
	triggers []Trigger
}

// New returns a Processor.
func New(cfg Config) (*Processor, error) {
	if cfg.DB == nil {
		return nil, errors.New("processor: Config needs DB")
	}
	cfg.TriggerCacheTTL = cmp.Or(cfg.TriggerCacheTTL, 2*time.Second)
	return &Processor{cfg: cfg, log: cmp.Or(cfg.Logger, slog.Default()), cache: map[string]cachedTriggers{}}, nil
}

// Handle is the streams.Handler.
func (p *Processor) Handle(ctx context.Context, m *streams.Msg) streams.Outcome {
	// One parse and schema check of the stored event; its type is the
	// subject's type token, which ingest set from it.
	lim := schemas.Limits{MaxEventBytes: len(m.Data) + 1, MaxBatchBytes: len(m.Data) + 1}
	ev, err := schemas.DecodeEvent(m.Subject.Type, m.Data, lim)
	var syntax *schemas.SyntaxError
	switch {
	case errors.As(err, &syntax):
		return streams.DeadLetter(streams.ClassUndecodable, fmt.Errorf("decode inbound event: %w", err))
	case err != nil:
		return streams.DeadLetter(streams.ClassSchemaInvalid, err)
	}
	switch ev.Type {
	case schemas.TypeIdentify:
		return p.identify(ctx, m, ev)
	case schemas.TypeTrack:
		if p.cfg.CrashOnEvent != "" && ev.Event == p.cfg.CrashOnEvent {
			p.log.Error("test crash hook: exiting on event", "event", ev.Event, "delivered", m.Delivered)
			os.Exit(3)
		}
		return p.track(ctx, m, ev)
	}
	return streams.DeadLetter(streams.ClassSchemaInvalid, fmt.Errorf("unknown event type %q", ev.Type))
}

func userKey(ev *schemas.Event) string {
	if ev.UserID != "" {
		return ev.UserID
	}
	return "anon:" + ev.AnonymousID
}

func dbOutcome(err error, what string) streams.Outcome {
	return dlq.Outcome(fmt.Errorf("%s: %w", what, err))
}

func (p *Processor) identify(ctx context.Context, m *streams.Msg, ev *schemas.Event) streams.Outcome {
	if ev.Traits == nil {
		ev.Traits = map[string]any{}
	}
	traits, _ := json.Marshal(ev.Traits)
	_, err := p.cfg.DB.For(m.Subject.Shard).Exec(ctx, `
		INSERT INTO people (account_id, user_id, traits, last_message_id, updated_at)
		VALUES ($1, $2, $3, $4, now())
		ON CONFLICT (account_id, user_id) DO UPDATE
		SET traits = people.traits || EXCLUDED.traits, last_message_id = EXCLUDED.last_message_id, updated_at = now()`,
		m.Subject.Account, userKey(ev), traits, m.ID)
	if err != nil {
		return dbOutcome(err, "upsert person")
	}
	return streams.Ack()
}

func (p *Processor) triggers(ctx context.Context, shard int, account string) ([]Trigger, error) {
	p.mu.Lock()
	c, ok := p.cache[account]
	p.mu.Unlock()
	if ok && time.Since(c.at) < p.cfg.TriggerCacheTTL {
		return c.triggers, nil
	}
	rows, err := p.cfg.DB.For(shard).Query(ctx, `SELECT name, event, channel, url FROM triggers WHERE account_id = $1 ORDER BY name`, account)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ts []Trigger
	for rows.Next() {
		var t Trigger
		if err := rows.Scan(&t.Name, &t.Event, &t.Channel, &t.URL); err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.cache[account] = cachedTriggers{at: time.Now(), triggers: ts}
	p.mu.Unlock()
	return ts, nil
}

// track returns the outbound messages of the account's matching triggers as
// a Forward outcome: the runtime publishes them asynchronously (each with its
// Nats-Msg-Id and the trace context) and acks the input only once JetStream
// stored every one; a failed publish retries the input, which republishes
// the same ids (derived from the inbound id), so JetStream drops the repeats.
// A message that cannot be built (over the size limit) dead-letters it.
func (p *Processor) track(ctx context.Context, m *streams.Msg, ev *schemas.Event) streams.Outcome {
	ts, err := p.triggers(ctx, m.Subject.Shard, m.Subject.Account)
	if err != nil {
		return dbOutcome(err, "load triggers")
	}
	var msgs []streams.Message
	for _, t := range ts {
		if t.Event != ev.Event {
			continue
		}
		out := schemas.Outbound{
			ID:         m.ID + ":" + t.Name,
			Account:    m.Subject.Account,
			Shard:      m.Subject.Shard,
			Generation: max(m.Generation, 1),
			Channel:    t.Channel,
			Trigger:    t.Name,
			URL:        t.URL,
			InboundID:  m.ID,
			Event:      *ev,
			CreatedAt:  m.Published.UTC(),
		}
		if out.CreatedAt.IsZero() {
			out.CreatedAt = time.Now().UTC()
		}
		data, err := json.Marshal(out)
		if err != nil {
			return streams.DeadLetter(streams.ClassPermanent, err)
		}
		msgs = append(msgs, streams.Message{
			Subject:    streams.Subject{Kind: streams.KindOutbound, Shard: m.Subject.Shard, Account: m.Subject.Account, Type: t.Channel},
			ID:         out.ID,
			Generation: m.Generation,
			Data:       data,
		})
	}
	if len(msgs) == 0 {
		return streams.Ack()
	}
	return streams.Forward(msgs...)
}
