// Package dbtest gives each test its own freshly migrated Postgres schema.
//
// [New] creates a schema sf_<random> in the database named by
// SHARDFLOW_TEST_DATABASE_URL (default [DefaultDSN], the "test" database of
// the local Postgres that `make postgres` starts and creates), runs the
// migrations in it and returns a pool and a DSN whose connections use that
// schema: the DSN carries search_path as a runtime parameter, so any process
// or pool opened with it (a service under test started as a subprocess, for
// instance) sees the same tables. The schema is dropped when the test ends.
//
// Tests using it may run in parallel; their schemas are independent.
//
// A test that cannot reach Postgres fails (never skips), saying how to start
// it: a silently skipped database test is a test that never runs in CI.
package dbtest
