package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shardflow/shardflow/integration/harness"
)

// TestTraceCrossesEveryProcess: one /v1/track call produces one trace holding
// the ingest request, the publishes, the processor's and sender's consumer
// spans and the webhook HTTP call, each parented on the previous step across
// the three processes.
func TestTraceCrossesEveryProcess(t *testing.T) {
	otlp := harness.NewOTLPReceiver(t)
	s := startPipeline(t, harness.Options{Env: otlp.Env()})
	acct := s.CreateAccount("traced")
	recv := harness.NewReceiver(t, secrets(t, s))
	s.SetTrigger("traced", "welcome", "Signed Up", recv.URL())

	code, body := s.Send("/v1/track", acct.WriteKey, []byte(`{"userId":"u1","event":"Signed Up","messageId":"trace-1"}`))
	if code != 200 {
		t.Fatalf("track: %d %s", code, body)
	}
	msgID := fmt.Sprintf("traced:%d:trace-1", acct.Generation)

	var traceID string
	var spans []harness.Span
	var chain []string
	harness.Eventually(t, 30*time.Second, func() error {
		for _, sp := range otlp.Spans() {
			if sp.Service == "ingest" && sp.Attrs["messaging.message.id"] == msgID {
				traceID = sp.TraceID
			}
		}
		if traceID == "" {
			return fmt.Errorf("no ingest span for %s yet (%d spans)", msgID, len(otlp.Spans()))
		}
		spans = otlp.Trace(traceID)
		byID := map[string]harness.Span{}
		var client *harness.Span
		for i, sp := range spans {
			byID[sp.SpanID] = sp
			if sp.Service == "sender" && sp.Kind == "SPAN_KIND_CLIENT" {
				client = &spans[i]
			}
		}
		if client == nil {
			return fmt.Errorf("trace %s has no webhook client span yet: %s", traceID, names(spans))
		}
		// Walk from the webhook call up to the root; every parent must be
		// in the trace (spans arrive from three exporters, in any order).
		chain = chain[:0]
		for sp := *client; ; {
			chain = append(chain, sp.Service+":"+sp.Kind[len("SPAN_KIND_"):]+":"+sp.Name)
			if sp.ParentID == "" {
				return nil
			}
			parent, ok := byID[sp.ParentID]
			if !ok {
				return fmt.Errorf("span %s (%s) has parent %s, not (yet) in the trace: %s", sp.Name, sp.Service, sp.ParentID, names(spans))
			}
			sp = parent
		}
	})
	// Reverse: root first.
	for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
		chain[i], chain[j] = chain[j], chain[i]
	}
	want := []string{
		"ingest:SERVER:", "ingest:PRODUCER:send INBOUND_", "processor:CONSUMER:process INBOUND_",
		"processor:PRODUCER:send OUTBOUND_", "sender:CONSUMER:process OUTBOUND_", "sender:CLIENT:",
	}
	if len(chain) != len(want) {
		t.Fatalf("parent chain:\n  %s\nwant %d steps", strings.Join(chain, "\n  "), len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(chain[i], w) {
			t.Fatalf("step %d is %q, want prefix %q; chain:\n  %s", i, chain[i], w, strings.Join(chain, "\n  "))
		}
	}
	for _, sp := range spans {
		if sp.Kind == "SPAN_KIND_CONSUMER" {
			if sp.Attrs["messaging.nats.delivery_count"] != "1" || sp.Attrs["shardflow.account"] != "traced" || sp.Attrs["messaging.system"] != "nats" {
				t.Fatalf("consumer span attributes: %v", sp.Attrs)
			}
		}
	}
	if tp := recv.Traceparent(msgID + ":welcome"); !strings.Contains(tp, traceID) {
		t.Fatalf("webhook arrived with traceparent %q, not in trace %s", tp, traceID)
	}
}

func names(spans []harness.Span) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "\n  %s %s %s (%s ← %s)", s.Service, s.Kind, s.Name, s.SpanID, s.ParentID)
	}
	return b.String()
}
