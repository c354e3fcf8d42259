package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/streams"
)

// Deletion metric names (Prometheus adds _seconds and _total).
const (
	MetricPurgeDuration  = "shardflow_deletion_purge_duration"
	MetricMessagesPurged = "shardflow_deletion_messages_purged"
)

type sagaMetrics struct {
	purgeDuration metric.Float64Histogram
	purged        metric.Int64Counter
}

func newSagaMetrics(m metric.Meter) (*sagaMetrics, error) {
	d, err := m.Float64Histogram(MetricPurgeDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of one filtered purge of a deleted account's subjects, by stream kind."),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
	if err != nil {
		return nil, err
	}
	c, err := m.Int64Counter(MetricMessagesPurged,
		metric.WithDescription("Messages removed by account deletions, by stream kind."))
	if err != nil {
		return nil, err
	}
	return &sagaMetrics{purgeDuration: d, purged: c}, nil
}

// purgedKinds are the kinds whose streams the saga purges. The accounts
// stream keeps its lifecycle events (history, and the saga's own event).
var purgedKinds = []streams.Kind{streams.KindInbound, streams.KindOutbound, streams.KindDeadLetter}

var (
	// errPermanent marks a saga failure no retry can fix.
	errPermanent = errors.New("permanent")
	// errBusy: another worker is running the same account's saga.
	errBusy = errors.New("deletion saga of this account is running elsewhere")
)

// HandleEvent is the handler of the accounts stage (streams.StageAccounts):
// it runs the deletion saga for deleted events and acknowledges the other
// lifecycle events. The deleted event is acknowledged only once the saga is
// complete; any failure before that leaves it to be redelivered, and the
// redelivery resumes the saga after its last recorded step.
func (s *Service) HandleEvent(ctx context.Context, m *streams.Msg) streams.Outcome {
	if err := schemas.ValidateAccountEvent(m.Data); err != nil {
		return streams.DeadLetter(streams.ClassSchemaInvalid, err)
	}
	var ev schemas.AccountEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return streams.DeadLetter(streams.ClassUndecodable, err)
	}
	if ev.Account != m.Subject.Account || ev.Type != m.Subject.Type {
		return streams.DeadLetter(streams.ClassPermanent, fmt.Errorf("event %s of %s published on subject %s", ev.Type, ev.Account, m.Subject))
	}
	if ev.Type != schemas.AccountDeleted {
		return streams.Ack()
	}
	log := s.log.With("account", ev.Account, "generation", ev.Generation, "delivery", m.Delivered)
	err := s.runSaga(ctx, log, ev.Account, ev.Generation)
	switch {
	case err == nil:
		return streams.Ack()
	case errors.Is(err, errPermanent):
		log.ErrorContext(ctx, "account deletion cannot proceed", "err", err)
		return streams.DeadLetter(streams.ClassPermanent, err)
	case errors.Is(err, errBusy), ctx.Err() != nil:
		return streams.Retry(err)
	}
	if dep := s.dependencyDown(ctx, m.Subject.Shard); dep != nil {
		log.WarnContext(ctx, "account deletion waits for a dependency", "err", err, "dependency", dep)
		return streams.Unavailable(dep)
	}
	log.WarnContext(ctx, "account deletion failed; the event will be redelivered and resume it", "err", err)
	return streams.Retry(err)
}

// dependencyDown returns an error when NATS, the main database or the
// database of shard's rows is unreachable.
func (s *Service) dependencyDown(ctx context.Context, shard int) error {
	if nc := s.js.Conn(); !nc.IsConnected() {
		return fmt.Errorf("nats: %s", nc.Status())
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.pool.Ping(pctx); err != nil {
		return fmt.Errorf("postgres (main database): %w", err)
	}
	if pool, isMain := s.shardPool(shard); !isMain {
		if err := pool.Ping(pctx); err != nil {
			return fmt.Errorf("postgres (shard %d database): %w", shard, err)
		}
	}
	return nil
}

// lockKey is the advisory lock key of an account's saga.
func lockKey(id string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("shardflow account deletion " + id))
	return int64(h.Sum64())
}

// saga is one run of the deletion saga. All its work in the main database
// goes through conn, the connection holding the advisory lock, so a saga
// never needs a second connection from the main pool (no pool exhaustion
// however many run at once). Its work in the shard's database (deleting
// people, triggers and deliveries) takes a connection of the shard's own
// pool for one transaction, or goes through conn when the shard's rows are
// in the main pool's database.
type saga struct {
	s    *Service
	conn *pgxpool.Conn
	id   string
	d    Deletion
	a    row
}

func (s *Service) runSaga(ctx context.Context, log *slog.Logger, id string, gen int64) error {
	select {
	case s.sagas <- struct{}{}:
		defer func() { <-s.sagas }()
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire connection: %w", err)
	}
	key := lockKey(id)
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&locked); err != nil {
		conn.Release()
		return fmt.Errorf("lock saga of %s: %w", id, err)
	}
	if !locked {
		conn.Release()
		return errBusy
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, uerr := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, key); uerr != nil {
			// Closing the session is the other way to drop the lock; the
			// pool discards a closed connection.
			_ = conn.Conn().Close(uctx)
		}
		conn.Release()
	}()

	d, err := getDeletion(ctx, conn, id, gen)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: no deletion of account %s generation %d is recorded", errPermanent, id, gen)
	}
	if err != nil {
		return err
	}
	if d.FinishedAt != nil {
		return nil // done; a redelivery after the last step
	}
	a, err := getAccount(ctx, conn, id, "")
	if err != nil {
		return err
	}
	if a.Generation != gen || (a.Status != streams.StatusDeleting && a.Status != streams.StatusDeleted) {
		return fmt.Errorf("%w: account %s is %s at generation %d, but its deletion of generation %d is unfinished",
			errPermanent, id, a.Status, a.Generation, gen)
	}
	sg := &saga{s: s, conn: conn, id: id, d: d, a: a}
	steps := map[string]func(context.Context) error{
		StepIngressClosed: sg.closeIngress,
		StepPurged:        sg.purge,
		StepRowsDeleted:   sg.deleteRows,
		StepVerified:      sg.verify,
		StepSecondPurge:   sg.secondPurge,
		StepDeleted:       sg.finish,
	}
	for _, step := range Steps {
		if _, done := sg.d.Audit.Steps[step]; done {
			continue
		}
		if err := steps[step](ctx); err != nil {
			return fmt.Errorf("deletion of %s, step %s: %w", id, step, err)
		}
		log.InfoContext(ctx, "account deletion step done", "step", step)
		if s.cfg.AfterStep != nil {
			if err := s.cfg.AfterStep(ctx, id, gen, step); err != nil {
				return fmt.Errorf("deletion of %s, after step %s: %w", id, step, err)
			}
		}
	}
	return nil
}

// done marks step finished in the in-memory record (save it after).
func (sg *saga) done(step string) {
	sg.d.Step = step
	sg.d.Audit.Steps[step] = time.Now().UTC()
}

func (sg *saga) save(ctx context.Context, q querier) error {
	return saveDeletion(ctx, q, sg.id, sg.d)
}

// closeIngress makes sure the directory says deleting (the DELETE wrote it
// before its commit; this covers a lost write).
func (sg *saga) closeIngress(ctx context.Context) error {
	closed := false
	if e, err := sg.s.kv.Get(ctx, sg.id); err == nil {
		var have streams.Account
		if json.Unmarshal(e.Value(), &have) == nil && have.Generation >= sg.a.Generation &&
			(have.Status == streams.StatusDeleting || have.Status == streams.StatusDeleted) {
			closed = true
		}
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("directory: read %s: %w", sg.id, err)
	}
	if !closed {
		if err := inTx(ctx, sg.conn, func(tx pgx.Tx) error {
			a, err := getAccount(ctx, tx, sg.id, "FOR UPDATE")
			if err != nil {
				return err
			}
			return sg.s.putDirectory(ctx, a)
		}); err != nil {
			return err
		}
	}
	sg.done(StepIngressClosed)
	return sg.save(ctx, sg.conn)
}

// purgeAll purges the account's filter from each purged stream not yet in
// counts, recording each count as soon as it is known, so a resume after a
// partial purge keeps the counts it already has.
func (sg *saga) purgeAll(ctx context.Context, counts map[string]uint64) error {
	for _, kind := range purgedKinds {
		stream := streams.StreamName(kind, sg.a.Shard)
		if _, ok := counts[stream]; ok {
			continue
		}
		n, err := sg.s.purgeOne(ctx, kind, sg.a.Shard, sg.id)
		if err != nil {
			return err
		}
		counts[stream] = n
		if err := sg.save(ctx, sg.conn); err != nil {
			return err
		}
	}
	return nil
}

func (s *Service) purgeOne(ctx context.Context, kind streams.Kind, shard int, id string) (uint64, error) {
	start := time.Now()
	n, err := streams.PurgeAccount(ctx, s.js, kind, shard, id)
	if err != nil {
		return 0, err
	}
	attrs := metric.WithAttributeSet(attribute.NewSet(attribute.String("stream_kind", string(kind))))
	s.met.purgeDuration.Record(ctx, time.Since(start).Seconds(), attrs)
	s.met.purged.Add(ctx, int64(n), attrs)
	return n, nil
}

func (sg *saga) purge(ctx context.Context) error {
	if err := sg.purgeAll(ctx, sg.d.Audit.Purged); err != nil {
		return err
	}
	sg.done(StepPurged)
	return sg.save(ctx, sg.conn)
}

// deleteRows deletes the account's rows and records the counts.
func (sg *saga) deleteRows(ctx context.Context) error {
	return sg.deleteRowsStep(ctx, StepRowsDeleted, func(counts map[string]int64) { sg.d.Audit.RowsDeleted = counts })
}

// deleteRowsStep deletes the account's rows in two databases and finishes
// step with their counts, exact whatever crashes:
//
//  1. in the shard's database, people, triggers and deliveries, with a
//     receipt of the counts (deletion_receipts) in the same transaction;
//     a resumed saga that finds the receipt takes its counts and deletes
//     nothing there, so a crash between the two databases' commits loses no
//     count and counts no row twice (rows written after the receipt, by
//     handlers in flight, are the second purge's to delete);
//  2. in the main database, dead letters, and the audit with every count
//     and the step finished, in one transaction.
func (sg *saga) deleteRowsStep(ctx context.Context, step string, record func(map[string]int64)) error {
	counts, err := sg.deleteShardRows(ctx, step)
	if err != nil {
		return err
	}
	if hook := sg.s.afterShardRowsDeleted; hook != nil {
		if err := hook(step); err != nil {
			return err
		}
	}
	return inTx(ctx, sg.conn, func(tx pgx.Tx) error {
		mainCounts, err := deleteRows(ctx, tx, sg.id, mainAccountTables)
		if err != nil {
			return err
		}
		maps.Copy(counts, mainCounts)
		record(counts)
		sg.done(step)
		return sg.save(ctx, tx)
	})
}

// deleteShardRows deletes the account's rows in its shard's database once
// per step, returning the counts: those of this deletion, or those its
// receipt recorded when an earlier attempt already committed it.
func (sg *saga) deleteShardRows(ctx context.Context, step string) (map[string]int64, error) {
	var q txBeginner = sg.conn
	if pool, isMain := sg.s.shardPool(sg.a.Shard); !isMain {
		q = pool
	}
	var counts map[string]int64
	err := inTx(ctx, q, func(tx pgx.Tx) error {
		var found bool
		var err error
		if counts, found, err = readReceipt(ctx, tx, sg.id, sg.d.Generation, step); err != nil || found {
			return err
		}
		if counts, err = deleteRows(ctx, tx, sg.id, shardAccountTables); err != nil {
			return err
		}
		return writeReceipt(ctx, tx, sg.id, sg.d.Generation, step, counts)
	})
	if err != nil {
		return nil, fmt.Errorf("shard %d database: %w", sg.a.Shard, err)
	}
	return counts, nil
}

// verify checks that nothing of the account is left in the purged streams
// (purging again what is) and records where the shard's stage consumers
// stand, to show they were left intact.
func (sg *saga) verify(ctx context.Context) error {
	js := sg.s.js
	for _, kind := range purgedKinds {
		stream := streams.StreamName(kind, sg.a.Shard)
		filter := streams.AccountFilter(kind, sg.a.Shard, sg.id)
		left, err := streams.CountSubject(ctx, js, stream, filter)
		if err != nil {
			return err
		}
		if left == 0 {
			continue
		}
		n, err := sg.s.purgeOne(ctx, kind, sg.a.Shard, sg.id)
		if err != nil {
			return err
		}
		if sg.d.Audit.VerifyPurged == nil {
			sg.d.Audit.VerifyPurged = map[string]uint64{}
		}
		sg.d.Audit.VerifyPurged[stream] += n
		if left, err = streams.CountSubject(ctx, js, stream, filter); err != nil {
			return err
		} else if left > 0 {
			return fmt.Errorf("%d messages of %s still in %s after purging again", left, filter, stream)
		}
	}
	for _, spec := range sg.s.topo.Consumers {
		if spec.Kind != streams.KindInbound && spec.Kind != streams.KindOutbound && spec.Kind != streams.KindDeadLetter {
			continue
		}
		stream := streams.StreamName(spec.Kind, sg.a.Shard)
		pos := ConsumerPosition{}
		c, err := js.Consumer(ctx, stream, spec.Name)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			// Not the deletion's doing and not its to fix: record it.
			sg.s.log.ErrorContext(ctx, "stage consumer missing (run provisioning)", "stream", stream, "consumer", spec.Name)
		case err != nil:
			return fmt.Errorf("consumer %s on %s: %w", spec.Name, stream, err)
		default:
			info := c.CachedInfo()
			pos = ConsumerPosition{
				Exists:             true,
				DeliveredStreamSeq: info.Delivered.Stream, DeliveredSeq: info.Delivered.Consumer,
				AckFloorStreamSeq: info.AckFloor.Stream, AckFloorSeq: info.AckFloor.Consumer,
				NumPending: info.NumPending, NumAckPending: info.NumAckPending,
			}
		}
		sg.d.Audit.Consumers[stream+"/"+spec.Name] = pos
	}
	sg.done(StepVerified)
	return sg.save(ctx, sg.conn)
}

// secondPurge waits out the grace period (from verification, so a resume
// does not wait again), then purges again and deletes rows written late by
// handlers that were in flight when the account closed.
func (sg *saga) secondPurge(ctx context.Context) error {
	if wait := sg.s.cfg.DeletionGrace - time.Since(sg.d.Audit.Steps[StepVerified]); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.C:
		}
	}
	if err := sg.purgeAll(ctx, sg.d.Audit.SecondPurge); err != nil {
		return err
	}
	return sg.deleteRowsStep(ctx, StepSecondPurge, func(counts map[string]int64) { sg.d.Audit.LateRowsDeleted = counts })
}

// finish marks the account deleted, keeps a tombstone, writes the directory
// and closes the deletion record, in one transaction holding the row lock.
func (sg *saga) finish(ctx context.Context) error {
	return inTx(ctx, sg.conn, func(tx pgx.Tx) error {
		a, err := getAccount(ctx, tx, sg.id, "FOR UPDATE")
		if err != nil {
			return err
		}
		a.Status = streams.StatusDeleted
		if a, err = updateAccount(ctx, tx, a); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO account_tombstones (account_id, generation) VALUES ($1, $2)
			ON CONFLICT DO NOTHING`, sg.id, a.Generation); err != nil {
			return fmt.Errorf("tombstone: %w", err)
		}
		if err := sg.s.putDirectory(ctx, a); err != nil {
			return err
		}
		sg.done(StepDeleted)
		now := sg.d.Audit.Steps[StepDeleted]
		sg.d.FinishedAt = &now
		return sg.save(ctx, tx)
	})
}
