package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shardflow/shardflow/integration/harness"
	"github.com/shardflow/shardflow/streams"
)

// secrets reads webhook secrets from the live directory.
func secrets(t *testing.T, s *harness.Stack) func(string) string {
	dir, err := streams.OpenDirectory(context.Background(), s.JS, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dir.Close)
	return func(id string) string { a, _ := dir.Lookup(id); return a.Secret }
}

// startPipeline starts every service and returns the stack.
func startPipeline(t *testing.T, opts harness.Options, env ...string) *harness.Stack {
	t.Helper()
	s := harness.New(t, opts)
	s.Start("accounts", env...)
	s.Start("ingest", env...)
	s.Start("processor", env...)
	s.Start("sender", env...)
	s.Start("deadletter", env...)
	return s
}

// TestPipelineEndToEnd: 1,000 track events through /v1/batch arrive as
// 1,000 webhooks, each exactly once and correctly signed; Postgres holds
// 1,000 deliveries; the stage streams are empty afterwards.
func TestPipelineEndToEnd(t *testing.T) {
	s := startPipeline(t, harness.Options{})
	acct := s.CreateAccount("acme")
	recv := harness.NewReceiver(t, secrets(t, s))
	s.SetTrigger("acme", "welcome", "Signed Up", recv.URL())

	for b := range 10 {
		code, body := s.Send("/v1/batch", acct.WriteKey, harness.TrackBatch("Signed Up", "evt", b*100, 100))
		if code != 200 || body != "{\"success\":true}\n" {
			t.Fatalf("batch %d: %d %s", b, code, body)
		}
	}
	harness.Eventually(t, 60*time.Second, func() error {
		if d, _, _ := recv.Stats(); d < 1000 {
			return fmt.Errorf("%d of 1000 webhooks", d)
		}
		return nil
	})
	// Let any stray redelivery show itself before judging exactly-once.
	harness.Eventually(t, 10*time.Second, func() error {
		n := s.StreamMsgs(streams.StreamName(streams.KindInbound, acct.Shard)) + s.StreamMsgs(streams.StreamName(streams.KindOutbound, acct.Shard))
		if n != 0 {
			return fmt.Errorf("%d messages left in the stage streams", n)
		}
		return nil
	})
	distinct, total, bad := recv.Stats()
	if distinct != 1000 || total != 1000 || bad != 0 {
		t.Fatalf("webhooks: %d distinct, %d total, %d bad signatures; duplicates %v", distinct, total, bad, recv.Duplicates())
	}
	if n := s.Count(`SELECT count(*) FROM deliveries WHERE status = 'delivered' AND account_id = 'acme'`); n != 1000 {
		t.Fatalf("deliveries rows = %d", n)
	}
	if n := s.StreamMsgs(streams.StreamName(streams.KindDeadLetter, acct.Shard)); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
}

// TestServicesRefuseToStartOnSizeMismatch: the one size limit is checked at
// start-up against the server's max_payload and every stream's
// max_msg_size; a service configured for larger events than the streams
// carry refuses to start, naming both numbers (failure F2).
func TestServicesRefuseToStartOnSizeMismatch(t *testing.T) {
	s := harness.New(t, harness.Options{})
	for _, name := range []string{"ingest", "processor", "sender"} {
		p := s.Launch(name, "SHARDFLOW_MAX_EVENT_BYTES=2097152")
		select {
		case <-p.Exited():
		case <-time.After(30 * time.Second):
			t.Fatalf("%s started with a size limit the streams cannot carry", name)
		}
		log := p.Log()
		if p.ExitCode() == 0 || !strings.Contains(log, "refuses to start") || !strings.Contains(log, "max_payload is 1048576 bytes") || !strings.Contains(log, "max_msg_size is") {
			t.Fatalf("%s: exit %d, log does not name both limits:\n%s", name, p.ExitCode(), log)
		}
	}
}
