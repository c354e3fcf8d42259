package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shardflow/shardflow/streams"
)

// Header names of a webhook delivery (services/internal/sender sets them).
const (
	headerSignature = "Shardflow-Signature"
	headerAccount   = "Shardflow-Account"
)

// accountDirectory is what the sink needs of streams.Directory.
type accountDirectory interface {
	Lookup(id string) (streams.Account, bool)
}

// sink is the built-in webhook receiver: it checks each delivery's signature
// against the account's secret and counts deliveries per account and shard.
type sink struct {
	dir    accountDirectory
	log    *slog.Logger
	shards []atomic.Int64

	mu        sync.Mutex
	byAccount map[string]int64
	rejected  map[string]int64 // bad or missing signature, by account
}

func newSink(dir accountDirectory, shards int, log *slog.Logger) *sink {
	return &sink{dir: dir, log: log, shards: make([]atomic.Int64, shards), byAccount: map[string]int64{}, rejected: map[string]int64{}}
}

// sign is the expected Shardflow-Signature of body under secret.
func sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

func (s *sink) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /hook", s.hook)
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.snapshot())
	})
	return mux
}

// hook answers a delivery: 200 when signed with the account's secret, 401
// when not (the sender dead-letters it: a bad signature is a bug worth
// seeing), 503 for an account the directory does not know yet (retried).
func (s *sink) hook(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	id := r.Header.Get(headerAccount)
	acct, ok := s.dir.Lookup(id)
	if !ok {
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("unknown account %q", id), http.StatusServiceUnavailable)
		return
	}
	got := r.Header.Get(headerSignature)
	if !hmac.Equal([]byte(got), []byte(sign(acct.Secret, body))) {
		s.mu.Lock()
		s.rejected[id]++
		first := s.rejected[id] == 1
		s.mu.Unlock()
		if first {
			s.log.Warn("webhook sink: bad signature", "account", id, "signature", got)
		}
		http.Error(w, "bad "+headerSignature, http.StatusUnauthorized)
		return
	}
	s.mu.Lock()
	s.byAccount[id]++
	s.mu.Unlock()
	if acct.Shard >= 0 && acct.Shard < len(s.shards) {
		s.shards[acct.Shard].Add(1)
	}
	w.WriteHeader(http.StatusOK)
}

// sinkStats are the sink's counters.
type sinkStats struct {
	ByAccount map[string]int64 `json:"by_account"`
	ByShard   []int64          `json:"by_shard"`
	Rejected  map[string]int64 `json:"rejected_signatures,omitempty"`
}

func (s *sink) snapshot() sinkStats {
	st := sinkStats{ByAccount: map[string]int64{}, ByShard: make([]int64, len(s.shards)), Rejected: map[string]int64{}}
	s.mu.Lock()
	for k, v := range s.byAccount {
		st.ByAccount[k] = v
	}
	for k, v := range s.rejected {
		st.Rejected[k] = v
	}
	s.mu.Unlock()
	for i := range s.shards {
		st.ByShard[i] = s.shards[i].Load()
	}
	return st
}

func (s *sink) delivered(shard int) int64 { return s.shards[shard].Load() }

// serve listens on addr and returns the sink's base URL and a function that
// stops it (safe to call again).
func (s *sink) serve(addr string) (string, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("webhook sink: listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	var once sync.Once
	return "http://" + ln.Addr().String(), func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_ = srv.Shutdown(ctx)
		})
	}, nil
}
