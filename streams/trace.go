package streams

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

const instrumentationName = "github.com/shardflow/shardflow/streams"

// Header names shardflow sets on every message, besides Nats-Msg-Id and the
// W3C trace context (traceparent, tracestate).
const (
	// HeaderGeneration carries the account generation the message was
	// published under; a message from an older generation is a straggler of a
	// deleted account and is dropped.
	HeaderGeneration = "Shardflow-Generation"
	// HeaderMessageID is the logical message id, stable across parking,
	// release and replay (Nats-Msg-Id may change on those paths).
	HeaderMessageID = "Shardflow-Message-Id"
	// HeaderOriginalSubject is set on parked and replayed copies.
	HeaderOriginalSubject = "Shardflow-Original-Subject"
	// HeaderReplayOf names the dead letter a replayed message comes from.
	HeaderReplayOf = "Shardflow-Replay-Of"
	// HeaderLinkTraceparent carries the original trace of a replayed message,
	// so the new trace links to it.
	HeaderLinkTraceparent = "Shardflow-Link-Traceparent"
	// HeaderDeferrals counts how often a message was deferred, so a handler
	// can stop deferring a message whose destination never recovers.
	HeaderDeferrals = "Shardflow-Deferrals"
)

// HeaderCarrier adapts nats.Header to OpenTelemetry's TextMapCarrier.
type HeaderCarrier nats.Header

// Get returns the first value of key.
func (c HeaderCarrier) Get(key string) string { return nats.Header(c).Get(key) }

// Set replaces key.
func (c HeaderCarrier) Set(key, value string) { nats.Header(c).Set(key, value) }

// Keys lists the keys.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// InjectTrace writes ctx's trace context into h.
func InjectTrace(ctx context.Context, h nats.Header) {
	otel.GetTextMapPropagator().Inject(ctx, HeaderCarrier(h))
}

// ExtractTrace returns ctx carrying the trace context found in h.
func ExtractTrace(ctx context.Context, h nats.Header) context.Context {
	return otel.GetTextMapPropagator().Extract(ctx, HeaderCarrier(h))
}

// TraceID returns the trace id carried by h, or "".
func TraceID(h nats.Header) string {
	sc := trace.SpanContextFromContext(ExtractTrace(context.Background(), h))
	if !sc.IsValid() {
		return ""
	}
	return sc.TraceID().String()
}

func tracerFrom(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return tp.Tracer(instrumentationName)
}

var attrSystemNATS = semconv.MessagingSystemKey.String("nats")

func subjectAttrs(s Subject) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.Int("shardflow.shard", s.Shard),
		attribute.String("shardflow.account", s.Account),
	}
}

// CopyHeaders returns a copy of h fit to republish: JetStream's per-publish
// control headers (atomic batch markers, expectations, the message id) are
// left out, since they belong to the original publish.
func CopyHeaders(h nats.Header) nats.Header {
	out := make(nats.Header, len(h))
	for k, v := range h {
		switch {
		case strings.HasPrefix(k, "Nats-Batch-"), strings.HasPrefix(k, "Nats-Expected-"), k == "Nats-Msg-Id":
			continue
		}
		out[k] = append([]string(nil), v...)
	}
	return out
}
