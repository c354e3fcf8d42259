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
// The DSN comes from SHARDFLOW_DATABASE_URL ([DSNFromEnv]), defaulting to
// [DefaultDSN], the local Postgres that `make postgres` starts.
package db
