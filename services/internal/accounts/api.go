package accounts

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/shardflow/shardflow/services/internal/dlq"
)

// MaxBodyBytes bounds an admin API request body.
const MaxBodyBytes = 64 << 10

// Handler returns the admin API. Every route needs the bearer token;
// answers and errors are JSON ({"error": "..."} naming the field or limit).
//
//	POST   /v1/accounts                          {"id", "rate_limit"} → 201 Created
//	GET    /v1/accounts/{id}                     → 200 Account
//	PATCH  /v1/accounts/{id}                     {"rate_limit"} → 200 Account
//	DELETE /v1/accounts/{id}                     → 202 DeleteAccepted (200 once deleted)
//	POST   /v1/accounts/{id}/suspend             → 200 Account
//	POST   /v1/accounts/{id}/restore             → 200 Account
//	PUT    /v1/accounts/{id}/triggers/{name}     {"event", "channel", "url"} → 200 Trigger
//	GET    /v1/accounts/{id}/triggers            → 200 Triggers
//	GET    /v1/status?sample=1s                  → 200 per-shard status (pending, rates, drain ETA)
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/accounts", s.handleCreate)
	mux.HandleFunc("GET /v1/accounts/{id}", s.handleGet)
	mux.HandleFunc("PATCH /v1/accounts/{id}", s.handlePatch)
	mux.HandleFunc("DELETE /v1/accounts/{id}", s.handleDelete)
	mux.HandleFunc("POST /v1/accounts/{id}/suspend", s.handleSuspend)
	mux.HandleFunc("POST /v1/accounts/{id}/restore", s.handleRestore)
	mux.HandleFunc("PUT /v1/accounts/{id}/triggers/{name}", s.handlePutTrigger)
	mux.HandleFunc("GET /v1/accounts/{id}/triggers", s.handleListTriggers)
	mux.HandleFunc("GET /v1/status", s.handleStatus)
	return s.logRequests(s.authenticate(jsonFallback(mux)))
}

// authenticate requires "Authorization: Bearer <AdminToken>".
func (s *Service) authenticate(next http.Handler) http.Handler {
	want := []byte(s.cfg.AdminToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		token, ok := strings.CutPrefix(h, "Bearer ")
		switch {
		case h == "":
			w.Header().Set("WWW-Authenticate", `Bearer realm="shardflow-admin"`)
			writeError(w, http.StatusUnauthorized, "authorization: missing bearer token")
		case !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(token)), want) != 1:
			w.Header().Set("WWW-Authenticate", `Bearer realm="shardflow-admin", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "authorization: invalid bearer token")
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// jsonFallback answers unknown routes and wrong methods with JSON errors
// (the mux's own answers are plain text).
func jsonFallback(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h, pattern := mux.Handler(r); pattern == "" {
			rec := &statusRecorder{header: http.Header{}}
			h.ServeHTTP(rec, r)
			if allow := rec.header.Get("Allow"); allow != "" {
				w.Header().Set("Allow", allow)
			}
			status := rec.status
			if status == 0 || status < 400 {
				status = http.StatusNotFound
			}
			msg := "no such route: " + r.Method + " " + r.URL.Path
			if status == http.StatusMethodNotAllowed {
				msg = fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, rec.header.Get("Allow"))
			}
			writeError(w, status, msg)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(status int)      { r.status = status }

type loggingWriter struct {
	http.ResponseWriter
	status int
}

func (w *loggingWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

func (s *Service) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		lw := &loggingWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(lw, r)
		level := s.log.InfoContext
		if lw.status >= 500 {
			level = s.log.ErrorContext
		}
		level(r.Context(), "admin request", "method", r.Method, "path", r.URL.Path, "status", lw.status, "duration", time.Since(start))
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// fail answers err: its own status for an *Error; 503 with Retry-After when
// a database is unreachable (with per-shard databases, one shard's outage
// refuses only that shard's requests); else 500.
func (s *Service) fail(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	if errors.As(err, &e) {
		writeError(w, e.Status, e.Message)
		return
	}
	s.log.ErrorContext(r.Context(), "admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	if dlq.IsUnavailable(err) {
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, "database unavailable, retry later: "+err.Error())
		return
	}
	writeError(w, http.StatusInternalServerError, err.Error())
}

// decode reads a JSON object body into v, refusing unknown fields, trailing
// data and bodies over MaxBodyBytes, with errors naming the field.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("trailing data after the JSON object")
	}
	var (
		maxErr  *http.MaxBytesError
		typeErr *json.UnmarshalTypeError
		synErr  *json.SyntaxError
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &maxErr):
		return errorf(http.StatusRequestEntityTooLarge, "body: over the limit of %d bytes", MaxBodyBytes)
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, "body: expected a JSON object, got nothing")
	case errors.As(err, &typeErr):
		return errorf(http.StatusBadRequest, "%s: expected %s, got JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
	case errors.As(err, &synErr):
		return errorf(http.StatusBadRequest, "body: invalid JSON at offset %d: %v", synErr.Offset, err)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return errorf(http.StatusBadRequest, "body: %s is not a known field", strings.TrimPrefix(err.Error(), "json: unknown field "))
	default:
		return errorf(http.StatusBadRequest, "body: %v", err)
	}
}

func (s *Service) handleCreate(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID        string `json:"id"`
		RateLimit int    `json:"rate_limit"`
	}
	if err := decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	out, err := s.Create(r.Context(), req.ID, req.RateLimit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/accounts/"+out.ID)
	writeJSON(w, http.StatusCreated, out)
}

func (s *Service) handleGet(w http.ResponseWriter, r *http.Request) {
	a, err := s.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func (s *Service) handlePatch(w http.ResponseWriter, r *http.Request) {
	var req struct {
		RateLimit *int `json:"rate_limit"`
	}
	if err := decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.RateLimit == nil {
		s.fail(w, r, errorf(http.StatusBadRequest, "rate_limit: required (the only field that can be changed)"))
		return
	}
	a, err := s.SetRateLimit(r.Context(), r.PathValue("id"), *req.RateLimit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func (s *Service) handleDelete(w http.ResponseWriter, r *http.Request) {
	out, done, err := s.Delete(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	status := http.StatusAccepted
	if done {
		status = http.StatusOK
	}
	writeJSON(w, status, out)
}

func (s *Service) handleSuspend(w http.ResponseWriter, r *http.Request) {
	a, err := s.Suspend(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func (s *Service) handleRestore(w http.ResponseWriter, r *http.Request) {
	a, err := s.Restore(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func (s *Service) handlePutTrigger(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Event   string `json:"event"`
		Channel string `json:"channel"`
		URL     string `json:"url"`
	}
	if err := decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	t, err := s.PutTrigger(r.Context(), Trigger{
		Account: r.PathValue("id"), Name: r.PathValue("name"), Event: req.Event, Channel: req.Channel, URL: req.URL,
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (s *Service) handleListTriggers(w http.ResponseWriter, r *http.Request) {
	list, err := s.ListTriggers(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}
