package streams

import (
	"fmt"
	"time"
)

// OutcomeKind says what the runtime does with a message after its handler
// returned.
type OutcomeKind uint8

// The outcome kinds. See the constructors for their meaning.
const (
	OutcomeAck OutcomeKind = iota + 1
	OutcomeRetry
	OutcomeDeadLetter
	OutcomeDrop
	OutcomeUnavailable
	OutcomeDefer
	OutcomeForward
)

func (k OutcomeKind) String() string {
	switch k {
	case OutcomeAck:
		return "ack"
	case OutcomeRetry:
		return "retry"
	case OutcomeDeadLetter:
		return "dead_letter"
	case OutcomeDrop:
		return "drop"
	case OutcomeUnavailable:
		return "unavailable"
	case OutcomeDefer:
		return "defer"
	case OutcomeForward:
		return "forward"
	}
	return "invalid"
}

// Error classes recorded in dead letters.
const (
	ClassTransient     = "transient"      // retried until MaxDeliver ran out
	ClassPermanent     = "permanent"      // the handler said it can never succeed
	ClassUndecodable   = "undecodable"    // the payload or subject cannot be parsed
	ClassSchemaInvalid = "schema_invalid" // the payload breaks its schema
	ClassReceiver4xx   = "receiver_4xx"   // the receiver refused it for good
	ClassMaxDeliver    = "max_deliver"    // the handler never answered (crash loop)
	ClassPanic         = "panic"          // the handler panicked on every delivery
)

// Drop reasons.
const (
	ReasonAccountDeleted   = "account_deleted"
	ReasonAccountSuspended = "account_suspended"
)

// Outcome is what a Handler returns: not just an error, but what should
// happen to the message. Build one with Ack, Retry, RetryAfter, DeadLetter,
// Drop, Unavailable, Defer or Forward.
type Outcome struct {
	Kind   OutcomeKind
	Delay  time.Duration // RetryAfter only
	Class  string        // DeadLetter (and Retry, when it runs out)
	Reason string        // Drop only
	Err    error
	// Forward holds the messages Forward publishes before the ack.
	Forward []Message
}

// Ack: the message's effects are committed (rows written, next publish
// acknowledged); remove it.
func Ack() Outcome { return Outcome{Kind: OutcomeAck} }

// Retry: a transient failure. The message is redelivered after the next
// step of the consumer's backoff schedule (never at once: a bare nak would
// burn MaxDeliver in a millisecond). On the last allowed delivery it is
// dead-lettered with class "transient" instead.
func Retry(err error) Outcome { return Outcome{Kind: OutcomeRetry, Class: ClassTransient, Err: err} }

// RetryAfter is Retry with an explicit delay (a receiver's Retry-After, say).
// The delay cannot be shorter than the schedule's own step for this delivery
// minus its first step (a JetStream rule for consumers with BackOff).
func RetryAfter(d time.Duration, err error) Outcome {
	return Outcome{Kind: OutcomeRetry, Delay: d, Class: ClassTransient, Err: err}
}

// DeadLetter: a permanent failure (undecodable, schema-invalid, refused by
// the receiver). The message is dead-lettered now, with its class, and
// removed from the stage stream; it is not retried.
func DeadLetter(class string, err error) Outcome {
	if class == "" {
		class = ClassPermanent
	}
	return Outcome{Kind: OutcomeDeadLetter, Class: class, Err: err}
}

// Drop: the message must not be processed and must not be dead-lettered
// (its account was deleted, say). It is terminated with the reason, and
// counted by reason.
func Drop(reason string) Outcome { return Outcome{Kind: OutcomeDrop, Reason: reason} }

// Unavailable: a dependency every message needs is down (the database, the
// receiver's host for everyone). The runtime stops fetching, holds the
// message (in-progress, so no delivery attempt is used up), reports
// not-ready, and calls the handler again with the same message every probe
// interval until it answers something else; then fetching resumes.
func Unavailable(err error) Outcome { return Outcome{Kind: OutcomeUnavailable, Err: err} }

// Defer: this message cannot be handled now for a reason that is not its
// fault and does not concern the other messages (its receiver's circuit
// breaker is open, say). It is set aside until d has passed, without using
// up a delivery attempt and without holding a slot the other messages need:
// a JetStream message schedule (stored under <kind>.<shard>.<account>.deferred.<seq>,
// which the stage consumer does not read) puts a fresh copy back on its
// subject at that time, and the original is terminated.
func Defer(d time.Duration, reason string) Outcome {
	return Outcome{Kind: OutcomeDefer, Delay: d, Reason: reason}
}

// Forward: publish msgs, then ack — what a stage that turns a message into
// others returns, without waiting for each publish itself. The runtime
// builds each message as Publisher does (Nats-Msg-Id, trace context, size
// check), publishes them asynchronously, and acks the input once JetStream
// acknowledged every one; the handler goroutine moves on at once. If a
// publish fails, the input is retried as with Retry (its ids must derive
// from the input's, as with any publish from a handler: a retry republishes
// the same ids and JetStream drops the repeats); a message that cannot be
// built (no id, an invalid subject, over the size limit) dead-letters the
// input as permanent.
func Forward(msgs ...Message) Outcome { return Outcome{Kind: OutcomeForward, Forward: msgs} }

func (o Outcome) String() string {
	switch o.Kind {
	case OutcomeRetry:
		return fmt.Sprintf("retry(%v)", o.Err)
	case OutcomeDeadLetter:
		return fmt.Sprintf("dead_letter(%s: %v)", o.Class, o.Err)
	case OutcomeDrop:
		return "drop(" + o.Reason + ")"
	case OutcomeDefer:
		return fmt.Sprintf("defer(%v, %s)", o.Delay, o.Reason)
	case OutcomeUnavailable:
		return fmt.Sprintf("unavailable(%v)", o.Err)
	case OutcomeForward:
		return fmt.Sprintf("forward(%d messages)", len(o.Forward))
	}
	return o.Kind.String()
}

// nakDelay turns a wanted redelivery delay into the delay to send with the
// nak. On a consumer with BackOff, JetStream redelivers a message nak'ed
// with delay d after d + BackOff[i] - BackOff[0], where i is the index of
// this delivery in the schedule (anchors/jetstream-behaviour.md, 3e).
func nakDelay(backoff []time.Duration, delivered int, want time.Duration) time.Duration {
	if len(backoff) == 0 {
		return max(want, time.Millisecond)
	}
	i := min(max(delivered-1, 0), len(backoff)-1)
	if want <= 0 {
		want = backoff[i]
	}
	return max(want-backoff[i]+backoff[0], time.Millisecond)
}
