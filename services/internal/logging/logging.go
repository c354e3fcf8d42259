package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/trace"
)

// Keys of the attributes this package adds to every record.
const (
	ServiceKey = "service"
	TraceIDKey = "trace_id"
	SpanIDKey  = "span_id"
)

// New returns a JSON logger writing to w that drops records below level and
// tags every record with service, and with trace_id/span_id when the context
// passed to the logging call holds a valid span context.
func New(w io.Writer, level slog.Level, service string) *slog.Logger {
	base := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}).
		WithAttrs([]slog.Attr{slog.String(ServiceKey, service)})
	return slog.New(&traceHandler{inner: base, base: base})
}

// ParseLevel parses a level name as used in configuration: debug, info,
// warn (or warning), error, case-insensitive, optionally with an offset as
// slog writes it ("info+2"). The empty string is info.
func ParseLevel(s string) (slog.Level, error) {
	s = strings.TrimSpace(s)
	switch strings.ToLower(s) {
	case "":
		return slog.LevelInfo, nil
	case "warning":
		return slog.LevelWarn, nil
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("parse log level %q (want debug, info, warn or error): %w", s, err)
	}
	return l, nil
}

// traceHandler adds trace_id and span_id from the record's context.
//
// Ids added to a record inside Handle would land inside any open group, so
// the handler remembers the WithAttrs/WithGroup calls made on it (ops) and,
// for a record with a span under a group, rebuilds the chain from base with
// the ids added first. Without groups (the common case) it just adds them.
type traceHandler struct {
	inner   slog.Handler // base with ops applied
	base    slog.Handler // the JSON handler with the service attribute
	ops     []func(slog.Handler) slog.Handler
	grouped bool
}

func (h *traceHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *traceHandler) Handle(ctx context.Context, r slog.Record) error {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return h.inner.Handle(ctx, r)
	}
	ids := []slog.Attr{
		slog.String(TraceIDKey, sc.TraceID().String()),
		slog.String(SpanIDKey, sc.SpanID().String()),
	}
	if !h.grouped {
		r = r.Clone()
		r.AddAttrs(ids...)
		return h.inner.Handle(ctx, r)
	}
	hh := h.base.WithAttrs(ids)
	for _, op := range h.ops {
		hh = op(hh)
	}
	return hh.Handle(ctx, r)
}

func (h *traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	return h.with(func(x slog.Handler) slog.Handler { return x.WithAttrs(attrs) }, false)
}

func (h *traceHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return h.with(func(x slog.Handler) slog.Handler { return x.WithGroup(name) }, true)
}

func (h *traceHandler) with(op func(slog.Handler) slog.Handler, group bool) *traceHandler {
	ops := make([]func(slog.Handler) slog.Handler, len(h.ops), len(h.ops)+1)
	copy(ops, h.ops)
	return &traceHandler{
		inner:   op(h.inner),
		base:    h.base,
		ops:     append(ops, op),
		grouped: h.grouped || group,
	}
}
