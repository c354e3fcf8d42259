package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/streams"
)

// ReasonUndecodableEnvelope is the drop reason of a message on a dead-letter
// stream that is not a dead-letter envelope.
const ReasonUndecodableEnvelope = "undecodable_envelope"

// IndexerConfig configures an Indexer.
type IndexerConfig struct {
	// Store is the index. Required.
	Store *Store
	// Logger receives one line per undecodable envelope and per failure.
	// Default slog.Default().
	Logger *slog.Logger
}

// Indexer indexes the dead letters of DEADLETTER_n in Postgres. Its Handle
// method is the streams.Handler of the indexer stage.
type Indexer struct {
	store *Store
	log   *slog.Logger
}

// NewIndexer returns an Indexer.
func NewIndexer(cfg IndexerConfig) (*Indexer, error) {
	if cfg.Store == nil {
		return nil, errors.New("dlq: IndexerConfig.Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Indexer{store: cfg.Store, log: cfg.Logger}, nil
}

// Handle indexes one dead letter:
//   - indexed (or already indexed) → Ack;
//   - not a dead-letter envelope → Drop (undecodable_envelope), with an
//     error line: dead-lettering a dead letter would loop, and the message
//     stays browsable in the dead-letter stream (limits retention);
//   - Postgres down (IsUnavailable) → Unavailable: the runtime holds the
//     message and probes until the database is back, so nothing is lost and
//     no delivery attempt is used up;
//   - any other database error → Retry.
func (ix *Indexer) Handle(ctx context.Context, m *streams.Msg) streams.Outcome {
	var env schemas.DeadLetter
	if err := json.Unmarshal(m.Data, &env); err != nil || env.ID == "" || env.OriginalSubject == "" {
		if err == nil {
			err = errors.New("envelope has no id or original subject")
		}
		ix.log.ErrorContext(ctx, "undecodable dead-letter envelope dropped",
			"stream", m.Stream, "seq", m.Sequence, "subject", m.Subject.String(), "err", err)
		return streams.Drop(ReasonUndecodableEnvelope)
	}
	if err := ix.store.Index(ctx, env, m.Stream, m.Sequence); err != nil {
		if IsUnavailable(err) {
			return streams.Unavailable(fmt.Errorf("postgres: %w", err))
		}
		ix.log.WarnContext(ctx, "indexing a dead letter failed", "id", env.ID, "attempt", m.Delivered, "err", err)
		return streams.Retry(err)
	}
	return streams.Ack()
}
