// Package streamstest is the consumer contract suite: one exported test,
// Run, that every handler built on package streams passes against a real,
// embedded nats-server (like River's riverdrivertest and Watermill's
// pubsub/tests, run by each implementation with its own Features).
//
// A handler's test describes it in a Harness (how to build it, a good and a
// poison message, how to count its effect, how to break its dependency) and
// calls Run:
//
//	func TestContract(t *testing.T) {
//		pool := ... // the handler's database, one schema for this test
//		streamstest.Run(t, streamstest.Harness{
//			Stage:           streams.ConsumerSpec{Name: "auditsink", Kind: streams.KindAccounts},
//			NewHandler:      func(t *testing.T, e *streamstest.Env) streams.Handler { return newSink(pool).Handle },
//			GoodMessage:     func(i int) streams.Message { ... },
//			PoisonMessage:   func() streams.Message { ... },
//			Effect:          func(t *testing.T, e *streamstest.Env, m streams.Message) int { ... rows for m ... },
//			Reset:           func(t *testing.T, e *streamstest.Env) { ... TRUNCATE audit_log ... },
//			BreakDependency: func(t *testing.T) (restore func()) { ... },
//		})
//	}
//
// Every subtest starts its own server (a temporary store), provisions a
// one-shard topology whose only consumer is Harness.Stage with a fast
// schedule (ack wait 250 ms, MaxDeliver 3 unless the spec says otherwise),
// publishes on shard 0 and runs the handler through streams.NewStage, the
// runtime a service uses.
//
// # What it checks
//
//   - CrashBeforeAck: consumers stopped mid-batch without acking (some
//     handlers stopped before their effect, some after it and before the
//     ack); a fresh consumer then finishes the work. Every message's effect
//     is exactly 1, and some messages were really redelivered.
//   - Poison: the poison message, published between good ones, is
//     dead-lettered at once (one attempt, not class transient) with its
//     envelope (original subject, headers, payload, account, shard, stage,
//     class, error, origin stream and sequence); its effect is 0, the good
//     messages' effect is 1, and nothing is left pending.
//   - Oversize: a message over the stream's size limit (by its payload, or
//     by its headers) is refused by the Publisher with ErrTooLarge before
//     anything is sent; the handler never sees it.
//   - DeletedAccount (Features.AccountGate): a deleted account's message and
//     a straggler of an account's previous generation are dropped
//     (account_deleted) without reaching the handler; on a work-queue stage a
//     suspended account's message is parked and, once the account is
//     restored and its messages released, handled once.
//   - DependencyOutage (Harness.BreakDependency): with the dependency down
//     the handler returns Unavailable, the stage reports not ready, holds its
//     messages and dead-letters nothing; after the restore every message is
//     handled on its first delivery (no attempt used) and its effect is 1.
//   - StopMidBatch: the stage is stopped (SIGTERM) while handlers are busy,
//     one of them stuck: Run returns within the stop timeout, every message
//     acked has its effect, the rest are redelivered to the next consumer and
//     no effect is counted twice.
//
// The exactly-once checks are about effects, not deliveries: delivery is at
// least once, and a handler passes by making its effect idempotent (an
// INSERT … ON CONFLICT DO NOTHING keyed by stream and sequence, a
// deliveries table keyed by message id, a publish whose Nats-Msg-Id derives
// from the input's id). Features.EffectMayRepeat relaxes them to "at least
// once" for a handler whose effect cannot be deduplicated.
//
// Every subtest has a fresh server, so stream sequences start at 1 again in
// each: a handler that keys its effect by stream position clears that state
// in Harness.Reset.
//
// Messages are the harness's: GoodMessage(i) must give a distinct message
// (id and effect) for every i; the suite uses a disjoint range of i per
// subtest, so effects can live in one database for the whole run.
package streamstest
