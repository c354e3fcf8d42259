// Package accounts is the logic of the accounts service (DESIGN.md §3, §5):
// the admin HTTP API that creates, updates, suspends, restores and deletes
// accounts and their triggers, and the account-deletion saga.
//
// # Source of truth and distribution
//
// Postgres holds every account (table accounts). Each change is written to
// the account directory, the JetStream KV bucket every service instance
// watches (streams.DirectoryKV), while the account's row is locked (SELECT
// ... FOR UPDATE), so directory writes of one account are serialised and the
// directory never goes back to an older state. A lifecycle event
// (schemas.AccountEvent) is then published to accounts.<shard>.<id>.<type>
// with an id that carries the account generation (streams.MessageID): the
// duplicate window of JetStream outlives a purge, so ids of a re-created
// account must differ from those of its previous incarnation.
//
// # The deletion saga
//
// DELETE /v1/accounts/{id} marks the account deleting in one transaction
// (generation+1, a row in account_deletions), writes the directory (from that
// moment ingest answers 410 and every stage drops the account's messages) and
// publishes the deleted event. [Service.HandleEvent], run by the durable
// consumer "accounts" on every ACCOUNTS_<n> stream, then runs the steps in
// [Steps] order, recording each finished step (and what it did) in
// account_deletions.audit. The event is acknowledged only once the saga is
// complete, so a crash at any point is followed by a redelivery that resumes
// at the first step not recorded; every step is idempotent. One saga runs
// per account at a time (a Postgres advisory lock), whatever the number of
// accounts service instances.
//
// A dependency outage (Postgres unreachable, NATS disconnected) is reported
// as streams.Unavailable, so it burns no delivery attempts.
//
// # Per-shard databases
//
// Accounts, the deletion audit, tombstones and dead letters live in the main
// database ([Config.Pool]); an account's triggers, people and deliveries in
// the database of its shard ([Config.ShardPools], which may be the main one).
// PutTrigger writes the trigger in the shard's database while its main
// transaction holds the account row FOR SHARE, committing after, so a
// deletion cannot slip in between. The saga deletes the shard's rows with a
// receipt of the counts in the same transaction (table deletion_receipts),
// then the dead letters and the audit in the main database: a resume after a
// crash between the two reads the receipt back, so the audit's counts stay
// exact. A shard's database being down pauses only that shard's deletions
// (streams.Unavailable) and fails only its accounts' trigger requests.
//
// # Test hook
//
// [Config.AfterStep] is called right after each step is recorded. It exists
// for tests only: the accounts binary sets it from
// SHARDFLOW_TEST_CRASH_AFTER_STEP to exit the process, and the package tests
// make it fail once to exercise a resume.
package accounts
