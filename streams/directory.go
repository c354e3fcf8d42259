package streams

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DirectoryBucket is the KV bucket that distributes the account directory.
const DirectoryBucket = "shardflow_accounts"

// Account is an account's entry in the directory. Postgres is the source of
// truth; the accounts service writes every change here and every service
// instance watches it, so no service asks Postgres per message.
type Account struct {
	ID         string        `json:"id"`
	Shard      int           `json:"shard"`
	Status     AccountStatus `json:"status"`
	Generation int64         `json:"generation"`
	WriteKey   string        `json:"write_key"`
	// Secret signs webhooks (HMAC-SHA256).
	Secret string `json:"secret"`
	// RateLimit is the ingress limit in events per second; 0 means the
	// ingest default.
	RateLimit int       `json:"rate_limit,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Directory is a live, in-memory copy of the account directory, kept
// current by a KV watch (a change reaches every instance in milliseconds).
// It implements AccountGate.
type Directory struct {
	kv  jetstream.KeyValue
	log *slog.Logger

	mu      sync.RWMutex
	byID    map[string]Account
	byKey   map[string]string
	changed chan struct{} // closed and replaced on every change
	ready   chan struct{}
	stop    context.CancelFunc
	done    chan struct{}
}

// ProvisionDirectory creates or updates the directory bucket.
func ProvisionDirectory(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      DirectoryBucket,
		Description: "shardflow account directory (source of truth: Postgres)",
		History:     1,
		Replicas:    max(replicas, 1),
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return fmt.Errorf("streams: provision directory bucket: %w", err)
	}
	return nil
}

// OpenDirectory loads the directory and keeps watching it until Close. It
// returns once the current entries are loaded.
func OpenDirectory(ctx context.Context, js jetstream.JetStream, log *slog.Logger) (*Directory, error) {
	kv, err := js.KeyValue(ctx, DirectoryBucket)
	if err != nil {
		return nil, fmt.Errorf("streams: open directory bucket %s (run provisioning first): %w", DirectoryBucket, err)
	}
	if log == nil {
		log = slog.Default()
	}
	wctx, cancel := context.WithCancel(context.Background())
	d := &Directory{
		kv: kv, log: log, byID: map[string]Account{}, byKey: map[string]string{},
		changed: make(chan struct{}), ready: make(chan struct{}), stop: cancel, done: make(chan struct{}),
	}
	w, err := kv.WatchAll(wctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("streams: watch directory: %w", err)
	}
	go d.watch(wctx, w)
	select {
	case <-d.ready:
		return d, nil
	case <-ctx.Done():
		d.Close()
		return nil, fmt.Errorf("streams: load directory: %w", ctx.Err())
	}
}

func (d *Directory) watch(ctx context.Context, w jetstream.KeyWatcher) {
	defer close(d.done)
	defer func() { _ = w.Stop() }()
	readyOnce := sync.OnceFunc(func() { close(d.ready) })
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				readyOnce()
				continue
			}
			d.apply(e)
		}
	}
}

func (d *Directory) apply(e jetstream.KeyValueEntry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id := e.Key()
	if old, ok := d.byID[id]; ok {
		delete(d.byKey, old.WriteKey)
	}
	if e.Operation() != jetstream.KeyValuePut {
		delete(d.byID, id)
	} else {
		var a Account
		if err := json.Unmarshal(e.Value(), &a); err != nil {
			d.log.Error("directory: undecodable entry", "key", id, "err", err)
			return
		}
		d.byID[id] = a
		if a.WriteKey != "" {
			d.byKey[a.WriteKey] = id
		}
	}
	close(d.changed)
	d.changed = make(chan struct{})
}

// Close stops watching.
func (d *Directory) Close() {
	d.stop()
	<-d.done
}

// Lookup returns an account by id.
func (d *Directory) Lookup(id string) (Account, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	a, ok := d.byID[id]
	return a, ok
}

// ByWriteKey returns the account owning a write key.
func (d *Directory) ByWriteKey(key string) (Account, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	id, ok := d.byKey[key]
	if !ok {
		return Account{}, false
	}
	a, ok := d.byID[id]
	return a, ok
}

// AccountState implements AccountGate.
func (d *Directory) AccountState(id string) (AccountStatus, int64, bool) {
	a, ok := d.Lookup(id)
	return a.Status, a.Generation, ok
}

// Accounts returns a snapshot of every account.
func (d *Directory) Accounts() []Account {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]Account, 0, len(d.byID))
	for _, a := range d.byID {
		out = append(out, a)
	}
	return out
}

// Wait blocks until the account's entry satisfies cond, or ctx ends.
func (d *Directory) Wait(ctx context.Context, id string, cond func(Account, bool) bool) error {
	for {
		d.mu.RLock()
		a, ok := d.byID[id]
		ch := d.changed
		d.mu.RUnlock()
		if cond(a, ok) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("streams: wait for account %s: %w", id, ctx.Err())
		}
	}
}

// Put writes an account's entry (the accounts service does this).
func (d *Directory) Put(ctx context.Context, a Account) error {
	return PutAccount(ctx, d.kv, a)
}

// PutAccount writes an account's entry to the directory bucket.
func PutAccount(ctx context.Context, kv jetstream.KeyValue, a Account) error {
	if err := ValidateAccountID(a.ID); err != nil {
		return err
	}
	if a.UpdatedAt.IsZero() {
		a.UpdatedAt = time.Now().UTC()
	}
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, a.ID, b); err != nil {
		return fmt.Errorf("streams: put account %s in directory: %w", a.ID, err)
	}
	return nil
}

// ErrNoDirectory is returned by DirectoryKV when the bucket is missing.
var ErrNoDirectory = errors.New("directory bucket missing")

// DirectoryKV returns the directory bucket for writers.
func DirectoryKV(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, DirectoryBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("%w: %s (run provisioning first)", ErrNoDirectory, DirectoryBucket)
	}
	return kv, err
}
