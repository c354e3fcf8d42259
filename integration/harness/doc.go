// Package harness runs shardflow for the integration suites the way a user
// runs it: a real nats-server with JetStream (embedded in the test process,
// so a test can restart it), a real Postgres (a fresh schema per test), and
// every service as its own OS process built from services/, talking over
// real HTTP. Nothing is mocked.
//
// The binaries are built once per test binary (BuildBinaries in TestMain).
// A test that needs Postgres and cannot reach it fails with a message saying
// how to start it; it never skips.
package harness
