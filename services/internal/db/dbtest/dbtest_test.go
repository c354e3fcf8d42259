package dbtest_test

import (
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/shardflow/shardflow/services/internal/db/dbtest"
)

// fatalRecorder is a testing.TB whose Fatal ends only the goroutine calling
// it, recording the message, so a test can check what New fails with.
type fatalRecorder struct {
	*testing.T
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fatalRecorder) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	runtime.Goexit()
}

func (f *fatalRecorder) Skip(args ...any)                 { f.Fatalf("skipped: %s", fmt.Sprint(args...)) }
func (f *fatalRecorder) Skipf(format string, args ...any) { f.Fatalf("skipped: "+format, args...) }
func (f *fatalRecorder) SkipNow()                         { f.Fatalf("skipped") }

func TestNewFailsWithHowToWhenPostgresIsDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	_ = l.Close()
	t.Setenv(dbtest.EnvDSN, "postgres://postgres@"+addr+"/test?sslmode=disable")

	rec := &fatalRecorder{T: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		dbtest.New(rec)
		rec.msg = "New returned"
	}()
	<-done
	for _, want := range []string{addr, "make postgres", "cannot reach"} {
		if !strings.Contains(rec.msg, want) {
			t.Errorf("New's failure %q does not contain %q", rec.msg, want)
		}
	}
	if strings.Contains(rec.msg, "skipped") {
		t.Errorf("New skipped: %s", rec.msg)
	}
}
