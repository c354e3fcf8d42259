package accounts

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/streams"
)

func validateRateLimit(n int) error {
	if n < 0 || n > MaxRateLimit {
		return errorf(http.StatusBadRequest, "rate_limit: must be between 0 (ingest default) and %d events/s, got %d", MaxRateLimit, n)
	}
	return nil
}

func validateID(id string) error {
	if err := streams.ValidateAccountID(id); err != nil {
		return errorf(http.StatusBadRequest, "id: %v", err)
	}
	return nil
}

// closedError is the answer to a change of an account being or already
// deleted: 409 while deleting (wait for it), 410 once deleted.
func closedError(a row) error {
	switch a.Status {
	case streams.StatusDeleting:
		return errorf(http.StatusConflict, "account %s: deletion in progress", a.ID)
	case streams.StatusDeleted:
		return errorf(http.StatusGone, "account %s is deleted", a.ID)
	}
	return nil
}

func notFound(id string) error { return errorf(http.StatusNotFound, "account %s not found", id) }

// Create creates an account, or re-creates a deleted one with the next
// generation and new keys.
func (s *Service) Create(ctx context.Context, id string, rateLimit int) (Created, error) {
	if err := validateID(id); err != nil {
		return Created{}, err
	}
	if err := validateRateLimit(rateLimit); err != nil {
		return Created{}, err
	}
	want := row{
		ID: id, Shard: ShardOf(id, s.topo.Shards), Status: streams.StatusActive, Generation: 1,
		WriteKey: newWriteKey(), Secret: newSecret(), RateLimit: rateLimit,
	}
	var a row
	err := inTx(ctx, s.pool, func(tx pgx.Tx) error {
		old, err := getAccount(ctx, tx, id, "FOR UPDATE")
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			var ok bool
			if a, ok, err = insertAccount(ctx, tx, want); err != nil {
				return err
			} else if !ok {
				return errorf(http.StatusConflict, "account %s already exists", id)
			}
		case err != nil:
			return err
		case old.Status == streams.StatusDeleting:
			return closedError(old)
		case old.Status != streams.StatusDeleted:
			return errorf(http.StatusConflict, "account %s already exists (status %s)", id, old.Status)
		default:
			// Re-create: the saga must have finished (the row says deleted
			// from its last step on; finished_at comes right after).
			d, err := getDeletion(ctx, tx, id, old.Generation)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			if err == nil && d.FinishedAt == nil {
				return errorf(http.StatusConflict, "account %s: deletion in progress", id)
			}
			want.Generation = old.Generation + 1
			want.CreatedAt = time.Now()
			if a, err = updateAccount(ctx, tx, want); err != nil {
				return err
			}
		}
		if err := s.putDirectory(ctx, a); err != nil {
			return err
		}
		// Published before the commit: a failed publish rolls the account
		// back, and a commit failing after it leaves only an event the
		// retry publishes again with the same id.
		return s.publishEvent(ctx, a, schemas.AccountCreated, "")
	})
	if err != nil {
		return Created{}, err
	}
	s.log.InfoContext(ctx, "account created", "account", a.ID, "shard", a.Shard, "generation", a.Generation)
	return Created{ID: a.ID, Shard: a.Shard, WriteKey: a.WriteKey, Status: a.Status, Generation: a.Generation}, nil
}

// Get returns an account with its latest deletion.
func (s *Service) Get(ctx context.Context, id string) (Account, error) {
	if err := validateID(id); err != nil {
		return Account{}, err
	}
	a, err := getAccount(ctx, s.pool, id, "")
	if errors.Is(err, pgx.ErrNoRows) {
		return Account{}, notFound(id)
	}
	if err != nil {
		return Account{}, err
	}
	return s.view(ctx, a)
}

func (s *Service) view(ctx context.Context, a row) (Account, error) {
	d, err := latestDeletion(ctx, s.pool, a.ID)
	if err != nil {
		return Account{}, err
	}
	return Account{
		ID: a.ID, Shard: a.Shard, Status: a.Status, Generation: a.Generation, WriteKey: a.WriteKey,
		RateLimit: a.RateLimit, CreatedAt: a.CreatedAt, Deletion: d,
	}, nil
}

// mutate locks an account's row, lets change modify it, stores it and
// writes the directory, all before the commit, so directory writes of one
// account are serialised by the row lock.
func (s *Service) mutate(ctx context.Context, id string, change func(a *row) error) (row, error) {
	if err := validateID(id); err != nil {
		return row{}, err
	}
	var a row
	err := inTx(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		a, err = getAccount(ctx, tx, id, "FOR UPDATE")
		if errors.Is(err, pgx.ErrNoRows) {
			return notFound(id)
		}
		if err != nil {
			return err
		}
		if err := change(&a); err != nil {
			return err
		}
		if a, err = updateAccount(ctx, tx, a); err != nil {
			return err
		}
		return s.putDirectory(ctx, a)
	})
	return a, err
}

// SetRateLimit changes an account's ingress rate limit.
func (s *Service) SetRateLimit(ctx context.Context, id string, rateLimit int) (Account, error) {
	if err := validateRateLimit(rateLimit); err != nil {
		return Account{}, err
	}
	a, err := s.mutate(ctx, id, func(a *row) error {
		if err := closedError(*a); err != nil {
			return err
		}
		a.RateLimit = rateLimit
		return nil
	})
	if err != nil {
		return Account{}, err
	}
	return s.view(ctx, a)
}

// Suspend closes an account's ingress and parks its messages in the stages,
// keeping its data. Suspending a suspended account is a no-op that succeeds.
func (s *Service) Suspend(ctx context.Context, id string) (Account, error) {
	a, err := s.mutate(ctx, id, func(a *row) error {
		if err := closedError(*a); err != nil {
			return err
		}
		a.Status = streams.StatusSuspended
		return nil
	})
	if err != nil {
		return Account{}, err
	}
	if err := s.publishEvent(ctx, a, schemas.AccountSuspended, schemas.AccountSuspended+":"+randomHex(8)); err != nil {
		return Account{}, fmt.Errorf("account %s suspended, but: %w", id, err)
	}
	s.log.InfoContext(ctx, "account suspended", "account", id)
	return s.view(ctx, a)
}

// Restore reopens a suspended account and releases the messages the stages
// parked meanwhile. Restoring an active account succeeds (and releases
// whatever is still parked).
func (s *Service) Restore(ctx context.Context, id string) (Account, error) {
	a, err := s.mutate(ctx, id, func(a *row) error {
		if err := closedError(*a); err != nil {
			return err
		}
		a.Status = streams.StatusActive
		return nil
	})
	if err != nil {
		return Account{}, err
	}
	n, err := s.releaseHeld(ctx, a)
	if err != nil {
		return Account{}, fmt.Errorf("account %s restored, but: %w (restore again to retry)", id, err)
	}
	// A stage may still park a message or two until the restore reaches its
	// directory copy (milliseconds): sweep again a little later.
	s.bgWG.Add(1)
	go func() {
		defer s.bgWG.Done()
		t := time.NewTimer(s.cfg.ReleaseRecheck)
		defer t.Stop()
		select {
		case <-s.bg.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(s.bg, time.Minute)
		defer cancel()
		if n, err := s.releaseHeld(ctx, a); err != nil {
			s.log.WarnContext(ctx, "second release of held messages failed (restore again to retry)", "account", a.ID, "err", err)
		} else if n > 0 {
			s.log.InfoContext(ctx, "held messages released late", "account", a.ID, "released", n)
		}
	}()
	if err := s.publishEvent(ctx, a, schemas.AccountRestored, schemas.AccountRestored+":"+randomHex(8)); err != nil {
		return Account{}, fmt.Errorf("account %s restored, but: %w", id, err)
	}
	s.log.InfoContext(ctx, "account restored", "account", id, "released", n)
	return s.view(ctx, a)
}

func (s *Service) releaseHeld(ctx context.Context, a row) (int, error) {
	total := 0
	for _, kind := range []streams.Kind{streams.KindInbound, streams.KindOutbound} {
		n, err := streams.ReleaseHeld(ctx, s.js, kind, a.Shard, a.ID)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// Delete starts an account's deletion (the saga runs asynchronously) and
// returns at once. Deleting an account being deleted answers the same;
// deleting a deleted account answers its final state.
func (s *Service) Delete(ctx context.Context, id string) (resp DeleteAccepted, done bool, err error) {
	if err := validateID(id); err != nil {
		return resp, false, err
	}
	var a row
	var republish bool
	err = inTx(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		a, err = getAccount(ctx, tx, id, "FOR UPDATE")
		if errors.Is(err, pgx.ErrNoRows) {
			return notFound(id)
		}
		if err != nil {
			return err
		}
		switch a.Status {
		case streams.StatusDeleted:
			return nil
		case streams.StatusDeleting:
			// If the saga has not finished a step yet, the event may never
			// have been published (a crash right after the commit): make
			// sure of the directory and the event again; both are
			// idempotent.
			d, err := getDeletion(ctx, tx, id, a.Generation)
			if errors.Is(err, pgx.ErrNoRows) {
				// Cannot happen (one transaction writes both), but heal it:
				// the saga needs the record.
				d.Step = StepStarted
				if _, err = tx.Exec(ctx, `INSERT INTO account_deletions (account_id, generation) VALUES ($1, $2)
					ON CONFLICT DO NOTHING`, a.ID, a.Generation); err != nil {
					return fmt.Errorf("record deletion of %s: %w", a.ID, err)
				}
			}
			if err != nil {
				return err
			}
			republish = d.Step == StepStarted
			if republish {
				return s.putDirectory(ctx, a)
			}
			return nil
		}
		// Step 1 of the saga: deleting, next generation, a deletion record,
		// and ingress closed (the directory) before the commit.
		a.Status = streams.StatusDeleting
		a.Generation++
		if a, err = updateAccount(ctx, tx, a); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO account_deletions (account_id, generation) VALUES ($1, $2)
			ON CONFLICT DO NOTHING`, a.ID, a.Generation); err != nil {
			return fmt.Errorf("record deletion of %s: %w", a.ID, err)
		}
		republish = true
		return s.putDirectory(ctx, a)
	})
	if err != nil {
		return resp, false, err
	}
	resp = DeleteAccepted{ID: a.ID, Status: a.Status, Generation: a.Generation}
	if a.Status == streams.StatusDeleted {
		return resp, true, nil
	}
	if republish {
		// After the commit: the saga needs the deletion record.
		if err := s.publishEvent(ctx, a, schemas.AccountDeleted, ""); err != nil {
			return resp, false, fmt.Errorf("account %s is deleting and its ingress closed, but: %w (delete again to retry)", id, err)
		}
		s.log.InfoContext(ctx, "account deletion started", "account", a.ID, "shard", a.Shard, "generation", a.Generation)
	}
	return resp, false, nil
}

// validateTriggerName accepts a subject-safe token of 1 to 64 characters.
func validateTriggerName(name string) error {
	if name == "" || len(name) > 64 {
		return errorf(http.StatusBadRequest, "name: must be 1 to 64 characters, got %d", len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || ((c == '-' || c == '_') && i > 0)
		if !ok {
			return errorf(http.StatusBadRequest, "name: %q: only letters, digits, '-' and '_' are allowed, starting with a letter or digit", name)
		}
	}
	return nil
}

// MaxEventNameLen is the longest trigger event name accepted.
const MaxEventNameLen = 200

func validateTrigger(t Trigger) error {
	if err := validateTriggerName(t.Name); err != nil {
		return err
	}
	if strings.TrimSpace(t.Event) == "" {
		return errorf(http.StatusBadRequest, "event: required (the name of the tracked event that fires the trigger)")
	}
	if len(t.Event) > MaxEventNameLen {
		return errorf(http.StatusBadRequest, "event: %d characters, over the limit of %d", len(t.Event), MaxEventNameLen)
	}
	switch t.Channel {
	case schemas.ChannelWebhook:
		u, err := url.Parse(t.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return errorf(http.StatusBadRequest, "url: a webhook needs an absolute http(s) URL, got %q", t.URL)
		}
	case schemas.ChannelEmail:
		addr, ok := strings.CutPrefix(t.URL, "mailto:")
		if !ok {
			return errorf(http.StatusBadRequest, "url: an email trigger needs a mailto: URL, got %q", t.URL)
		}
		if a, err := mail.ParseAddress(addr); err != nil || a.Address != addr {
			return errorf(http.StatusBadRequest, "url: %q is not a single e-mail address", addr)
		}
	default:
		return errorf(http.StatusBadRequest, "channel: must be %q or %q, got %q", schemas.ChannelWebhook, schemas.ChannelEmail, t.Channel)
	}
	return nil
}

// PutTrigger creates or replaces an account's trigger, in the database of
// the account's shard.
//
// The main database's transaction holds the account row FOR SHARE until the
// trigger is written: a deletion (FOR UPDATE) cannot start in between, so no
// trigger is written after the saga deleted them. The trigger's write
// commits (in the shard's database) before that transaction does; if the
// latter then fails, the trigger of a live account is there and the
// client's retry writes it again.
func (s *Service) PutTrigger(ctx context.Context, t Trigger) (Trigger, error) {
	if err := validateID(t.Account); err != nil {
		return t, err
	}
	if err := validateTrigger(t); err != nil {
		return t, err
	}
	var out Trigger
	err := inTx(ctx, s.pool, func(tx pgx.Tx) error {
		a, err := getAccount(ctx, tx, t.Account, "FOR SHARE")
		if errors.Is(err, pgx.ErrNoRows) {
			return notFound(t.Account)
		}
		if err != nil {
			return err
		}
		if a.Status == streams.StatusDeleting || a.Status == streams.StatusDeleted {
			return errorf(http.StatusGone, "account %s is %s", a.ID, a.Status)
		}
		var q querier = tx
		if pool, isMain := s.shardPool(a.Shard); !isMain {
			q = pool
		}
		out, err = upsertTrigger(ctx, q, t)
		if err != nil {
			return fmt.Errorf("shard %d database: %w", a.Shard, err)
		}
		return nil
	})
	return out, err
}

// upsertTrigger writes a trigger and returns it as stored.
func upsertTrigger(ctx context.Context, q querier, t Trigger) (Trigger, error) {
	out, err := scanTrigger(q.QueryRow(ctx, `
		INSERT INTO triggers (account_id, name, event, channel, url) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (account_id, name) DO UPDATE SET event = EXCLUDED.event, channel = EXCLUDED.channel, url = EXCLUDED.url
		RETURNING `+triggerCols, t.Account, t.Name, t.Event, t.Channel, t.URL))
	if err != nil {
		return out, fmt.Errorf("write trigger %s of %s: %w", t.Name, t.Account, err)
	}
	return out, nil
}

// ListTriggers lists an account's triggers by name, from the database of
// the account's shard.
func (s *Service) ListTriggers(ctx context.Context, id string) (Triggers, error) {
	if err := validateID(id); err != nil {
		return Triggers{}, err
	}
	a, err := getAccount(ctx, s.pool, id, "")
	if errors.Is(err, pgx.ErrNoRows) {
		return Triggers{}, notFound(id)
	} else if err != nil {
		return Triggers{}, err
	}
	pool, _ := s.shardPool(a.Shard)
	rows, err := pool.Query(ctx, `SELECT `+triggerCols+` FROM triggers WHERE account_id = $1 ORDER BY name`, id)
	if err != nil {
		return Triggers{}, fmt.Errorf("list triggers of %s (shard %d database): %w", id, a.Shard, err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Trigger, error) { return scanTrigger(r) })
	if err != nil {
		return Triggers{}, fmt.Errorf("list triggers of %s (shard %d database): %w", id, a.Shard, err)
	}
	return Triggers{Triggers: append([]Trigger{}, list...)}, nil
}
