package sender

import (
	"testing"
	"time"
)

func TestBreakerOpensAfterThresholdAndProbesOnce(t *testing.T) {
	b := newBreakers(3, 50*time.Millisecond)
	const d = "http://a:1"
	for i := range 2 {
		if b.admit(d) != stateClosed {
			t.Fatalf("attempt %d not admitted", i)
		}
		if b.result(d, false) {
			t.Fatalf("opened after %d failures", i+1)
		}
	}
	if !b.result(d, false) {
		t.Fatal("not open after 3 failures in a row")
	}
	if b.admit(d) != stateOpen {
		t.Fatal("admitted while open")
	}
	deadline := time.Now().Add(time.Second)
	for b.admit(d) != stateProbe {
		if time.Now().After(deadline) {
			t.Fatal("no probe after the cooldown")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if b.admit(d) != stateOpen {
		t.Fatal("a second probe was let through while the first runs")
	}
	b.result(d, true)
	if b.admit(d) != stateClosed {
		t.Fatal("not closed after a successful probe")
	}
}

func TestBreakerSuccessResetsTheCount(t *testing.T) {
	b := newBreakers(3, time.Minute)
	const d = "http://a:1"
	for range 10 {
		b.result(d, false)
		b.result(d, false)
		b.result(d, true)
	}
	if b.admit(d) != stateClosed {
		t.Fatal("opened although failures were never three in a row")
	}
}

func TestAllOpenNeedsTwoDestinationsDown(t *testing.T) {
	b := newBreakers(1, time.Minute)
	b.result("http://a:1", false)
	if b.allOpen(time.Minute) {
		t.Fatal("one failing destination was taken for everyone down")
	}
	b.admit("http://b:1") // seen, healthy
	b.result("http://b:1", true)
	if b.allOpen(time.Minute) {
		t.Fatal("all open although b is healthy")
	}
	b.result("http://b:1", false)
	if !b.allOpen(time.Minute) {
		t.Fatal("two destinations down, not reported")
	}
}

func TestSignIsHMACSHA256(t *testing.T) {
	// Python: hmac.new(b"secret", b'{"a":1}', hashlib.sha256).hexdigest()
	if got := Sign("secret", []byte(`{"a":1}`)); got != "sha256=aa9e2e3575f5d7098b6caccd790888c36d5fdb63342a73bada2d6a51747a8494" {
		t.Fatalf("signature %q", got)
	}
}
