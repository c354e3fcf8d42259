package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/shardflow/shardflow/streams"
)

// DefaultReplayRate is the default replay rate, in messages per second.
const DefaultReplayRate = 200

// Reasons a selected dead letter is skipped (Result.SkippedReasons).
const (
	// SkipAccountDeleted: the account is deleting or deleted, or the dead
	// letter belongs to an older incarnation (generation) of it.
	SkipAccountDeleted = "account_deleted"
	// SkipAccountUnknown: the account is neither in the directory nor
	// tombstoned (or the subject named none).
	SkipAccountUnknown = "account_unknown"
	// SkipAlreadyReplayed: selected by a filter, but replayed before (name
	// it by id to replay it again).
	SkipAlreadyReplayed = "already_replayed"
	// SkipNotReplayable: the original subject is not a stage subject.
	SkipNotReplayable = "not_replayable"
	// SkipNotFound: an id asked for is not indexed.
	SkipNotFound = "not_found"
	// SkipDropped: an id asked for was dropped.
	SkipDropped = "dropped"
)

// Result says what Replay or Drop did (or, in a dry run, would do).
type Result struct {
	// Matched is how many dead letters the request selected (plus ids
	// asked for that are unknown or dropped).
	Matched int `json:"matched"`
	// Replayed is how many were (or would be) republished.
	Replayed int `json:"replayed"`
	// Dropped is how many were (or would be) dropped.
	Dropped int `json:"dropped"`
	// Skipped is how many were left alone, with SkippedReasons saying why.
	Skipped        int            `json:"skipped"`
	SkippedReasons map[string]int `json:"skipped_reasons"`
	// IDs are the dead letters replayed or dropped (or that would be).
	IDs []string `json:"ids"`
	// DryRun is true when nothing was changed.
	DryRun bool `json:"dry_run"`
}

func (r *Result) skip(reason string) {
	r.Skipped++
	r.SkippedReasons[reason]++
}

// ReplayerConfig configures a Replayer.
type ReplayerConfig struct {
	// Store is the index. Required.
	Store *Store
	// JetStream republishes the messages. Required.
	JetStream jetstream.JetStream
	// Accounts tells an account's state (a streams.Directory). Default: the
	// accounts table of the Store's database (and account_tombstones).
	Accounts streams.AccountGate
	// ReplayRate bounds republishing, in messages per second, across all
	// calls of this Replayer. Default DefaultReplayRate.
	ReplayRate float64
	// PageSize is how many rows are read at once. Default 200.
	PageSize int
	// Logger receives one line per call. Default slog.Default().
	Logger *slog.Logger
	// TracerProvider creates the replay spans. Default: the global one.
	TracerProvider trace.TracerProvider
}

// Replayer republishes dead letters to their original subjects, or drops
// them from the index. It is safe for concurrent use; the rate limit is
// shared.
type Replayer struct {
	cfg     ReplayerConfig
	limiter *rate.Limiter
	tracer  trace.Tracer
	log     *slog.Logger
}

// NewReplayer returns a Replayer.
func NewReplayer(cfg ReplayerConfig) (*Replayer, error) {
	if cfg.Store == nil || cfg.JetStream == nil {
		return nil, errors.New("dlq: ReplayerConfig.Store and JetStream are required")
	}
	if cfg.ReplayRate <= 0 {
		cfg.ReplayRate = DefaultReplayRate
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = 200
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = otel.GetTracerProvider()
	}
	return &Replayer{
		cfg: cfg,
		// Burst 1: messages go out evenly spaced, never in a burst.
		limiter: rate.NewLimiter(rate.Limit(cfg.ReplayRate), 1),
		tracer:  cfg.TracerProvider.Tracer(instrumentationName),
		log:     cfg.Logger,
	}, nil
}

// Replay republishes every dead letter f selects to its original subject,
// with its original headers and payload, so the stage that gave up sees it
// again:
//   - Shardflow-Message-Id (the logical id the sender dedupes deliveries on)
//     is kept, so a message that was in fact delivered is not sent twice;
//   - Nats-Msg-Id is replay:<dead letter id>:<replay count + 1> (a retried
//     call does not publish twice; a later replay is a new message);
//   - Shardflow-Replay-Of names the dead letter, Shardflow-Link-Traceparent
//     carries the original traceparent (the consumer links its span to it),
//     and traceparent is a fresh trace started by the "replay dead letter"
//     span.
//
// Dead letters of accounts that are deleting or deleted (or of an older
// generation) are skipped, and so are unknown accounts (a suspended
// account's replay is accepted: the stage parks it until the account is
// restored); so are dead letters
// replayed before when selected by a filter rather than by id. Publishing
// is rate limited (ReplayRate). Each replayed row is marked (replayed_at,
// replay_count + 1). With dryRun nothing is published or marked.
//
// On an error (JetStream or the database) the result so far is returned
// with it; calling again is safe.
func (r *Replayer) Replay(ctx context.Context, f Filter, dryRun bool) (Result, error) {
	res, err := r.each(ctx, f, dryRun, func(ctx context.Context, res *Result, rows []Row, checker *accountChecker) error {
		for _, row := range rows {
			if row.ReplayedAt != nil && len(f.IDs) == 0 {
				res.skip(SkipAlreadyReplayed)
				continue
			}
			sub, err := streams.ParseSubject(row.OriginalSubject)
			if err != nil || sub.Held || (sub.Kind != streams.KindInbound && sub.Kind != streams.KindOutbound) {
				res.skip(SkipNotReplayable)
				continue
			}
			if reason, err := checker.check(ctx, row); err != nil {
				return err
			} else if reason != "" {
				res.skip(reason)
				continue
			}
			if !dryRun {
				if err := r.limiter.Wait(ctx); err != nil {
					return err
				}
				if err := r.republish(ctx, row); err != nil {
					return err
				}
				if err := r.cfg.Store.MarkReplayed(ctx, []string{row.ID}); err != nil {
					return err
				}
			}
			res.Replayed++
			res.IDs = append(res.IDs, row.ID)
		}
		return nil
	})
	r.log.InfoContext(ctx, "dead letters replayed", "dry_run", dryRun, "matched", res.Matched, "replayed", res.Replayed,
		"skipped", res.Skipped, "skipped_reasons", res.SkippedReasons, "err", err)
	return res, err
}

// Drop marks every dead letter f selects as dropped: it leaves the listing
// and is never replayed (the envelope stays in the dead-letter stream until
// its max age). With dryRun nothing is changed.
func (r *Replayer) Drop(ctx context.Context, f Filter, dryRun bool) (Result, error) {
	res, err := r.each(ctx, f, dryRun, func(ctx context.Context, res *Result, rows []Row, _ *accountChecker) error {
		ids := make([]string, len(rows))
		for i, row := range rows {
			ids[i] = row.ID
		}
		if !dryRun {
			if err := r.cfg.Store.MarkDropped(ctx, ids); err != nil {
				return err
			}
		}
		res.Dropped += len(ids)
		res.IDs = append(res.IDs, ids...)
		return nil
	})
	r.log.InfoContext(ctx, "dead letters dropped", "dry_run", dryRun, "matched", res.Matched, "dropped", res.Dropped,
		"skipped", res.Skipped, "err", err)
	return res, err
}

// each pages through the rows f selects (never all in memory at once) and
// calls act on each page. Ids asked for that are unknown or dropped are
// reported as skipped.
func (r *Replayer) each(ctx context.Context, f Filter, dryRun bool,
	act func(context.Context, *Result, []Row, *accountChecker) error) (Result, error) {
	res := Result{SkippedReasons: map[string]int{}, IDs: []string{}, DryRun: dryRun}
	if f.Empty() {
		return res, errors.New("dlq: refusing to act on every dead letter: give ids or a filter")
	}
	remaining := f.Limit // 0: no limit
	lf := f
	lf.IncludeDropped = false
	checker := &accountChecker{r: r, cache: map[string]accountState{}}
	seen := map[string]bool{}
	var after *cursor
	for {
		page := r.cfg.PageSize
		if f.Limit > 0 {
			if remaining <= 0 {
				break
			}
			page = min(page, remaining)
		}
		rows, err := r.cfg.Store.list(ctx, lf, after, page)
		if err != nil {
			return res, err
		}
		if len(rows) == 0 {
			break
		}
		last := rows[len(rows)-1]
		after = &cursor{lastFailure: last.LastFailure, id: last.ID}
		res.Matched += len(rows)
		remaining -= len(rows)
		for _, row := range rows {
			seen[row.ID] = true
		}
		if err := act(ctx, &res, rows, checker); err != nil {
			return res, err
		}
		if len(rows) < page {
			break
		}
	}
	// Account for ids that matched nothing: unknown, or dropped.
	for _, id := range f.IDs {
		if seen[id] || (f.Limit > 0 && remaining <= 0) {
			continue
		}
		seen[id] = true
		row, err := r.cfg.Store.Get(ctx, id)
		switch {
		case errors.Is(err, ErrNotFound):
			res.Matched++
			res.skip(SkipNotFound)
		case err != nil:
			return res, err
		case row.DroppedAt != nil:
			res.Matched++
			res.skip(SkipDropped)
		}
		// Otherwise it exists but another part of the filter left it out.
	}
	return res, nil
}

// republish sends one dead letter back to its original subject.
func (r *Replayer) republish(ctx context.Context, row Row) error {
	orig := nats.Header(row.Headers)
	h := streams.CopyHeaders(orig)
	origTraceparent := orig.Get("traceparent")
	h.Del("traceparent")
	h.Del("tracestate")
	if h.Get(streams.HeaderMessageID) == "" {
		// The logical id is the original Nats-Msg-Id when no explicit one
		// was set; keep it, since the new Nats-Msg-Id differs.
		if id := orig.Get(jetstream.MsgIDHeader); id != "" {
			h.Set(streams.HeaderMessageID, id)
		}
	}
	count := row.ReplayCount + 1
	h.Set(jetstream.MsgIDHeader, "replay:"+row.ID+":"+strconv.Itoa(count))
	h.Set(streams.HeaderReplayOf, row.ID)
	h.Set(streams.HeaderOriginalSubject, row.OriginalSubject)
	var links []trace.Link
	if origTraceparent != "" {
		h.Set(streams.HeaderLinkTraceparent, origTraceparent)
		lctx := streams.ExtractTrace(context.Background(), nats.Header{"traceparent": []string{origTraceparent}})
		if sc := trace.SpanContextFromContext(lctx); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{attribute.String("shardflow.link", "replay_of")}})
		}
	}
	ctx, span := r.tracer.Start(ctx, "replay dead letter",
		trace.WithNewRoot(),
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.String("shardflow.dead_letter.id", row.ID),
			attribute.Int("shardflow.replay_count", count),
			attribute.Int("shardflow.shard", row.Shard),
			attribute.String("shardflow.account", row.Account),
			attribute.String("messaging.destination.name", row.OriginalSubject),
		))
	defer span.End()
	streams.InjectTrace(ctx, h)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ack, err := r.cfg.JetStream.PublishMsg(pctx, &nats.Msg{Subject: row.OriginalSubject, Header: h, Data: row.Payload})
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "publish failed")
		return fmt.Errorf("dlq: replay %s to %s: %w", row.ID, row.OriginalSubject, err)
	}
	span.SetAttributes(attribute.Int64("messaging.nats.stream_sequence", int64(ack.Sequence)), attribute.Bool("shardflow.duplicate", ack.Duplicate))
	return nil
}

// accountState is a cached account lookup.
type accountState struct {
	known      bool
	deleted    bool
	generation int64
}

// accountChecker decides, per row, whether its account allows a replay; it
// caches lookups for the length of one call.
type accountChecker struct {
	r     *Replayer
	cache map[string]accountState
}

// check returns a skip reason, or "" when the row may be replayed.
func (c *accountChecker) check(ctx context.Context, row Row) (string, error) {
	st, ok := c.cache[row.Account]
	if !ok {
		var err error
		st, err = c.r.lookup(ctx, row.Account)
		if err != nil {
			return "", err
		}
		c.cache[row.Account] = st
	}
	switch {
	case !st.known:
		return SkipAccountUnknown, nil
	case st.deleted:
		return SkipAccountDeleted, nil
	}
	if g := nats.Header(row.Headers).Get(streams.HeaderGeneration); g != "" {
		if gen, err := strconv.ParseInt(g, 10, 64); err == nil && gen > 0 && gen < st.generation {
			// A straggler of an earlier incarnation of the account.
			return SkipAccountDeleted, nil
		}
	}
	return "", nil
}

func (r *Replayer) lookup(ctx context.Context, account string) (accountState, error) {
	if account == "" || streams.ValidateAccountID(account) != nil {
		return accountState{}, nil
	}
	if r.cfg.Accounts != nil {
		status, gen, ok := r.cfg.Accounts.AccountState(account)
		return accountState{known: ok, deleted: status == streams.StatusDeleting || status == streams.StatusDeleted, generation: gen}, nil
	}
	c, ctx, done, err := r.cfg.Store.conn(ctx)
	if err != nil {
		return accountState{}, fmt.Errorf("dlq: account %s: %w", account, err)
	}
	defer done()
	var (
		status string
		gen    int64
	)
	err = c.QueryRow(ctx, `SELECT status, generation FROM accounts WHERE id = $1`, account).Scan(&status, &gen)
	if errors.Is(err, pgx.ErrNoRows) {
		var tombstoned bool
		if err := c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM account_tombstones WHERE account_id = $1)`, account).Scan(&tombstoned); err != nil {
			return accountState{}, fmt.Errorf("dlq: account %s: %w", account, err)
		}
		return accountState{known: tombstoned, deleted: tombstoned}, nil
	}
	if err != nil {
		return accountState{}, fmt.Errorf("dlq: account %s: %w", account, err)
	}
	s := streams.AccountStatus(status)
	return accountState{known: true, deleted: s == streams.StatusDeleting || s == streams.StatusDeleted, generation: gen}, nil
}
