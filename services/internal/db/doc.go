// Package db is the Postgres plumbing shared by shardflow services
// (DESIGN.md §6): opening a pgx pool, and the versioned schema migrations.
//
// Migrations are goose SQL files embedded from migrations/ and applied with
// goose's Provider API over database/sql (pgx's stdlib driver). [Migrate] is
// idempotent and safe to run from several processes at once: it holds a
// Postgres session advisory lock while migrating, keyed by the DSN's
// search_path, so services sharing a database serialise and test schemas
// (see package dbtest) do not wait for each other. goose keeps its version
// table (goose_db_version) in the first schema of the search_path, next to
// the tables.
//
// Add a migration as migrations/NNNNN_description.sql with "-- +goose Up"
// and "-- +goose Down" sections; never edit one that has been released.
//
// # Per-shard databases
//
// The main database (SHARDFLOW_DATABASE_URL) holds [MainTables]: the account
// directory, the deletion audit and tombstones, and the dead-letter index. A
// shard's rows ([ShardTables]: people, triggers, deliveries) live in the
// database [ShardDSNs] names for it: its own when SHARDFLOW_SHARD_DATABASE_URLS
// lists it ([ParseShardDSNs]), the main one otherwise. Every database gets
// every migration; the tables it does not use stay empty (except
// deletion_receipts, which the deletion saga writes where it deletes a
// shard's rows). [OpenPools] opens one pool per shard, each on its shard's
// database.
//
// The DSN comes from SHARDFLOW_DATABASE_URL ([DSNFromEnv]), defaulting to
// [DefaultDSN], the local Postgres that `make postgres` starts.
package db
