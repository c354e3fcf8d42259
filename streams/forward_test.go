package streams_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/shardflow/shardflow/streams"
)

// Forward publishes what the handler returns and acks the input only once
// JetStream stored it; a publish that fails is retried like Retry and, out
// of attempts, dead-lettered; a message that cannot be built dead-letters
// the input at once.
func TestConsumerForwardPublishesThenAcks(t *testing.T) {
	e := setup(t, fastTopology())
	const n = 500
	e.publishN(t, 0, "acme", n, []byte("payload"))
	p := e.publisher(t)
	for _, acct := range []string{"lost", "noid"} {
		if _, err := p.Publish(t.Context(), streams.Message{
			Subject: streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: acct, Type: "track"},
			ID:      acct + ":1", Data: []byte("x"),
		}); err != nil {
			t.Fatal(err)
		}
	}
	c := newConsumer(t, e, streams.ConsumerConfig{Shard: 0, Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
		out := streams.Message{Subject: streams.Subject{Kind: streams.KindOutbound, Shard: 0, Account: m.Subject.Account, Type: "webhook"}, ID: m.ID + ":out", Data: m.Data}
		switch m.Subject.Account {
		case "lost":
			out.Subject.Shard = 9 // no stream listens: every publish fails
		case "noid":
			// A valid message and one that cannot be built: neither may
			// be published (the input is dead-lettered whole).
			bad := out
			bad.ID = ""
			return streams.Forward(out, bad)
		}
		return streams.Forward(out)
	}})
	run(t, c)
	eventually(t, 30*time.Second, func() error {
		s := c.Stats()
		if s.Acked != n || s.DeadLettered != 2 {
			return fmt.Errorf("acked %d of %d, dead-lettered %d of 2", s.Acked, n, s.DeadLettered)
		}
		return nil
	})
	if got := streamMsgs(t, e.js, "OUTBOUND_0"); got != n {
		t.Fatalf("OUTBOUND_0 holds %d, want %d (nothing of the input that could not be forwarded whole)", got, n)
	}
	if got := streamMsgs(t, e.js, "INBOUND_0"); got != 0 {
		t.Fatalf("INBOUND_0 still holds %d", got)
	}
	byAccount := map[string]string{}
	for _, d := range readDeadLetters(t, e, 0, 2) {
		byAccount[d.Account] = fmt.Sprintf("%s after %d", d.ErrorClass, d.Attempts)
	}
	if byAccount["lost"] != "transient after 4" || byAccount["noid"] != "permanent after 1" {
		t.Fatalf("dead letters: %v", byAccount)
	}
	if s := c.Stats(); s.InFlight != 0 {
		t.Fatalf("%d still in flight", s.InFlight)
	}
}

// Each forwarded message is published under a PRODUCER span of its own,
// a child of the consumer's span, and carries that span in its traceparent:
// the next stage's consumer span continues the trace under it, as it does
// after Publisher.Publish.
func TestForwardedMessageCarriesItsProducerSpan(t *testing.T) {
	// The runtime injects with the global propagator, as a service sets it
	// up (W3C trace context).
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })
	e := setup(t, fastTopology())
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	e.publishN(t, 0, "acme", 1, []byte("payload"))
	c := newConsumer(t, e, streams.ConsumerConfig{Shard: 0, TracerProvider: tp, Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
		return streams.Forward(
			streams.Message{Subject: streams.Subject{Kind: streams.KindOutbound, Shard: 0, Account: "acme", Type: "webhook"}, ID: m.ID + ":a", Data: m.Data},
			streams.Message{Subject: streams.Subject{Kind: streams.KindOutbound, Shard: 0, Account: "acme", Type: "webhook"}, ID: m.ID + ":b", Data: m.Data},
		)
	}})
	run(t, c)
	var consumer sdktrace.ReadOnlySpan
	var producers []sdktrace.ReadOnlySpan
	eventually(t, 10*time.Second, func() error {
		consumer, producers = nil, nil
		for _, s := range rec.Ended() {
			switch s.SpanKind() {
			case trace.SpanKindConsumer:
				consumer = s
			case trace.SpanKindProducer:
				producers = append(producers, s)
			}
		}
		if consumer == nil || len(producers) != 2 {
			return fmt.Errorf("ended spans: consumer %v, %d producers of 2", consumer != nil, len(producers))
		}
		return nil
	})
	bySpan := map[string]bool{}
	for _, p := range producers {
		if p.Parent().SpanID() != consumer.SpanContext().SpanID() || p.SpanContext().TraceID() != consumer.SpanContext().TraceID() {
			t.Fatalf("producer span %q is not a child of the consumer span", p.Name())
		}
		bySpan[p.SpanContext().SpanID().String()] = true
	}
	s, err := e.js.Stream(t.Context(), "OUTBOUND_0")
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 2; seq++ {
		raw, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		tp := raw.Header.Get("traceparent") // 00-<trace>-<span>-<flags>
		parts := strings.Split(tp, "-")
		if len(parts) != 4 || !bySpan[parts[2]] {
			t.Fatalf("outbound message %d carries traceparent %q, not one of its producer spans %v", seq, tp, bySpan)
		}
		delete(bySpan, parts[2])
	}
}
