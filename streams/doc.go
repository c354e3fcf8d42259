// Package streams is shardflow's messaging layer on NATS JetStream: the
// topology as code, idempotent provisioning, a publisher, the consumer
// runtime that runs a stage's handler (typed outcomes, bounded memory,
// backoff, dead letters, the account gate, outage holding), purging and the
// account directory. It knows nothing about the services built on it.
//
// A product team uses two entry points: Client, to publish an event for an
// account, and RunStage (or NewStage), to run a consumer of its own. Package
// streamstest is the contract suite a handler passes before it ships;
// package natsembed runs a real nats-server in-process for development and
// tests.
//
// # The model
//
// Accounts (customers) live on shards. An account's shard is chosen when it
// is created and kept in the account directory: Postgres is the source of
// truth, a JetStream KV bucket (DirectoryBucket) distributes it, and every
// process keeps a live copy (Directory), so nothing asks Postgres per
// message. Every subject carries the shard and the account at fixed
// positions:
//
//	<kind>.<shard>.<account>.<type>
//
//	inbound.3.acme.track         inbound data (identify, track)
//	outbound.3.acme.webhook      outbound messages, by channel
//	accounts.3.acme.deleted      account lifecycle events
//	deadletter.3.acme.processor  dead letters, by the stage that gave up
//
// Account ids and types are single subject-safe tokens (ValidateAccountID).
// Each shard has one stream per Kind:
//
//	stream        retention            holds                             readers
//	INBOUND_n     work queue           work for the processor            one stage: processor
//	OUTBOUND_n    work queue           work for the sender               one stage: sender
//	ACCOUNTS_n    limits, 30 days      lifecycle events (history)        any number: accounts, yours
//	DEADLETTER_n  limits, 14 days      dead-letter envelopes (history)   any number: indexer, yours
//
// So deleting an account is one filtered purge per stream
// (inbound.3.acme.>), permissions are written by subject, and a shard's
// streams can be placed on their own servers (Topology.PlacementTags).
//
// The rule for a consumer of your own: read ACCOUNTS_n or DEADLETTER_n,
// never INBOUND_n or OUTBOUND_n. Work-queue streams give each message to
// exactly one consumer and delete it once acked; the server refuses a
// second consumer whose filter overlaps a subject (error 10100), and if it
// did not, your consumer would take work away from the stage it belongs to.
// Limits streams keep their history for every consumer, each at its own
// pace. SharedKind says which kinds allow it; ProvisionConsumer refuses the
// others with that explanation.
//
// Sizes have one source: Topology.MaxEventBytes (default 32 KiB), from which
// every stream's max_msg_size derives (Topology.MaxMsgSize). CheckLimits,
// which NewStage and NewClient call, refuses to start when the server's
// max_payload or a stream cannot carry it, naming both numbers.
//
// Topology is code. DefaultTopology declares the four streams per shard and
// the built-in consumers; a team's consumer is declared by adding a
// ConsumerSpec:
//
//	topo := streams.Topology{
//		Shards:    4,
//		Consumers: append(streams.DefaultConsumers(), streams.ConsumerSpec{Name: "auditsink", Kind: streams.KindAccounts}),
//	}.WithDefaults()
//
// Provision makes the server match a topology (create or update, never
// delete; drift that cannot be changed in place is reported as an error);
// ProvisionConsumer does the same for one consumer only, so a team's
// binary can declare its consumer without owning the streams.
// ParseConsumerSpec reads a declaration from a flag ("auditsink:accounts").
//
// # Guarantees
//
// Stated plainly (package streamstest checks the ones a handler shares in):
//
//   - Delivery is at least once. A message is redelivered after a crash, a
//     stop timeout or a lost ack, so a handler's effects must be idempotent:
//     key rows by the message's stream and sequence or its ID, and derive the
//     ids of what it publishes from its own ID.
//   - Publishing is idempotent by Nats-Msg-Id inside the stream's duplicate
//     window (Topology.DuplicateWindow, 2 minutes): a repeat is acknowledged
//     with PublishResult.Duplicate and not stored twice, so a publish that
//     timed out can be retried with the same id. The window survives purges
//     and deletes and ignores the subject; that is why ids carry the
//     account's generation (MessageID gives <account>:<generation>:<key>):
//     an account deleted and re-created within the window would otherwise
//     lose its new messages as duplicates of the old ones.
//   - Ordering: none across a shard's messages while handlers run
//     concurrently (Concurrency > 1), and none across accounts or shards.
//     With Concurrency 1 a shard's messages are handled one at a time in
//     stream order, until one is retried: it comes back after the messages
//     behind it.
//   - Acks come only after effects. The runtime acks when the handler
//     returns Ack, and a handler returns Ack only once its effects are
//     committed (rows written, the next publish acknowledged). A crash in
//     between costs a redelivery, never a loss.
//   - Memory is bounded: a shard's consumer holds at most MaxInFlight
//     messages and MaxInFlightBytes bytes, whatever the backlog, and the
//     server enforces MaxAckPending and the pull's MaxBytes as well. Messages
//     waiting for a handler goroutine are kept alive (in-progress), so
//     queueing never costs a delivery attempt.
//   - Retries are never immediate: Retry is a nak with the delay of the
//     consumer's BackOff step; MaxDeliver is always set, never unlimited.
//   - What cannot be processed is dead-lettered, with its envelope: original
//     subject, headers, payload, account, shard, stage, error class and text,
//     attempts, first and last failure times, origin stream and sequence.
//     The envelope's Nats-Msg-Id is <stream>:<seq>, so dead-lettering twice
//     is harmless; the original is then removed from its stage stream.
//   - An outage holds instead of failing: while a handler reports a
//     dependency Unavailable, its consumer stops fetching, keeps what it has
//     in progress and probes; no attempt is used and nothing is
//     dead-lettered. It resumes by itself.
//   - The account gate: on inbound and outbound stages, a message of a
//     deleted account (or of an older generation of a re-created one) is
//     dropped with reason account_deleted, never processed, retried or
//     dead-lettered; a suspended account's message is parked (kept under
//     <kind>.<shard>.<account>.held.<type>) and released on restore
//     (ReleaseHeld).
//   - Failing work yields: with ConsumerConfig.Brake set, a consumer whose
//     recent messages nearly all end dead-lettered fetches at most
//     Brake.Rate a second until messages succeed again, so a shard flooded
//     with poison does not take the CPU and database it shares with other
//     shards. Its backlog waits in the stream; every message is still
//     dead-lettered or handled. With Brake.Announce it also judges each
//     account by its own messages and announces the accounts it brakes
//     (BrakeAdvisory, on core NATS); an ingress that watches them
//     (WatchBrakes) slows those accounts at the source, so one account's
//     poison stops costing the intake the shards share.
//   - A stop is bounded: when Run's context ends, fetching stops, in-flight
//     handlers get StopTimeout to finish, then their context is cancelled
//     (cause ErrStopped) and what they did not finish stays unacked for the
//     next consumer.
//
// # Outcomes
//
// A Handler returns an Outcome, not just an error:
//
//	Ack()                   effects committed: ack, the message is done
//	Retry(err)              transient: redelivered after the next BackOff step;
//	                        dead-lettered (class transient) on the last allowed delivery
//	RetryAfter(d, err)      Retry at an explicit delay (a receiver's Retry-After)
//	DeadLetter(class, err)  permanent (undecodable, schema_invalid, receiver_4xx):
//	                        dead-lettered now, with its class, not retried
//	Drop(reason)            must be neither processed nor dead-lettered:
//	                        terminated, counted by reason
//	Unavailable(err)        a dependency every message needs is down: hold, stop
//	                        fetching, probe every ProbeInterval, report not ready;
//	                        no attempt used
//	Defer(d, reason)        this message cannot be handled now, the others can: set
//	                        aside for d (a JetStream message schedule brings a copy
//	                        back); no attempt used
//	Forward(msgs...)        publish msgs (asynchronously: the handler moves on at
//	                        once), ack when JetStream stored them all; a failed
//	                        publish is a Retry
//
// A panicking handler is recovered and retried (class panic); a zero
// Outcome is retried too.
//
// # JetStream behaviours the runtime works around
//
// Each was checked on nats-server 2.15.2 with nats.go 1.55:
//
//   - A bare nak redelivers at once and ignores BackOff, burning MaxDeliver
//     in a millisecond: the runtime only ever naks with a delay, and
//     compensates for JetStream adding BackOff[i]-BackOff[0] to it.
//   - After a filtered purge or a consumer resume, a pull consumer that was
//     at MaxAckPending can sit idle until its next pull heartbeat (15 s by
//     default): the runtime's pull requests last FetchWait (250 ms), so the
//     stall is at most that.
//   - A message that reached MaxDeliver without an outcome stays in a
//     work-queue stream for ever, and the max-deliveries advisory (stream and
//     sequence only) is sent only while a pull is waiting: the runtime
//     dead-letters on the last allowed delivery itself, and
//     DeadLetterBySequence (get by sequence, publish the envelope, delete)
//     catches the leftovers of handlers that crashed every time.
//   - The duplicate window survives purges and ignores the subject: ids
//     carry the account generation (MessageID).
//   - A publish refused by permissions looks like a timeout to the publisher
//     (only the connection's error handler sees the violation): every
//     publish has a timeout (PublisherConfig.Timeout, 5 s), so it fails
//     instead of hanging; watch the error handler to tell the two apart.
//   - A KV watcher sees the latest value, not every revision: the Directory
//     is a current view of account states, never a change log; lifecycle
//     changes that must each be seen travel as events on ACCOUNTS_n.
//   - Headers count towards max_payload and max_msg_size: the Publisher
//     checks payload plus headers (MsgSize) before sending, and refuses with
//     ErrTooLarge (a *SizeError naming both sizes).
//
// # Quick start
//
// Publish an event for an account (resolved in the directory; refused with
// ErrUnknownAccount or ErrAccountClosed):
//
//	nc, _ := nats.Connect(url)
//	client, err := streams.NewClient(ctx, streams.ClientConfig{Conn: nc, Topology: topo})
//	...
//	defer client.Close()
//	err = client.Publish(ctx, "acme", "track", orderID, payload)
//
// Run a consumer of your own on every shard, until SIGTERM:
//
//	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
//	defer stop()
//	stage, err := streams.NewStage(ctx, streams.StageConfig{
//		Conn: nc, Topology: topo, Stage: "auditsink",
//		Handler: func(ctx context.Context, m *streams.Msg) streams.Outcome {
//			if err := store(ctx, m); err != nil {
//				return streams.Retry(err)
//			}
//			return streams.Ack()
//		},
//	})
//	...
//	http.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
//		if err := stage.Ready(); err != nil {
//			http.Error(w, err.Error(), http.StatusServiceUnavailable)
//		}
//	})
//	err = stage.Run(ctx) // returns nil after a graceful stop
//
// Test it with the contract suite (package streamstest):
//
//	streamstest.Run(t, streamstest.Harness{Stage: spec, NewHandler: ..., GoodMessage: ..., Effect: ...})
//
// services/auditsink in the repository is a complete consumer built only on
// this package, and docs/add-a-consumer.md goes from an empty folder to a
// deployed consumer.
//
// # Telemetry
//
// The trace context travels in the message headers (W3C traceparent,
// injected by the Publisher from the caller's context); every delivery is a
// consumer span "process <stream>" with the delivery count, stage, shard,
// account and outcome. Metrics, per shard and stage (never per account):
// MetricAcked, MetricRetried, MetricRedelivered, MetricDeadLettered and
// MetricDropped (by reason), MetricParked, MetricDeferred, MetricDuration,
// MetricInFlight, MetricHeld, MetricPending and MetricAckPending. Both go to
// the TracerProvider and MeterProvider given, or the otel globals.
package streams
