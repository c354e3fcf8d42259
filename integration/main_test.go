// Package integration holds the end-to-end and fault suites: every service
// as its own process against a real nats-server and Postgres.
package integration

import (
	"fmt"
	"os"
	"testing"

	"github.com/shardflow/shardflow/integration/harness"
)

func TestMain(m *testing.M) {
	cleanup, err := harness.BuildBinaries()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	cleanup()
	os.Exit(code)
}
