package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/natsembed"
)

// AdminToken is the admin API token of every harness stack.
const AdminToken = "test-admin-token"

// Options configures a Stack.
type Options struct {
	// Topology is provisioned on the server. Default: FastTopology(2).
	Topology streams.Topology
	// Env is added to every process's environment.
	Env []string
	// SyncAlways runs JetStream with sync_interval: always.
	SyncAlways bool
	// OwnDatabase gives the stack a database of its own instead of a schema
	// (for tests that take the database down).
	OwnDatabase bool
	// ShardDatabases lists the shards whose people, triggers and deliveries
	// get a database of their own (SHARDFLOW_SHARD_DATABASE_URLS), which
	// StopShardDatabase can take down; the other shards use the main one.
	ShardDatabases []int
}

// FastTopology is a topology with a quick retry schedule, so failure tests
// finish in seconds: MaxDeliver 4, BackOff 250ms, 500ms, 1s.
func FastTopology(shards int) streams.Topology {
	t := streams.Topology{Shards: shards}.WithDefaults()
	for i := range t.Consumers {
		if t.Consumers[i].Kind == streams.KindInbound || t.Consumers[i].Kind == streams.KindOutbound {
			t.Consumers[i].MaxDeliver = 4
			t.Consumers[i].BackOff = []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second}
		}
	}
	return t
}

// Stack is one running shardflow: NATS in this process, services as
// processes, and a Postgres schema.
type Stack struct {
	T        testing.TB
	Topo     streams.Topology
	DSN      string
	DB       *pgxpool.Pool
	NC       *nats.Conn
	JS       jetstream.JetStream
	NATSURL  string
	storeDir string
	port     int
	opts     Options

	mu     sync.Mutex
	nats   *server.Server
	procs  map[string]*Proc
	ports  map[string]int
	logDir string

	// ShardDSN and ShardDB are the databases of Options.ShardDatabases, by shard.
	ShardDSN map[int]string
	ShardDB  map[int]*pgxpool.Pool
}

// New starts NATS, provisions the topology and creates the schema. Services
// are started with Start.
func New(t testing.TB, opts Options) *Stack {
	t.Helper()
	if opts.Topology.Shards == 0 {
		opts.Topology = FastTopology(2)
	}
	s := &Stack{T: t, Topo: opts.Topology, opts: opts, storeDir: t.TempDir(), procs: map[string]*Proc{}, ports: map[string]int{}, logDir: t.TempDir()}
	if opts.OwnDatabase {
		s.DSN, s.DB = Database(t)
	} else {
		s.DSN, s.DB = Schema(t)
	}
	s.ShardDSN, s.ShardDB = map[int]string{}, map[int]*pgxpool.Pool{}
	for _, n := range opts.ShardDatabases {
		s.ShardDSN[n], s.ShardDB[n] = Database(t)
	}
	s.port = FreePort(t)
	s.StartNATS()
	t.Cleanup(s.stopAll)
	// A failed test shows the end of every service's log (the log files go
	// with the test's temporary directory): a flake is diagnosed from its
	// first failure.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for name, p := range s.procs {
			t.Logf("--- %s log, last 80 lines:\n%s", name, tail(p.Log(), 80))
		}
	})
	var err error
	s.NC, err = nats.Connect(s.NATSURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.NC.Close)
	s.JS, err = jetstream.New(s.NC)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := streams.Provision(ctx, s.JS, s.Topo, nil); err != nil {
		t.Fatalf("provision: %v", err)
	}
	return s
}

// StartNATS starts (or restarts, keeping its store and port) the server.
func (s *Stack) StartNATS() {
	s.T.Helper()
	srv, err := natsembed.Run(natsembed.Config{Port: s.port, StoreDir: s.storeDir, SyncAlways: s.opts.SyncAlways})
	if err != nil {
		s.T.Fatalf("start nats: %v", err)
	}
	s.mu.Lock()
	s.nats = srv
	s.mu.Unlock()
	s.NATSURL = srv.ClientURL()
}

// StopNATS shuts the server down.
func (s *Stack) StopNATS() {
	s.mu.Lock()
	srv := s.nats
	s.nats = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

func (s *Stack) stopAll() {
	s.mu.Lock()
	procs := make([]*Proc, 0, len(s.procs))
	for _, p := range s.procs {
		procs = append(procs, p)
	}
	s.mu.Unlock()
	for _, p := range procs {
		p.Stop(10 * time.Second)
	}
	s.StopNATS()
}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Proc is a service process.
type Proc struct {
	Name       string
	cmd        *exec.Cmd
	env        []string
	s          *Stack
	done       chan struct{}
	exitErr    error
	healthFile string
	logPath    string
}

// Addr returns the address a service's API listens on (ingest, accounts).
func (s *Stack) Addr(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.ports[name]
	if !ok {
		p = FreePort(s.T)
		s.ports[name] = p
	}
	return "127.0.0.1:" + strconv.Itoa(p)
}

// IngestURL is the tracking API's base URL; AdminURL the admin API's.
func (s *Stack) IngestURL() string { return "http://" + s.Addr("ingest") }

// AdminURL is the admin API's base URL.
func (s *Stack) AdminURL() string { return "http://" + s.Addr("accounts") }

// Start starts a service process (or its instance name "processor-2": the
// binary is the part before the dash) and waits until it is ready.
func (s *Stack) Start(name string, env ...string) *Proc {
	s.T.Helper()
	p := s.Launch(name, env...)
	p.WaitReady(60 * time.Second)
	return p
}

// Launch starts a service process without waiting for it to be ready.
func (s *Stack) Launch(name string, env ...string) *Proc {
	s.T.Helper()
	bin := name
	if i := strings.IndexByte(name, '-'); i > 0 {
		bin = name[:i]
	}
	base := []string{
		"SHARDFLOW_NATS_URL=" + s.NATSURL,
		"SHARDFLOW_DATABASE_URL=" + s.DSN,
		"SHARDFLOW_SHARDS=" + strconv.Itoa(s.Topo.Shards),
		"SHARDFLOW_MAX_EVENT_BYTES=" + strconv.Itoa(s.Topo.MaxEventBytes),
		"SHARDFLOW_HEALTH_ADDR=127.0.0.1:0",
		"SHARDFLOW_ADMIN_TOKEN=" + AdminToken,
		"SHARDFLOW_LOG_LEVEL=info",
		"SHARDFLOW_SHUTDOWN_TIMEOUT=10s",
	}
	if spec := s.shardDatabaseURLs(); spec != "" {
		base = append(base, "SHARDFLOW_SHARD_DATABASE_URLS="+spec)
	}
	switch bin {
	case "ingest":
		base = append(base, "SHARDFLOW_INGEST_ADDR="+s.Addr("ingest"))
	case "accounts":
		base = append(base, "SHARDFLOW_ADMIN_ADDR="+s.Addr("accounts"))
	}
	p := &Proc{Name: name, s: s, env: append(append(base, s.opts.Env...), env...)}
	p.start()
	s.mu.Lock()
	s.procs[name] = p
	s.mu.Unlock()
	return p
}

func (p *Proc) start() {
	t := p.s.T
	t.Helper()
	bin := p.Name
	if i := strings.IndexByte(bin, '-'); i > 0 {
		bin = bin[:i]
	}
	p.healthFile = filepath.Join(p.s.logDir, p.Name+".health")
	_ = os.Remove(p.healthFile)
	p.logPath = filepath.Join(p.s.logDir, p.Name+".log")
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Binary(bin))
	cmd.Env = append(os.Environ(), append(p.env, "SHARDFLOW_HEALTH_ADDR_FILE="+p.healthFile)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.Name, err)
	}
	p.cmd, p.done, p.exitErr = cmd, make(chan struct{}), nil
	go func() {
		p.exitErr = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
}

// Log returns what the process wrote so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// HealthAddr is the process's /healthz, /readyz, /metrics address.
func (p *Proc) HealthAddr() string {
	b, _ := os.ReadFile(p.healthFile)
	return string(b)
}

// WaitReady waits until /readyz answers 200.
func (p *Proc) WaitReady(within time.Duration) {
	t := p.s.T
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("%s exited during start-up (%v):\n%s", p.Name, p.exitErr, tail(p.Log(), 40))
		default:
		}
		if addr := p.HealthAddr(); addr != "" {
			resp, err := http.Get("http://" + addr + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not ready within %v:\n%s", p.Name, within, tail(p.Log(), 40))
}

// Ready reports whether /readyz answers 200 now.
func (p *Proc) Ready() bool {
	ready, _ := p.Readiness()
	return ready
}

// Metrics returns the process's /metrics text.
func (p *Proc) Metrics() string {
	resp, err := http.Get("http://" + p.HealthAddr() + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits up to within; it returns how long the stop
// took, or fails the test if the process did not exit (it is then killed).
func (p *Proc) Stop(within time.Duration) time.Duration {
	select {
	case <-p.done:
		return 0
	default:
	}
	t0 := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return time.Since(t0)
	case <-time.After(within):
		p.Kill()
		p.s.T.Errorf("%s did not stop within %v after SIGTERM", p.Name, within)
		return time.Since(t0)
	}
}

// Exited returns a channel closed when the process exits.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// ExitCode is the exit code once exited (-1 if killed by a signal).
func (p *Proc) ExitCode() int {
	if p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Relaunch starts an exited process again without waiting for readiness.
func (p *Proc) Relaunch() {
	p.s.T.Helper()
	<-p.done
	p.start()
}

// Restart starts the process again with the same environment.
func (p *Proc) Restart() {
	p.s.T.Helper()
	select {
	case <-p.done:
	default:
		p.Stop(15 * time.Second)
	}
	p.start()
	p.WaitReady(60 * time.Second)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Account is the admin API's answer for a created account.
type Account struct {
	ID         string `json:"id"`
	Shard      int    `json:"shard"`
	WriteKey   string `json:"write_key"`
	Status     string `json:"status"`
	Generation int64  `json:"generation"`
}

// Admin calls the admin API and decodes the answer into out (may be nil).
// It returns the status code.
func (s *Stack) Admin(method, path string, body, out any) int {
	s.T.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, s.AdminURL()+path, rd)
	req.Header.Set("Authorization", "Bearer "+AdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.T.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			s.T.Fatalf("%s %s: decode %q: %v", method, path, b, err)
		}
	}
	return resp.StatusCode
}

// CreateAccount creates an account through the admin API.
func (s *Stack) CreateAccount(id string) Account {
	s.T.Helper()
	return s.CreateAccountWith(map[string]any{"id": id})
}

// CreateAccountWith creates an account with a full request body.
func (s *Stack) CreateAccountWith(body map[string]any) Account {
	s.T.Helper()
	var a Account
	if code := s.Admin("POST", "/v1/accounts", body, &a); code != 201 {
		s.T.Fatalf("create account %v: HTTP %d", body["id"], code)
	}
	return a
}

// AccountStatus returns the admin API's view of an account.
func (s *Stack) AccountStatus(id string) map[string]any {
	s.T.Helper()
	var out map[string]any
	s.Admin("GET", "/v1/accounts/"+id, nil, &out)
	return out
}

// WaitStatus waits until the account has the status.
func (s *Stack) WaitStatus(id, status string, within time.Duration) map[string]any {
	s.T.Helper()
	var last map[string]any
	Eventually(s.T, within, func() error {
		last = s.AccountStatus(id)
		if last["status"] != status {
			return fmt.Errorf("account %s is %v, want %s", id, last["status"], status)
		}
		return nil
	})
	return last
}

// ShardOf is the shard the accounts service assigns to an id (FNV-32a).
func ShardOf(id string, shards int) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return int(h.Sum32() % uint32(shards))
}

// SameShardIDs returns n account ids with prefix that share one shard.
func SameShardIDs(prefix string, n, shards int) []string {
	var ids []string
	want := -1
	for i := 0; len(ids) < n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		sh := ShardOf(id, shards)
		if want < 0 {
			want = sh
		}
		if sh == want {
			ids = append(ids, id)
		}
	}
	return ids
}

// AccountMessages counts an account's messages in a kind's stream.
func (s *Stack) AccountMessages(kind streams.Kind, shard int, account string) uint64 {
	s.T.Helper()
	n, err := streams.CountSubject(context.Background(), s.JS, streams.StreamName(kind, shard), streams.AccountFilter(kind, shard, account))
	if err != nil {
		s.T.Fatal(err)
	}
	return n
}

// SetTrigger points an account's event at a webhook URL.
func (s *Stack) SetTrigger(account, name, event, url string) {
	s.T.Helper()
	if code := s.Admin("PUT", "/v1/accounts/"+account+"/triggers/"+name, map[string]string{"event": event, "channel": "webhook", "url": url}, nil); code != 200 {
		s.T.Fatalf("set trigger: HTTP %d", code)
	}
}

// Send posts a body to the tracking API with the write key as Basic user;
// it returns the status and the body.
func (s *Stack) Send(path, writeKey string, body []byte) (int, string) {
	req, _ := http.NewRequest("POST", s.IngestURL()+path, bytes.NewReader(body))
	req.SetBasicAuth(writeKey, "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TrackBatch builds a /v1/batch body of track events named event, with
// messageIds prefix-0..prefix-(n-1) starting at from.
func TrackBatch(event, prefix string, from, n int) []byte {
	var b strings.Builder
	b.WriteString(`{"batch":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"type":"track","userId":"u%d","event":%q,"messageId":"%s-%d","properties":{"n":%d}}`, from+i, event, prefix, from+i, from+i)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// StreamMsgs returns the number of messages in a stream.
func (s *Stack) StreamMsgs(name string) uint64 {
	s.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := s.JS.Stream(ctx, name)
	if err != nil {
		s.T.Fatalf("stream %s: %v", name, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		s.T.Fatalf("stream %s: %v", name, err)
	}
	return info.State.Msgs
}

// Count runs a counting query.
func (s *Stack) Count(query string, args ...any) int {
	s.T.Helper()
	var n int
	if err := s.DB.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		s.T.Fatalf("%s: %v", query, err)
	}
	return n
}

// Eventually polls f until it returns nil or within passes.
func Eventually(t testing.TB, within time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// LogLines returns the process's log lines matching substr.
func (p *Proc) LogLines(substr string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(p.Log()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			out = append(out, sc.Text())
		}
	}
	return out
}

// Proc returns a started process by name.
func (s *Stack) Proc(name string) *Proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.procs[name]
	if !ok {
		s.T.Fatalf("no process %s", name)
	}
	return p
}

// StopDatabase makes the test database unavailable, as an outage would:
// it refuses new connections and terminates the open ones. The returned
// function brings it back. Use it with Options.OwnDatabase, so the outage
// touches no other test.
func (s *Stack) StopDatabase() (restore func()) {
	s.T.Helper()
	if !s.opts.OwnDatabase {
		s.T.Fatal("StopDatabase needs Options.OwnDatabase")
	}
	return s.stopDatabaseAt(s.DSN)
}

// StopShardDatabase is StopDatabase for the database of a shard in
// Options.ShardDatabases.
func (s *Stack) StopShardDatabase(shard int) (restore func()) {
	s.T.Helper()
	dsn, ok := s.ShardDSN[shard]
	if !ok {
		s.T.Fatalf("StopShardDatabase(%d) needs shard %d in Options.ShardDatabases", shard, shard)
	}
	return s.stopDatabaseAt(dsn)
}

// stopDatabaseAt makes the database dsn names unavailable: it refuses new
// connections and terminates the open ones until restore.
func (s *Stack) stopDatabaseAt(dsn string) (restore func()) {
	s.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		s.T.Fatal(err)
	}
	dbName := cfg.ConnConfig.Database
	adminCfg := cfg.Copy()
	adminCfg.ConnConfig.Database = "postgres"
	delete(adminCfg.ConnConfig.RuntimeParams, "search_path")
	admin, err := pgxpool.NewWithConfig(ctx, adminCfg)
	if err != nil {
		s.T.Fatal(err)
	}
	if _, err := admin.Exec(ctx, `ALTER DATABASE "`+dbName+`" ALLOW_CONNECTIONS false`); err != nil {
		s.T.Fatalf("stop database: %v", err)
	}
	if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, dbName); err != nil {
		s.T.Fatalf("stop database: %v", err)
	}
	restored := false
	restore = func() {
		if restored {
			return
		}
		restored = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := admin.Exec(ctx, `ALTER DATABASE "`+dbName+`" ALLOW_CONNECTIONS true`); err != nil {
			s.T.Errorf("restore database: %v", err)
		}
		admin.Close()
	}
	s.T.Cleanup(restore)
	return restore
}

// shardDatabaseURLs is SHARDFLOW_SHARD_DATABASE_URLS for Options.ShardDatabases.
func (s *Stack) shardDatabaseURLs() string {
	var entries []string
	for _, n := range s.opts.ShardDatabases {
		entries = append(entries, fmt.Sprintf("%d=%s", n, s.ShardDSN[n]))
	}
	return strings.Join(entries, ";")
}

// ShardCount runs a counting query in the database of a shard in
// Options.ShardDatabases.
func (s *Stack) ShardCount(shard int, query string, args ...any) int {
	s.T.Helper()
	pool, ok := s.ShardDB[shard]
	if !ok {
		s.T.Fatalf("ShardCount(%d): shard %d has no database of its own (Options.ShardDatabases)", shard, shard)
	}
	var n int
	if err := pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		s.T.Fatalf("shard %d database: %s: %v", shard, query, err)
	}
	return n
}

// Readiness returns what /readyz answers now: whether the process is ready
// and, when not, the failing checks' errors by name (nil when /readyz does
// not answer).
func (p *Proc) Readiness() (ready bool, failed map[string]string) {
	addr := p.HealthAddr()
	if addr == "" {
		return false, nil
	}
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return false, nil
	}
	defer resp.Body.Close()
	var body struct {
		Ready  bool              `json:"ready"`
		Failed map[string]string `json:"failed"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return false, nil
	}
	return resp.StatusCode == http.StatusOK && body.Ready, body.Failed
}
