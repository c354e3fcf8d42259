package integration

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/integration/harness"
	"github.com/shardflow/shardflow/streams"
)

// The cluster suites (T4 and T5 of the reliability plan) run a Jepsen-style
// ledger against a 3-node R3 cluster in this process: one publisher sends
// unique ids to INBOUND_0 at a steady rate and records every id JetStream
// acknowledged; one consumer (the streams runtime on the processor stage of
// shard 0) records every delivery its handler acked. The checker then sorts
// every acknowledged id into ok, lost, or delivered more than once, and says
// for each repeat whether it was a redelivery of the same stream sequence
// (an ack that did not survive the fault) or a second copy in the stream
// (a deduplication failure, never acceptable).

// ledgerDelivery is one call of the consumer's handler.
type ledgerDelivery struct {
	seq       uint64
	delivered int // JetStream's delivery count, 1 on the first
	at        time.Time
}

// clusterLoad is the publisher, the consumer and their ledger.
type clusterLoad struct {
	t     *testing.T
	topo  streams.Topology
	every time.Duration

	mu          sync.Mutex
	published   int                  // ids started
	acked       map[string]time.Time // id → when its publish was acknowledged
	ackOrder    []time.Time          // every acknowledgement, in order
	dupAcks     int                  // acknowledgements with PubAck.Duplicate (a retried id already stored)
	retries     int                  // publish attempts that failed and were retried with the same id
	pubErrs     map[string]int       // publish error text → count
	handled     map[string][]ledgerDelivery
	handleOrder []time.Time
	notes       []string // connection events

	stopPub   chan struct{}
	pubDone   chan struct{}
	consStop  context.CancelFunc
	consDone  chan struct{}
	consumer  *streams.Consumer
	conns     []*nats.Conn
	runCancel context.CancelFunc
}

// connectCluster3 connects to the cluster, never giving up reconnecting.
// first >= 0 makes the client connect to that node first (so a test can put
// its clients on the node it is about to kill); -1 picks one at random.
func connectCluster3(t *testing.T, c *harness.Cluster3, name string, first int, l *clusterLoad) *nats.Conn {
	t.Helper()
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(100 * time.Millisecond),
	}
	urls := c.ClientURLs()
	if first >= 0 {
		urls = c.ClientURLsFrom(first)
		opts = append(opts, nats.DontRandomize())
	}
	if l != nil {
		opts = append(opts,
			nats.DisconnectErrHandler(func(nc *nats.Conn, err error) { l.note("%s disconnected: %v", name, err) }),
			nats.ReconnectHandler(func(nc *nats.Conn) { l.note("%s reconnected to %s", name, nc.ConnectedServerName()) }),
		)
	}
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", name, err)
	}
	if l != nil {
		l.note("%s connected to %s", name, nc.ConnectedServerName())
	}
	t.Cleanup(nc.Close)
	return nc
}

func (l *clusterLoad) note(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.notes = append(l.notes, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
}

// ledgerLogWriter sends the consumer runtime's log lines to the test log.
type ledgerLogWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *ledgerLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *ledgerLogWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// startClusterLoad provisions nothing: the topology must exist. It starts
// the publisher (one id every `every`) and the consumer, each on a
// connection of its own to the whole cluster, connected first to node first
// (-1: any).
func startClusterLoad(t *testing.T, c *harness.Cluster3, topo streams.Topology, every time.Duration, first int) *clusterLoad {
	t.Helper()
	l := &clusterLoad{
		t: t, topo: topo, every: every,
		acked: map[string]time.Time{}, pubErrs: map[string]int{}, handled: map[string][]ledgerDelivery{},
		stopPub: make(chan struct{}), pubDone: make(chan struct{}), consDone: make(chan struct{}),
	}
	runCtx, runCancel := context.WithCancel(context.Background())
	l.runCancel = runCancel

	// Consumer.
	cnc := connectCluster3(t, c, "ledger-consumer", first, l)
	cjs, err := jetstream.New(cnc)
	if err != nil {
		t.Fatal(err)
	}
	logw := &ledgerLogWriter{t: t}
	t.Cleanup(logw.close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l.consumer, err = streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: cjs, Topology: topo, Stage: streams.StageProcessor, Shard: 0,
		Logger: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Handler: func(_ context.Context, m *streams.Msg) streams.Outcome {
			now := time.Now()
			l.mu.Lock()
			l.handled[m.ID] = append(l.handled[m.ID], ledgerDelivery{seq: m.Sequence, delivered: m.Delivered, at: now})
			l.handleOrder = append(l.handleOrder, now)
			l.mu.Unlock()
			return streams.Ack()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(runCtx)
	l.consStop = ccancel
	go func() {
		defer close(l.consDone)
		_ = l.consumer.Run(cctx)
	}()

	// Publisher.
	pnc := connectCluster3(t, c, "ledger-publisher", first, l)
	pjs, err := jetstream.New(pnc)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := streams.NewPublisher(streams.PublisherConfig{JetStream: pjs, Topology: topo, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	l.conns = []*nats.Conn{cnc, pnc}
	go l.publish(runCtx, pub)
	t.Cleanup(l.shutdown)
	return l
}

// publish sends ids m-000000, m-000001... one at a time. A failed publish is
// retried with the same id (so the Nats-Msg-Id deduplicates a publish whose
// ack was lost) until it is acknowledged; stop is only looked at between ids,
// so no id is left unknown.
func (l *clusterLoad) publish(ctx context.Context, pub *streams.Publisher) {
	defer close(l.pubDone)
	subj := streams.Subject{Kind: streams.KindInbound, Shard: 0, Account: "ledger", Type: "track"}
	tick := time.NewTicker(l.every)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-l.stopPub:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		id := fmt.Sprintf("m-%06d", n)
		l.mu.Lock()
		l.published++
		l.mu.Unlock()
		for {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			res, err := pub.Publish(pctx, streams.Message{Subject: subj, ID: id, Data: []byte(`{"n":"` + id + `"}`)})
			cancel()
			now := time.Now()
			l.mu.Lock()
			if err == nil {
				l.acked[id] = now
				l.ackOrder = append(l.ackOrder, now)
				if res.Duplicate {
					l.dupAcks++
				}
				l.mu.Unlock()
				break
			}
			l.retries++
			l.pubErrs[pubErrClass(err)]++
			l.mu.Unlock()
			if ctx.Err() != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// pubErrClass strips the varying parts of a publish error, for the summary.
func pubErrClass(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// stopPublishing stops the publisher after its current id is acknowledged.
func (l *clusterLoad) stopPublishing(within time.Duration) {
	l.t.Helper()
	close(l.stopPub)
	select {
	case <-l.pubDone:
	case <-time.After(within):
		l.t.Fatalf("publisher did not stop within %v (its current id is not acknowledged)", within)
	}
}

// stopConsuming stops the consumer gracefully.
func (l *clusterLoad) stopConsuming(within time.Duration) {
	l.t.Helper()
	l.consStop()
	select {
	case <-l.consDone:
	case <-time.After(within):
		l.t.Fatalf("consumer did not stop within %v", within)
	}
}

func (l *clusterLoad) shutdown() {
	l.runCancel()
	<-l.pubDone
	<-l.consDone
	for _, nc := range l.conns {
		nc.Close()
	}
}

// counts returns ids acknowledged and ids handled so far.
func (l *clusterLoad) counts() (acked, handled int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked), len(l.handled)
}

// since returns acknowledgements and handler calls after t0, and the time
// of the first of each (zero if none).
func (l *clusterLoad) since(t0 time.Time) (acks, handles int, firstAck, firstHandle time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, at := range l.ackOrder {
		if at.After(t0) {
			if acks == 0 {
				firstAck = at
			}
			acks++
		}
	}
	for _, at := range l.handleOrder {
		if at.After(t0) {
			if handles == 0 {
				firstHandle = at
			}
			handles++
		}
	}
	return
}

// waitProgress waits until at least n more ids were acknowledged and handled
// after t0.
func (l *clusterLoad) waitProgress(t0 time.Time, n int, within time.Duration) {
	l.t.Helper()
	harness.Eventually(l.t, within, func() error {
		acks, handles, _, _ := l.since(t0)
		if acks < n || handles < n {
			return fmt.Errorf("since %s: %d publishes acknowledged, %d messages handled; want %d each", t0.Format("15:04:05.000"), acks, handles, n)
		}
		return nil
	})
}

// missing returns the acknowledged ids not handled yet.
func (l *clusterLoad) missing() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for id := range l.acked {
		if len(l.handled[id]) == 0 {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// waitAllConsumed waits until every acknowledged id was handled.
func (l *clusterLoad) waitAllConsumed(within time.Duration) {
	l.t.Helper()
	harness.Eventually(l.t, within, func() error {
		if m := l.missing(); len(m) > 0 {
			return fmt.Errorf("%d acknowledged ids not consumed yet, e.g. %v", len(m), m[:min(len(m), 10)])
		}
		return nil
	})
}

// ledgerRepeat is an id handled more than once.
type ledgerRepeat struct {
	id         string
	deliveries []ledgerDelivery
	sameSeq    bool
}

// ledgerReport is the checker's verdict.
type ledgerReport struct {
	published, acked, handled int
	lost                      []string       // acknowledged, never handled
	unacked                   int            // handled but never acknowledged to the publisher
	redelivered               []ledgerRepeat // same stream sequence delivered again after the handler acked it
	storedTwice               []ledgerRepeat // the id stored at two stream sequences
}

func (l *clusterLoad) check() ledgerReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := ledgerReport{published: l.published, acked: len(l.acked), handled: len(l.handled)}
	for id := range l.acked {
		if len(l.handled[id]) == 0 {
			r.lost = append(r.lost, id)
		}
	}
	sort.Strings(r.lost)
	for id, ds := range l.handled {
		if _, ok := l.acked[id]; !ok {
			r.unacked++
		}
		if len(ds) < 2 {
			continue
		}
		rp := ledgerRepeat{id: id, deliveries: ds, sameSeq: true}
		for _, d := range ds[1:] {
			if d.seq != ds[0].seq {
				rp.sameSeq = false
			}
		}
		if rp.sameSeq {
			r.redelivered = append(r.redelivered, rp)
		} else {
			r.storedTwice = append(r.storedTwice, rp)
		}
	}
	byID := func(a, b ledgerRepeat) int { return strings.Compare(a.id, b.id) }
	slices.SortFunc(r.redelivered, byID)
	slices.SortFunc(r.storedTwice, byID)
	return r
}

// logSummary writes the ledger and connection events to the test log.
func (l *clusterLoad) logSummary(r ledgerReport, fault time.Time) {
	l.mu.Lock()
	notes := slices.Clone(l.notes)
	dupAcks, retries := l.dupAcks, l.retries
	pubErrs := make([]string, 0, len(l.pubErrs))
	for e, n := range l.pubErrs {
		pubErrs = append(pubErrs, fmt.Sprintf("%dx %q", n, e))
	}
	l.mu.Unlock()
	sort.Strings(pubErrs)
	st := l.consumer.Stats()
	l.t.Logf("ledger: %d ids published, %d acknowledged, %d handled; lost %d, handled-but-unacknowledged %d, redelivered after ack %d, stored twice %d",
		r.published, r.acked, r.handled, len(r.lost), r.unacked, len(r.redelivered), len(r.storedTwice))
	l.t.Logf("publisher: %d failed attempts retried with the same id, %d acks flagged Duplicate; errors: %s", retries, dupAcks, strings.Join(pubErrs, ", "))
	l.t.Logf("consumer runtime: %d acks sent, %d retried, %d dead-lettered", st.Acked, st.Retried, st.DeadLettered)
	for _, n := range notes {
		l.t.Logf("conn: %s", n)
	}
	for _, rp := range append(slices.Clone(r.redelivered), r.storedTwice...) {
		var parts []string
		for _, d := range rp.deliveries {
			parts = append(parts, fmt.Sprintf("seq %d delivery #%d at fault%+v", d.seq, d.delivered, d.at.Sub(fault).Round(time.Millisecond)))
		}
		l.t.Logf("repeat %s: %s", rp.id, strings.Join(parts, "; "))
	}
}

// waitWorkQueueEmpty waits until the work-queue stream holds no message, i.e.
// every delivery was acked and nothing can be redelivered any more.
func waitWorkQueueEmpty(t *testing.T, js jetstream.JetStream, stream string, within time.Duration) {
	t.Helper()
	harness.Eventually(t, within, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return err
		}
		if n := s.CachedInfo().State.Msgs; n != 0 {
			return fmt.Errorf("%s holds %d messages", stream, n)
		}
		return nil
	})
}

// provisionCluster3 provisions the R3 topology on the cluster.
func provisionCluster3(t *testing.T, c *harness.Cluster3) (streams.Topology, jetstream.JetStream) {
	t.Helper()
	topo := streams.Topology{Shards: 2, Replicas: 3}.WithDefaults()
	nc := connectCluster3(t, c, "admin", -1, nil)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	rep, err := streams.Provision(ctx, js, topo, nil)
	if err != nil {
		t.Fatalf("provision: %v\n%s", err, rep)
	}
	c.WaitOnAllCurrent(30*time.Second, topo.StreamNames()...)
	return topo, js
}

// TestClusterLeaderLoss (T5): shut down the stream leader of INBOUND_0 in
// the middle of a steady load. Publishing and consuming resume after the
// re-election; no acknowledged message is lost; when the node returns, the
// three replicas agree.
func TestClusterLeaderLoss(t *testing.T) {
	c := harness.NewCluster3(t)
	topo, js := provisionCluster3(t, c)
	stream := streams.StreamName(streams.KindInbound, 0)

	// The publisher and the consumer connect to the stream leader, so its
	// loss also cuts their connections (the harshest case: reconnect and
	// re-election at once).
	leader := c.WaitOnStreamLeader(stream, 10*time.Second)
	li := c.Index(leader)
	l := startClusterLoad(t, c, topo, 5*time.Millisecond, li)
	l.waitProgress(time.Time{}, 300, 30*time.Second)
	if now := c.StreamLeader(stream); now != leader {
		t.Fatalf("leadership of %s moved from %s to %s without a fault", stream, leader.Name(), serverNameOf(now))
	}
	consLeader := c.ConsumerLeader(stream, streams.StageProcessor)
	acked0, handled0 := l.counts()
	t.Logf("shutting down %s, leader of %s (consumer leader: %v); %d acknowledged, %d handled so far", leader.Name(), stream, serverNameOf(consLeader), acked0, handled0)
	fault := time.Now()
	c.Shutdown(li)

	// Publishing and consuming resume on the two survivors.
	l.waitProgress(fault, 100, 20*time.Second)
	settled := time.Now()
	_, _, firstAck, firstHandle := l.since(fault)
	newLeader := c.WaitOnStreamLeader(stream, 10*time.Second)
	t.Logf("new leader %s (consumer leader %v); first publish ack %v and first delivery %v after the loss",
		newLeader.Name(), serverNameOf(c.ConsumerLeader(stream, streams.StageProcessor)),
		firstAck.Sub(fault).Round(time.Millisecond), firstHandle.Sub(fault).Round(time.Millisecond))
	if d := firstAck.Sub(fault); d > 10*time.Second {
		t.Errorf("publishing paused %v after the leader loss (want < 10s)", d)
	}

	// The node returns under load.
	back := time.Now()
	c.Restart(li)
	l.waitProgress(back, 100, 20*time.Second)
	l.stopPublishing(10 * time.Second)

	// Drain: every acknowledged id is consumed, and the stream empties (so
	// no redelivery can still be pending).
	l.waitAllConsumed(30 * time.Second)
	waitWorkQueueEmpty(t, js, stream, 30*time.Second)
	c.WaitOnAllCurrent(30*time.Second, stream)
	harness.Eventually(t, 30*time.Second, func() error { return c.CheckReplicasAgree(stream) })
	states, _ := c.ReplicaStates(stream)
	t.Logf("replicas of %s agree: %v", stream, states)
	l.stopConsuming(15 * time.Second)

	r := l.check()
	l.logSummary(r, fault)
	judgeLedger(t, r, fault, settled)
}

// judgeLedger applies the pass criteria: nothing acknowledged is lost,
// nothing is stored twice, and a redelivery of an acked message is only
// accepted where the runtime's ack could not have reached a leader: its
// handler acked it in the failover window, from just before the fault until
// publishing and consuming had both resumed (settled). The runtime acks with
// a plain, unconfirmed Ack, so an ack published while the consumer's leader
// is going away, or while the client reconnects, can be dropped, and the
// message comes back after the ack wait: at-least-once, as documented.
// A redelivery of a message acked outside that window fails the test.
func judgeLedger(t *testing.T, r ledgerReport, fault, settled time.Time) {
	t.Helper()
	if len(r.lost) > 0 {
		t.Errorf("%d acknowledged ids were never consumed (lost): %v", len(r.lost), r.lost[:min(len(r.lost), 20)])
	}
	if len(r.storedTwice) > 0 {
		t.Errorf("%d ids were stored at two stream sequences despite Nats-Msg-Id: %v", len(r.storedTwice), r.storedTwice[:min(len(r.storedTwice), 10)])
	}
	if r.acked == 0 || r.handled < r.acked {
		t.Errorf("%d ids acknowledged, %d handled", r.acked, r.handled)
	}
	var unexplained []string
	for _, rp := range r.redelivered {
		first := rp.deliveries[0]
		again := rp.deliveries[1]
		if again.delivered <= first.delivered {
			unexplained = append(unexplained, fmt.Sprintf("%s: handled again with delivery count %d after %d (not a JetStream redelivery)", rp.id, again.delivered, first.delivered))
			continue
		}
		// The first handling (and its ack) must fall in the failover
		// window: from just before the fault (an ack sent as the leader went
		// away) until the consumer was delivering again.
		if first.at.Before(fault.Add(-2*time.Second)) || first.at.After(settled) {
			unexplained = append(unexplained, fmt.Sprintf("%s: acked at fault%+v, outside the failover window (fault-2s, fault%+v), and still redelivered",
				rp.id, first.at.Sub(fault).Round(time.Millisecond), settled.Sub(fault).Round(time.Millisecond)))
		}
	}
	if len(unexplained) > 0 {
		t.Errorf("%d redeliveries of acked messages not explained by the failover: %v", len(unexplained), unexplained[:min(len(unexplained), 10)])
	}
}

func serverNameOf(s *server.Server) string {
	if s == nil {
		return "none"
	}
	return s.Name()
}

// TestClusterWholeRestart (T4): stop all three nodes in the middle of a
// steady load and start them again. Every stream and consumer of the
// topology is still there, unchanged; the publisher and the consumer
// reconnect by themselves; nothing acknowledged is lost.
func TestClusterWholeRestart(t *testing.T) {
	c := harness.NewCluster3(t)
	topo, js := provisionCluster3(t, c)
	stream := streams.StreamName(streams.KindInbound, 0)

	l := startClusterLoad(t, c, topo, 5*time.Millisecond, -1)
	l.waitProgress(time.Time{}, 300, 30*time.Second)
	acked0, handled0 := l.counts()
	t.Logf("stopping all three nodes; %d acknowledged, %d handled so far", acked0, handled0)
	fault := time.Now()
	c.StopAll()
	// The outage lasts while the clients try to reconnect.
	harness.Eventually(t, 10*time.Second, func() error {
		if d := time.Since(fault); d < 2*time.Second {
			return fmt.Errorf("down for %v", d)
		}
		return nil
	})
	if acks, _, _, _ := l.since(fault.Add(100 * time.Millisecond)); acks != 0 {
		t.Errorf("%d publishes acknowledged while every node was down", acks)
	}
	c.RestartAll()
	back := time.Now()
	t.Logf("cluster back after %v", back.Sub(fault).Round(time.Millisecond))

	// Every stream and consumer survived, with its configuration.
	c.WaitOnAllCurrent(30*time.Second, topo.StreamNames()...)
	harness.Eventually(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rep, err := streams.Provision(ctx, js, topo, &streams.ProvisionOptions{DryRun: true})
		if err != nil {
			return err
		}
		if n := rep.Count(streams.ActionUnchanged); n != len(rep.Changes) {
			return fmt.Errorf("after the restart, provisioning (dry run) finds:\n%s", rep)
		}
		if _, err := js.KeyValue(ctx, streams.DirectoryBucket); err != nil {
			return fmt.Errorf("directory bucket: %w", err)
		}
		return nil
	})

	// The clients reconnected by themselves and the load resumes.
	l.waitProgress(back, 100, 30*time.Second)
	settled := time.Now()
	_, _, firstAck, firstHandle := l.since(back)
	t.Logf("first publish ack %v and first delivery %v after the restart",
		firstAck.Sub(back).Round(time.Millisecond), firstHandle.Sub(back).Round(time.Millisecond))
	l.stopPublishing(10 * time.Second)

	l.waitAllConsumed(30 * time.Second)
	waitWorkQueueEmpty(t, js, stream, 30*time.Second)
	c.WaitOnAllCurrent(30*time.Second, stream)
	harness.Eventually(t, 30*time.Second, func() error { return c.CheckReplicasAgree(stream) })
	states, _ := c.ReplicaStates(stream)
	t.Logf("replicas of %s agree: %v", stream, states)
	l.stopConsuming(15 * time.Second)

	r := l.check()
	l.logSummary(r, fault)
	judgeLedger(t, r, fault, settled)
}
