package dlq

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shardflow/shardflow/streams"
)

// maxBodyBytes bounds a replay or drop request body.
const maxBodyBytes = 1 << 20

// Handler serves the dead-letter admin API. Every request needs
// "Authorization: Bearer <adminToken>" (401 otherwise; an empty adminToken
// refuses every request). Errors are JSON {"error": "..."} naming the bad
// parameter (400).
//
//	GET  /v1/deadletters?shard=&account=&stage=&reason=&since=&until=&limit=&include_dropped=
//	     → {"dead_letters": [...], "counts": {"<reason>": n}, "total": n}
//	       (counts and total cover every match; dead_letters at most limit,
//	       default 100, max 1000; since/until are RFC 3339 and bound the
//	       last failure)
//	GET  /v1/deadletters/{id}
//	     → the dead letter with its envelope fields, headers, payload
//	       (base64, and payload_json when it is JSON), attempts, trace_id;
//	       404 if unknown
//	POST /v1/deadletters/replay, POST /v1/deadletters/drop
//	     {"ids": [...], "shard": n, "account": "", "stage": "", "reason": "",
//	      "since": "RFC3339", "until": "RFC3339", "limit": n, "dry_run": bool}
//	     → the Result; a body with neither ids nor a filter is refused.
//
// replayer may be nil (a read-only API): replay and drop then answer 501.
func Handler(store *Store, replayer *Replayer, adminToken string) http.Handler {
	h := &api{store: store, token: []byte(adminToken), log: slog.Default()}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/deadletters", h.list)
	mux.HandleFunc("GET /v1/deadletters/{id}", h.get)
	if replayer != nil {
		mux.HandleFunc("POST /v1/deadletters/replay", h.act(replayer.Replay))
		mux.HandleFunc("POST /v1/deadletters/drop", h.act(replayer.Drop))
	} else {
		notHere := func(w http.ResponseWriter, _ *http.Request) {
			writeError(w, http.StatusNotImplemented, "replay and drop are not available on this server")
		}
		mux.HandleFunc("POST /v1/deadletters/replay", notHere)
		mux.HandleFunc("POST /v1/deadletters/drop", notHere)
	}
	return h.auth(mux)
}

type api struct {
	store *Store
	token []byte
	log   *slog.Logger
}

func (h *api) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || len(h.token) == 0 || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), h.token) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="shardflow"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// listItem is a dead letter in a listing (no payload or headers).
type listItem struct {
	ID              string     `json:"id"`
	Shard           int        `json:"shard"`
	Account         string     `json:"account"`
	Stage           string     `json:"stage"`
	ErrorClass      string     `json:"error_class"`
	Error           string     `json:"error"`
	Attempts        int        `json:"attempts"`
	OriginalSubject string     `json:"original_subject"`
	TraceID         string     `json:"trace_id"`
	FirstFailure    time.Time  `json:"first_failure"`
	LastFailure     time.Time  `json:"last_failure"`
	OriginStream    string     `json:"origin_stream"`
	OriginSeq       uint64     `json:"origin_seq"`
	DLStream        string     `json:"dl_stream"`
	DLSeq           uint64     `json:"dl_seq"`
	IndexedAt       time.Time  `json:"indexed_at"`
	ReplayedAt      *time.Time `json:"replayed_at,omitempty"`
	ReplayCount     int        `json:"replay_count"`
	DroppedAt       *time.Time `json:"dropped_at,omitempty"`
}

// detail is one dead letter with everything.
type detail struct {
	listItem
	Headers     map[string][]string `json:"headers"`
	Payload     []byte              `json:"payload"`
	PayloadJSON json.RawMessage     `json:"payload_json,omitempty"`
}

func item(r Row) listItem {
	it := listItem{
		ID: r.ID, Shard: r.Shard, Account: r.Account, Stage: r.Stage, ErrorClass: r.ErrorClass, Error: r.Error,
		Attempts: r.Attempts, OriginalSubject: r.OriginalSubject, TraceID: r.TraceID,
		FirstFailure: r.FirstFailure, LastFailure: r.LastFailure, DLStream: r.DLStream, DLSeq: r.DLSeq,
		IndexedAt: r.CreatedAt, ReplayedAt: r.ReplayedAt, ReplayCount: r.ReplayCount, DroppedAt: r.DroppedAt,
	}
	if i := strings.LastIndexByte(r.ID, ':'); i > 0 {
		if seq, err := strconv.ParseUint(r.ID[i+1:], 10, 64); err == nil {
			it.OriginStream, it.OriginSeq = r.ID[:i], seq
		}
	}
	return it
}

// listParams are the query parameters of the listing.
var listParams = map[string]bool{"shard": true, "account": true, "stage": true, "reason": true,
	"since": true, "until": true, "limit": true, "include_dropped": true}

func (h *api) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	for k := range q {
		if !listParams[k] {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown parameter %q", k))
			return
		}
	}
	var (
		f   Filter
		err error
	)
	if v := q.Get("shard"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("shard: %q is not a shard number", v))
			return
		}
		f.Shard = &n
	}
	f.Account, f.Stage, f.Reason = q.Get("account"), q.Get("stage"), q.Get("reason")
	if f.Since, err = parseTime("since", q.Get("since")); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if f.Until, err = parseTime("until", q.Get("until")); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxLimit {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: %q is not a number in 1..%d", v, MaxLimit))
			return
		}
		f.Limit = n
	}
	if v := q.Get("include_dropped"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("include_dropped: %q is not a boolean", v))
			return
		}
		f.IncludeDropped = b
	}
	if msg := checkFilter(f); msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return
	}
	rows, err := h.store.List(r.Context(), f)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	counts, err := h.store.Counts(r.Context(), f)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	items := make([]listItem, len(rows))
	for i, row := range rows {
		items[i] = item(row)
	}
	writeJSON(w, http.StatusOK, map[string]any{"dead_letters": items, "counts": counts, "total": total})
}

func (h *api) get(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	row, err := h.store.Get(r.Context(), id)
	if errors.Is(err, ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no dead letter %q", id))
		return
	}
	if err != nil {
		h.internal(w, r, err)
		return
	}
	d := detail{listItem: item(row), Headers: row.Headers, Payload: row.Payload}
	if d.Payload == nil {
		d.Payload = []byte{}
	}
	if utf8.Valid(row.Payload) && json.Valid(row.Payload) {
		d.PayloadJSON = json.RawMessage(row.Payload)
	}
	writeJSON(w, http.StatusOK, d)
}

// actRequest is the body of replay and drop.
type actRequest struct {
	IDs     []string `json:"ids"`
	Shard   *int     `json:"shard"`
	Account string   `json:"account"`
	Stage   string   `json:"stage"`
	Reason  string   `json:"reason"`
	Since   string   `json:"since"`
	Until   string   `json:"until"`
	Limit   int      `json:"limit"`
	DryRun  bool     `json:"dry_run"`
}

func (h *api) act(do func(ctx context.Context, f Filter, dryRun bool) (Result, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req actRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "body: "+err.Error())
			return
		}
		f := Filter{IDs: req.IDs, Shard: req.Shard, Account: req.Account, Stage: req.Stage, Reason: req.Reason, Limit: req.Limit}
		var err error
		if f.Since, err = parseTime("since", req.Since); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if f.Until, err = parseTime("until", req.Until); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if req.Shard != nil && *req.Shard < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("shard: %d is not a shard number", *req.Shard))
			return
		}
		if req.Limit < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: %d is negative", req.Limit))
			return
		}
		for _, id := range req.IDs {
			if id == "" {
				writeError(w, http.StatusBadRequest, "ids: empty id")
				return
			}
		}
		if msg := checkFilter(f); msg != "" {
			writeError(w, http.StatusBadRequest, msg)
			return
		}
		if f.Empty() {
			writeError(w, http.StatusBadRequest, "refusing to act on every dead letter: give ids or a filter")
			return
		}
		res, err := do(r.Context(), f, req.DryRun)
		if err != nil {
			h.log.ErrorContext(r.Context(), "dead-letter action failed", "path", r.URL.Path, "done", res, "err", err)
			status := http.StatusInternalServerError
			if IsUnavailable(err) {
				status = http.StatusServiceUnavailable
			}
			writeJSON(w, status, map[string]any{"error": err.Error(), "result": res})
			return
		}
		writeJSON(w, http.StatusOK, res)
	}
}

// checkFilter validates filter fields shared by the listing and the actions.
func checkFilter(f Filter) string {
	if f.Account != "" {
		if err := streams.ValidateAccountID(f.Account); err != nil && f.Account != "unknown" {
			return fmt.Sprintf("account: %q is not an account id", f.Account)
		}
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since) {
		return "until: must be after since"
	}
	return ""
}

func parseTime(name, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: %q is not an RFC 3339 time (e.g. 2024-05-01T12:00:00Z)", name, v)
	}
	return t, nil
}

func (h *api) internal(w http.ResponseWriter, r *http.Request, err error) {
	h.log.ErrorContext(r.Context(), "dead-letter API failed", "path", r.URL.Path, "err", err)
	if IsUnavailable(err) {
		writeError(w, http.StatusServiceUnavailable, "database unavailable")
		return
	}
	writeError(w, http.StatusInternalServerError, "internal error")
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
