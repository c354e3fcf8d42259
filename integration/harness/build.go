package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Services are the binaries under services/ the harness can start.
var Services = []string{"ingest", "processor", "sender", "accounts", "deadletter", "sfctl"}

var binDir string

// RepoRoot is the repository root (the directory holding go.work).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// BuildBinaries builds every service into a temporary directory, once per
// test binary. Call it from TestMain; it returns a cleanup function.
func BuildBinaries() (cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "shardflow-bin-")
	if err != nil {
		return nil, err
	}
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	for _, s := range Services {
		args = append(args, "./"+s)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = filepath.Join(RepoRoot(), "services")
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("build services (%s): %w\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	binDir = dir
	return func() { os.RemoveAll(dir) }, nil
}

// Binary returns the path of a built service binary.
func Binary(name string) string {
	if binDir == "" {
		panic("harness: BuildBinaries was not called (call it from TestMain)")
	}
	return filepath.Join(binDir, name)
}
