package logging_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/shardflow/shardflow/services/internal/logging"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func spanCtx(t *testing.T) (context.Context, trace.SpanContext) {
	t.Helper()
	tid, err := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := trace.SpanIDFromHex("00f067aa0ba902b7")
	if err != nil {
		t.Fatal(err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	return trace.ContextWithSpanContext(context.Background(), sc), sc
}

func decode(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(buf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestNewAddsServiceAndTraceIDs(t *testing.T) {
	var buf bytes.Buffer
	log := logging.New(&buf, slog.LevelInfo, "ingest")
	ctx, sc := spanCtx(t)

	log.InfoContext(ctx, "with span", "k", 1)
	log.InfoContext(context.Background(), "without span")
	log.DebugContext(ctx, "filtered out")
	log.With("a", "b").WithGroup("g").InfoContext(ctx, "grouped", "k", 2)

	recs := decode(t, &buf)
	if len(recs) != 3 {
		t.Fatalf("got %d records, want 3:\n%s", len(recs), buf.String())
	}
	for _, r := range recs {
		if r["service"] != "ingest" {
			t.Errorf("record %v: service = %v, want ingest", r["msg"], r["service"])
		}
	}
	if got := recs[0]["trace_id"]; got != sc.TraceID().String() {
		t.Errorf("trace_id = %v, want %s", got, sc.TraceID())
	}
	if got := recs[0]["span_id"]; got != sc.SpanID().String() {
		t.Errorf("span_id = %v, want %s", got, sc.SpanID())
	}
	if _, ok := recs[1]["trace_id"]; ok {
		t.Errorf("record without span has trace_id: %v", recs[1])
	}
	// Under a group the ids stay top-level and the group still holds the record's attributes.
	g := recs[2]
	if g["trace_id"] != sc.TraceID().String() || g["span_id"] != sc.SpanID().String() || g["a"] != "b" {
		t.Errorf("grouped record lost top-level attributes: %v", g)
	}
	if grp, ok := g["g"].(map[string]any); !ok || grp["k"] != float64(2) {
		t.Errorf("grouped record: group g = %v, want {k:2}", g["g"])
	}
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{
		"":        slog.LevelInfo,
		"debug":   slog.LevelDebug,
		"INFO":    slog.LevelInfo,
		"warn":    slog.LevelWarn,
		"Warning": slog.LevelWarn,
		"error":   slog.LevelError,
		"info+2":  slog.LevelInfo + 2,
	} {
		got, err := logging.ParseLevel(in)
		if err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := logging.ParseLevel("loud"); err == nil || !strings.Contains(err.Error(), "loud") {
		t.Errorf("ParseLevel(loud) error = %v, want one naming the input", err)
	}
}
