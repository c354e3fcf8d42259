package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// c3Account is the JetStream account the cluster's clients use (no
// auth is configured: the global account).
const c3Account = server.DEFAULT_GLOBAL_ACCOUNT

// Cluster3 is a 3-node JetStream cluster in this process, on loopback, in the
// style of nats-server's own createJetStreamClusterExplicit: servers n1..n3,
// explicit routes between them, sync_interval: always, a store directory of
// its own each and a server tag az:a, az:b, az:c. A node can be shut down and
// restarted with the same name, ports and store (Shutdown, Restart), or the
// whole cluster at once (StopAll, RestartAll), as the nats-server tests do
// with stopAll/restartAll.
type Cluster3 struct {
	T    testing.TB
	Name string

	opts [3]*server.Options

	mu      sync.Mutex
	servers [3]*server.Server
}

// NewCluster3 starts the cluster, waits until it has a meta leader that sees
// all three peers, and stops it when the test ends.
func NewCluster3(t testing.TB) *Cluster3 {
	t.Helper()
	c := &Cluster3{T: t, Name: "shardflow-c3"}
	var clientPorts, clusterPorts [3]int
	for i := range 3 {
		clientPorts[i] = FreePort(t)
		clusterPorts[i] = FreePort(t)
	}
	var routes []string
	for i := range 3 {
		routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(clusterPorts[i]))
	}
	root := t.TempDir()
	for i := range 3 {
		name := "n" + strconv.Itoa(i+1)
		c.opts[i] = &server.Options{
			ServerName: name,
			Host:       "127.0.0.1",
			Port:       clientPorts[i],
			JetStream:  true,
			StoreDir:   filepath.Join(root, name),
			SyncAlways: true,
			// Small limits: JetStream otherwise reserves a share of the
			// machine's memory and disk per server.
			JetStreamMaxMemory: 256 << 20,
			JetStreamMaxStore:  2 << 30,
			MaxPayload:         1 << 20,
			NoSigs:             true,
			NoLog:              true,
			Cluster: server.ClusterOpts{
				Name: c.Name,
				Host: "127.0.0.1",
				Port: clusterPorts[i],
			},
			// Every server lists every route, itself included (the server
			// ignores a route to itself), like the nats-server test configs.
			Routes: server.RoutesFromStr(strings.Join(routes, ",")),
			Tags:   []string{"az:" + string(rune('a'+i))},
		}
	}
	t.Cleanup(c.StopAll)
	for i := range 3 {
		c.start(i)
	}
	c.WaitOnClusterReady(30 * time.Second)
	return c
}

func (c *Cluster3) start(i int) {
	c.T.Helper()
	s, err := server.NewServer(c.opts[i].Clone())
	if err != nil {
		c.T.Fatalf("cluster: new server %s: %v", c.opts[i].ServerName, err)
	}
	if os.Getenv("NATS_LOGGING") != "" {
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		c.T.Fatalf("cluster: server %s not ready for connections within 15s", c.opts[i].ServerName)
	}
	c.mu.Lock()
	c.servers[i] = s
	c.mu.Unlock()
}

// Server returns node i (0..2), or nil while it is down.
func (c *Cluster3) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.servers[i]
}

// Running returns the nodes that are up.
func (c *Cluster3) Running() []*server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*server.Server
	for _, s := range c.servers {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

// Index returns the node number (0..2) of a server of this cluster, or -1.
func (c *Cluster3) Index(s *server.Server) int {
	if s == nil {
		return -1
	}
	for i, o := range c.opts {
		if o.ServerName == s.Name() {
			return i
		}
	}
	return -1
}

// ClientURLs is the comma-separated client URL list of all three nodes, for
// nats.Connect (down nodes included: a client must find the others).
func (c *Cluster3) ClientURLs() string { return c.ClientURLsFrom(0) }

// ClientURLsFrom is ClientURLs starting with node first; with
// nats.DontRandomize a client connects to that node first.
func (c *Cluster3) ClientURLsFrom(first int) string {
	urls := make([]string, 3)
	for k := range 3 {
		urls[k] = "nats://127.0.0.1:" + strconv.Itoa(c.opts[(first+k)%3].Port)
	}
	return strings.Join(urls, ",")
}

// Shutdown stops node i and waits until it is gone. Its store is kept.
func (c *Cluster3) Shutdown(i int) {
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// Restart starts node i again with the same name, ports and store.
func (c *Cluster3) Restart(i int) {
	c.T.Helper()
	if c.Server(i) != nil {
		c.T.Fatalf("cluster: restart %s: it is running", c.opts[i].ServerName)
	}
	c.start(i)
}

// StopAll shuts every node down (all at once, as a whole-cluster outage).
func (c *Cluster3) StopAll() {
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() { c.Shutdown(i) })
	}
	wg.Wait()
}

// RestartAll starts every node that is down, and waits until the cluster
// is ready again.
func (c *Cluster3) RestartAll() {
	c.T.Helper()
	for i := range 3 {
		if c.Server(i) == nil {
			c.start(i)
		}
	}
	c.WaitOnClusterReady(30 * time.Second)
}

// metaLeader returns the node that leads the meta group, or nil.
func (c *Cluster3) metaLeader() *server.Server {
	for _, s := range c.Running() {
		if s.JetStreamIsLeader() {
			return s
		}
	}
	return nil
}

// ClusterReady reports nil once a meta leader sees every running node as an
// online JetStream peer and every running node is current with the meta
// group.
func (c *Cluster3) ClusterReady() error {
	running := c.Running()
	leader := c.metaLeader()
	if leader == nil {
		return fmt.Errorf("no meta leader among %d running nodes", len(running))
	}
	if peers := leader.JetStreamClusterPeers(); len(peers) < len(running) {
		return fmt.Errorf("meta leader %s sees %d peers %v, %d nodes running", leader.Name(), len(peers), peers, len(running))
	}
	for _, s := range running {
		if !s.JetStreamIsCurrent() {
			return fmt.Errorf("%s is not current with the meta group", s.Name())
		}
	}
	return nil
}

// WaitOnClusterReady waits until ClusterReady, or fails the test.
func (c *Cluster3) WaitOnClusterReady(within time.Duration) {
	c.T.Helper()
	Eventually(c.T, within, c.ClusterReady)
}

// StreamLeader returns the node leading stream, or nil (no leader now).
func (c *Cluster3) StreamLeader(stream string) *server.Server {
	for _, s := range c.Running() {
		if s.JetStreamIsStreamLeader(c3Account, stream) {
			return s
		}
	}
	return nil
}

// ConsumerLeader returns the node leading a consumer, or nil.
func (c *Cluster3) ConsumerLeader(stream, consumer string) *server.Server {
	for _, s := range c.Running() {
		if s.JetStreamIsConsumerLeader(c3Account, stream, consumer) {
			return s
		}
	}
	return nil
}

// WaitOnStreamLeader waits until stream has a leader and returns it, or
// fails the test.
func (c *Cluster3) WaitOnStreamLeader(stream string, within time.Duration) *server.Server {
	c.T.Helper()
	var l *server.Server
	Eventually(c.T, within, func() error {
		if l = c.StreamLeader(stream); l == nil {
			return fmt.Errorf("stream %s has no leader", stream)
		}
		return nil
	})
	return l
}

// AllCurrent reports nil when the meta group is ready (see ClusterReady) and
// every listed stream has a leader and is current on every running node.
func (c *Cluster3) AllCurrent(streams ...string) error {
	if err := c.ClusterReady(); err != nil {
		return err
	}
	for _, st := range streams {
		if c.StreamLeader(st) == nil {
			return fmt.Errorf("stream %s has no leader", st)
		}
		for _, s := range c.Running() {
			if !s.JetStreamIsStreamCurrent(c3Account, st) {
				return fmt.Errorf("stream %s is not current on %s", st, s.Name())
			}
		}
	}
	return nil
}

// WaitOnAllCurrent waits until AllCurrent, or fails the test.
func (c *Cluster3) WaitOnAllCurrent(within time.Duration, streams ...string) {
	c.T.Helper()
	Eventually(c.T, within, func() error { return c.AllCurrent(streams...) })
}

// Cluster3Replica is one node's local view of a stream (its own store, read
// through the server's Jsz monitoring call, not the leader's answer).
type Cluster3Replica struct {
	Server                              string
	Leader                              bool
	Msgs, FirstSeq, LastSeq, NumDeleted uint64
}

func (r Cluster3Replica) String() string {
	l := ""
	if r.Leader {
		l = "*"
	}
	return fmt.Sprintf("%s%s{msgs=%d first=%d last=%d deleted=%d}", r.Server, l, r.Msgs, r.FirstSeq, r.LastSeq, r.NumDeleted)
}

// ReplicaStates returns the local state of stream on every running node that
// holds a replica of it.
func (c *Cluster3) ReplicaStates(stream string) ([]Cluster3Replica, error) {
	var out []Cluster3Replica
	for _, s := range c.Running() {
		jsi, err := s.Jsz(&server.JSzOptions{Account: c3Account, Streams: true})
		if err != nil {
			return nil, fmt.Errorf("jsz on %s: %w", s.Name(), err)
		}
		for _, ad := range jsi.AccountDetails {
			for _, sd := range ad.Streams {
				if sd.Name != stream {
					continue
				}
				out = append(out, Cluster3Replica{
					Server:     s.Name(),
					Leader:     s.JetStreamIsStreamLeader(c3Account, stream),
					Msgs:       sd.State.Msgs,
					FirstSeq:   sd.State.FirstSeq,
					LastSeq:    sd.State.LastSeq,
					NumDeleted: uint64(sd.State.NumDeleted),
				})
			}
		}
	}
	return out, nil
}

// CheckReplicasAgree returns nil when all three nodes are up, each holds a
// replica of stream, and the replicas agree on Msgs, FirstSeq, LastSeq and
// NumDeleted (nats-server's checkState). Poll it with Eventually: followers
// catch up asynchronously.
func (c *Cluster3) CheckReplicasAgree(stream string) error {
	if n := len(c.Running()); n != 3 {
		return fmt.Errorf("stream %s: %d of 3 nodes running", stream, n)
	}
	states, err := c.ReplicaStates(stream)
	if err != nil {
		return err
	}
	if len(states) != 3 {
		return fmt.Errorf("stream %s: %d replicas found, want 3: %v", stream, len(states), states)
	}
	leaders := 0
	for _, st := range states {
		if st.Leader {
			leaders++
		}
	}
	if leaders != 1 {
		return fmt.Errorf("stream %s: %d leaders: %v", stream, leaders, states)
	}
	first := states[0]
	for _, st := range states[1:] {
		if st.Msgs != first.Msgs || st.FirstSeq != first.FirstSeq || st.LastSeq != first.LastSeq || st.NumDeleted != first.NumDeleted {
			return fmt.Errorf("stream %s: replicas disagree: %v", stream, states)
		}
	}
	return nil
}
