package streams

import (
	"testing"
	"time"
)

// A watcher forgets an advisory after its TTL, takes the slowest rate of
// the stages braking an account, and lets an account go when the last
// stage braking it releases it.
func TestBrakeWatchExpiresAndTakesTheSlowestStage(t *testing.T) {
	now := time.Unix(1000, 0)
	w := &BrakeWatch{now: func() time.Time { return now }, accounts: map[string]map[string]brakeEntry{}}
	w.apply(BrakeAdvisory{Stage: "processor", Shard: 1, Account: "a", Braked: true, Rate: 200, TTL: 3000})
	w.apply(BrakeAdvisory{Stage: "sender", Shard: 1, Account: "a", Braked: true, Rate: 50, TTL: 1000})
	if rate, ok := w.Braked("a"); !ok || rate != 50 {
		t.Fatalf("Braked(a) = %v, %v; want 50, true", rate, ok)
	}
	if _, ok := w.Braked("b"); ok {
		t.Fatal("an account nobody announced is braked")
	}
	now = now.Add(2 * time.Second) // the sender's advisory has expired
	if rate, ok := w.Braked("a"); !ok || rate != 200 {
		t.Fatalf("after the sender's TTL: Braked(a) = %v, %v; want 200, true", rate, ok)
	}
	w.apply(BrakeAdvisory{Stage: "sender", Shard: 1, Account: "a", Braked: true, Rate: 50}) // TTL 0: the default
	w.apply(BrakeAdvisory{Stage: "processor", Shard: 1, Account: "a", Braked: false})
	if rate, ok := w.Braked("a"); !ok || rate != 50 {
		t.Fatalf("after the processor's release: Braked(a) = %v, %v; want 50, true", rate, ok)
	}
	w.apply(BrakeAdvisory{Stage: "sender", Shard: 1, Account: "a", Braked: false})
	if _, ok := w.Braked("a"); ok {
		t.Fatal("released by every stage, still braked")
	}
	if len(w.accounts) != 0 {
		t.Fatalf("the watcher still holds %d accounts", len(w.accounts))
	}
	w.apply(BrakeAdvisory{Stage: "sender", Shard: 1, Account: "c", Braked: true, Rate: 10, TTL: 500})
	now = now.Add(time.Second)
	if _, ok := w.Braked("c"); ok || len(w.accounts) != 0 {
		t.Fatalf("an expired advisory still brakes (or is still held: %d accounts)", len(w.accounts))
	}
}
