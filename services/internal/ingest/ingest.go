package ingest

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/streams"
)

// Directory is the part of streams.Directory ingest needs.
type Directory interface {
	ByWriteKey(key string) (streams.Account, bool)
}

// Config configures the ingest handler.
type Config struct {
	// Directory resolves write keys to accounts. Required.
	Directory Directory
	// Publisher stores events. Required.
	Publisher *streams.Publisher
	// Topology gives MaxEventBytes, THE size limit. Default DefaultTopology().
	Topology streams.Topology
	// MaxBatchBytes bounds a batch request body. Default 500 KiB (Segment's).
	MaxBatchBytes int
	// DefaultRate is the per-account ingress limit in events per second when
	// the account sets none. Default 5000.
	DefaultRate int
	// Brakes, when set, names the accounts a stage brakes (nearly all their
	// events end dead-lettered there): ingest paces them at the stage's
	// rate, refusing the rest with 429 and Retry-After (throttle.go).
	Brakes Brakes
	// Logger logs failures. Default slog.Default().
	Logger *slog.Logger
	// Meter records accepted and rejected requests. Default: a no-op.
	Meter metric.Meter
}

// Handler serves the tracking API.
type Handler struct {
	cfg      Config
	limits   schemas.Limits
	log      *slog.Logger
	accepted metric.Int64Counter
	rejected metric.Int64Counter
	events   metric.Int64Counter
	braked   metric.Int64Counter

	mu       sync.Mutex
	limiters map[string]*limiter
	brakes   map[string]*brakeLimiter
}

type limiter struct {
	l    *rate.Limiter
	perS int
}

// New returns the handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Directory == nil || cfg.Publisher == nil {
		return nil, errors.New("ingest: Config needs Directory and Publisher")
	}
	if cfg.Topology.Shards == 0 {
		cfg.Topology = streams.DefaultTopology()
	}
	cfg.MaxBatchBytes = cmp.Or(cfg.MaxBatchBytes, 500<<10)
	cfg.DefaultRate = cmp.Or(cfg.DefaultRate, 5000)
	h := &Handler{
		cfg:      cfg,
		limits:   schemas.Limits{MaxEventBytes: cfg.Topology.MaxEventBytes, MaxBatchBytes: cfg.MaxBatchBytes},
		log:      cmp.Or(cfg.Logger, slog.Default()),
		limiters: map[string]*limiter{},
		brakes:   map[string]*brakeLimiter{},
	}
	if cfg.Meter != nil {
		var err error
		if h.accepted, err = cfg.Meter.Int64Counter("shardflow_ingest_requests_accepted", metric.WithDescription("Requests answered 200.")); err != nil {
			return nil, err
		}
		if h.rejected, err = cfg.Meter.Int64Counter("shardflow_ingest_requests_rejected", metric.WithDescription("Requests refused, by HTTP status code.")); err != nil {
			return nil, err
		}
		if h.events, err = cfg.Meter.Int64Counter("shardflow_ingest_events_accepted", metric.WithDescription("Events stored, by shard.")); err != nil {
			return nil, err
		}
		if h.braked, err = cfg.Meter.Int64Counter("shardflow_ingest_requests_braked", metric.WithDescription("Requests refused (429) because a stage brakes the account: nearly all its events end dead-lettered. By shard.")); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// Routes returns the HTTP routes.
func (h *Handler) Routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/identify", func(w http.ResponseWriter, r *http.Request) { h.single(w, r, schemas.TypeIdentify) })
	mux.HandleFunc("POST /v1/track", func(w http.ResponseWriter, r *http.Request) { h.single(w, r, schemas.TypeTrack) })
	mux.HandleFunc("POST /v1/batch", h.batch)
	mux.HandleFunc("POST /v1/import", h.batch) // Segment's alias for batch
	mux.HandleFunc("POST /v1/{type}", func(w http.ResponseWriter, r *http.Request) {
		h.fail(w, r, http.StatusBadRequest, fmt.Sprintf("unknown event type %q (supported: identify, track, batch)", r.PathValue("type")), nil)
	})
	return mux
}

type errorBody struct {
	Success bool                 `json:"success"`
	Error   string               `json:"error"`
	Fields  []schemas.FieldError `json:"fields,omitempty"`
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, code int, msg string, fields []schemas.FieldError) {
	if h.rejected != nil {
		h.rejected.Add(r.Context(), 1, metric.WithAttributes(attribute.Int("code", code)))
	}
	if code >= 500 {
		h.log.ErrorContext(r.Context(), "ingest request failed", "code", code, "err", msg)
	}
	trace.SpanFromContext(r.Context()).SetAttributes(attribute.String("shardflow.reject_reason", msg))
	writeJSON(w, code, errorBody{Error: msg, Fields: fields})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// readBody reads at most limit bytes; a longer body is a 413 naming the limit.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, limit int) ([]byte, bool) {
	if r.ContentLength > int64(limit) {
		h.fail(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("body is %d bytes, over the limit of %d bytes", r.ContentLength, limit), nil)
		return nil, false
	}
	body, err := readAll(r.Body, limit, r.ContentLength)
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, "reading body: "+err.Error(), nil)
		return nil, false
	}
	if len(body) > limit {
		h.fail(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("body is over the limit of %d bytes", limit), nil)
		return nil, false
	}
	return body, true
}

// readAll reads r to its end, or to limit+1 bytes. A body whose length is
// announced (nearly all) is read into a buffer of that size, not grown to it
// by doubling as io.ReadAll does.
func readAll(r io.Reader, limit int, length int64) ([]byte, error) {
	var b bytes.Buffer
	if length > 0 && length <= int64(limit) {
		b.Grow(int(length) + bytes.MinRead) // ReadFrom wants MinRead free to find EOF
	}
	_, err := b.ReadFrom(io.LimitReader(r, int64(limit)+1))
	return b.Bytes(), err
}

// writeKey finds the write key: Basic user name, Bearer token, or the body.
func writeKey(r *http.Request, body []byte) string {
	if user, _, ok := r.BasicAuth(); ok && user != "" {
		return user
	}
	if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
		return strings.TrimSpace(strings.TrimPrefix(a, "Bearer "))
	}
	var probe struct {
		WriteKey string `json:"writeKey"`
	}
	_ = json.Unmarshal(body, &probe)
	return probe.WriteKey
}

// account authenticates the request and checks the account may send.
func (h *Handler) account(w http.ResponseWriter, r *http.Request, body []byte) (streams.Account, bool) {
	key := writeKey(r, body)
	if key == "" {
		h.fail(w, r, http.StatusUnauthorized, "missing write key: send it as the Basic auth user name, a Bearer token, or the body's writeKey", nil)
		return streams.Account{}, false
	}
	acct, ok := h.cfg.Directory.ByWriteKey(key)
	if !ok {
		h.fail(w, r, http.StatusUnauthorized, "unknown write key", nil)
		return streams.Account{}, false
	}
	trace.SpanFromContext(r.Context()).SetAttributes(attribute.String("shardflow.account", acct.ID), attribute.Int("shardflow.shard", acct.Shard))
	switch acct.Status {
	case streams.StatusActive:
		return acct, true
	case streams.StatusSuspended:
		h.fail(w, r, http.StatusForbidden, "account "+acct.ID+" is suspended", nil)
	default:
		h.fail(w, r, http.StatusGone, "account "+acct.ID+" is deleted", nil)
	}
	return streams.Account{}, false
}

// allow applies the account's rate limit to n events.
func (h *Handler) allow(w http.ResponseWriter, r *http.Request, acct streams.Account, n int) bool {
	if !h.admitBraked(w, r, acct, n) {
		return false
	}
	perS := cmp.Or(acct.RateLimit, h.cfg.DefaultRate)
	h.mu.Lock()
	l, ok := h.limiters[acct.ID]
	if !ok || l.perS != perS {
		// Burst: one second's worth, and at least one full batch.
		l = &limiter{l: rate.NewLimiter(rate.Limit(perS), max(perS, streams.MaxBatch)), perS: perS}
		h.limiters[acct.ID] = l
	}
	h.mu.Unlock()
	now := time.Now()
	res := l.l.ReserveN(now, n)
	if !res.OK() {
		h.fail(w, r, http.StatusTooManyRequests, fmt.Sprintf("%d events is over the account's burst of %d", n, l.l.Burst()), nil)
		return false
	}
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(d.Seconds()))))
		h.fail(w, r, http.StatusTooManyRequests, fmt.Sprintf("account %s is over its rate limit of %d events/s", acct.ID, perS), nil)
		return false
	}
	return true
}

func (h *Handler) decodeFail(w http.ResponseWriter, r *http.Request, err error) {
	var syn *schemas.SyntaxError
	var val *schemas.ValidationError
	var lim *schemas.LimitError
	switch {
	case errors.As(err, &lim):
		h.fail(w, r, http.StatusRequestEntityTooLarge, lim.Error(), nil)
	case errors.As(err, &syn):
		h.fail(w, r, http.StatusBadRequest, syn.Error(), nil)
	case errors.As(err, &val):
		h.fail(w, r, http.StatusBadRequest, val.Error(), val.Fields)
	default:
		h.fail(w, r, http.StatusBadRequest, err.Error(), nil)
	}
}

func (h *Handler) single(w http.ResponseWriter, r *http.Request, typ string) {
	body, ok := h.readBody(w, r, h.limits.MaxEventBytes)
	if !ok {
		return
	}
	acct, ok := h.account(w, r, body)
	if !ok || !h.admitBraked(w, r, acct, 0) {
		return
	}
	ev, err := schemas.DecodeEvent(typ, body, h.limits)
	if err != nil {
		h.decodeFail(w, r, err)
		return
	}
	ev.Type = typ
	buf := make([]byte, 0, len(body)+storedOverhead)
	msg, err := h.message(acct, ev, body, &buf, -1)
	if err != nil {
		h.decodeFail(w, r, err)
		return
	}
	if !h.allow(w, r, acct, 1) {
		return
	}
	if _, err := h.cfg.Publisher.Publish(r.Context(), msg); err != nil {
		h.publishFail(w, r, err)
		return
	}
	h.ok(w, r, acct, 1)
}

func (h *Handler) batch(w http.ResponseWriter, r *http.Request) {
	body, ok := h.readBody(w, r, h.limits.MaxBatchBytes)
	if !ok {
		return
	}
	acct, ok := h.account(w, r, body)
	if !ok || !h.admitBraked(w, r, acct, 0) {
		return
	}
	b, raw, err := schemas.DecodeBatchRaw(body, h.limits)
	if err != nil {
		h.decodeFail(w, r, err)
		return
	}
	if len(b.Batch) > streams.MaxBatch {
		h.fail(w, r, http.StatusBadRequest, fmt.Sprintf("batch: %d events, over the limit of %d events a request", len(b.Batch), streams.MaxBatch), nil)
		return
	}
	msgs := make([]streams.Message, 0, len(b.Batch))
	seen := make(map[string]int, len(b.Batch))
	// What is stored, every event in one buffer: the events as sent, with
	// a few members added (a batch context may need more; append grows it).
	buf := make([]byte, 0, len(body)+len(b.Batch)*storedOverhead)
	for i := range b.Batch {
		ev := &b.Batch[i]
		if ev.Context == nil && b.Context != nil {
			ev.Context = b.Context
		}
		var evRaw []byte
		if raw != nil {
			evRaw = raw[i]
		}
		m, err := h.message(acct, ev, evRaw, &buf, i)
		if err != nil {
			h.decodeFail(w, r, err)
			return
		}
		if j, dup := seen[m.ID]; dup {
			// The same messageId twice in one request: one event, stored once.
			h.log.DebugContext(r.Context(), "duplicate messageId in batch", "first", j, "again", i)
			continue
		}
		seen[m.ID] = i
		msgs = append(msgs, m)
	}
	if !h.allow(w, r, acct, len(b.Batch)) {
		return
	}
	if err := h.cfg.Publisher.PublishBatch(r.Context(), msgs); err != nil {
		h.publishFail(w, r, err)
		return
	}
	h.ok(w, r, acct, len(msgs))
}

func (h *Handler) ok(w http.ResponseWriter, r *http.Request, acct streams.Account, n int) {
	if h.accepted != nil {
		h.accepted.Add(r.Context(), 1)
		h.events.Add(r.Context(), int64(n), metric.WithAttributes(attribute.String("shard", strconv.Itoa(acct.Shard))))
	}
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}

func (h *Handler) publishFail(w http.ResponseWriter, r *http.Request, err error) {
	var size *streams.SizeError
	if errors.As(err, &size) {
		h.fail(w, r, http.StatusRequestEntityTooLarge, size.Error(), nil)
		return
	}
	if errors.Is(err, context.Canceled) {
		h.fail(w, r, 499, "client went away", nil)
		return
	}
	// Usually nothing was stored; but an acknowledgement lost on its way
	// back is indistinguishable from a failed publish, so say so: a retry
	// with the same messageIds is always safe (the duplicate window).
	h.fail(w, r, http.StatusServiceUnavailable, "events may not have been stored; retry with the same messageIds: "+err.Error(), nil)
}

// storedOverhead bounds what message adds to an event as sent: a type, a
// generated messageId and a timestamp.
const storedOverhead = 128

// message turns a validated event into the message to store: the messageId
// is generated when missing, the write key is not stored, and the id carries
// the account generation. raw is the JSON text ev was decoded from: the
// stored JSON, appended to *buf, copies its free-form objects rather than
// encoding them again (schemas.AppendEvent). The size limit applies to what
// is stored. item is the event's index in a batch, or -1.
func (h *Handler) message(acct streams.Account, ev *schemas.Event, raw []byte, buf *[]byte, item int) (streams.Message, error) {
	if ev.MessageID == "" {
		ev.MessageID = newID()
	}
	ev.WriteKey = ""
	if ev.Timestamp == "" {
		ev.Timestamp = time.Now().UTC().Format(time.RFC3339Nano)
	}
	start := len(*buf)
	b, err := schemas.AppendEvent(*buf, ev, raw)
	if err != nil {
		return streams.Message{}, err
	}
	*buf = b
	data := b[start:len(b):len(b)]
	if len(data) > h.limits.MaxEventBytes {
		field := "body"
		if item >= 0 {
			field = "batch[" + strconv.Itoa(item) + "]"
		}
		return streams.Message{}, &schemas.LimitError{Field: field, Size: len(data), Limit: h.limits.MaxEventBytes}
	}
	return streams.Message{
		Subject:    streams.Subject{Kind: streams.KindInbound, Shard: acct.Shard, Account: acct.ID, Type: ev.Type},
		ID:         streams.MessageID(acct.ID, acct.Generation, ev.MessageID),
		Generation: acct.Generation,
		Data:       data,
	}, nil
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
