package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/shardflow/shardflow/streams"
)

// ingestClients is how many HTTP clients (and raw publishers) run at once:
// an ingest tier serves many SDKs at a time, and group commit turns their
// concurrency into larger atomic batches.
const ingestClients = 32

// inboundMsg is an event as a raw publisher would store it: the client's
// JSON on the account's inbound subject, with the id and generation
// headers ingest sets.
func inboundMsg(a Account, subjectType string, id string, data []byte) *nats.Msg {
	m := nats.NewMsg(fmt.Sprintf("inbound.%d.%s.%s", a.Shard, a.ID, subjectType))
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, streams.MessageID(a.ID, a.Generation, id))
	m.Header.Set(streams.HeaderGeneration, strconv.FormatInt(a.Generation, 10))
	return m
}

func purge(ctx context.Context, n *NATS, stream string) error {
	st, err := n.JS.Stream(ctx, stream)
	if err != nil {
		return err
	}
	return st.Purge(ctx)
}

// atomicBatches publishes count messages as atomic batches of size from
// publishers goroutines; it returns msgs/s.
func atomicBatches(ctx context.Context, n *NATS, count, size, publishers int, msg func(i int) *nats.Msg) (float64, error) {
	nc, js, err := n.Connect("bench-batch-publisher")
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				b := int(next.Add(1) - 1)
				if b*size >= count {
					return
				}
				var ms []*nats.Msg
				for i := b * size; i < min((b+1)*size, count); i++ {
					ms = append(ms, msg(i))
				}
				if _, err := jetstreamext.PublishMsgBatch(ctx, js, ms); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(count) / time.Since(start).Seconds(), nil
}

// perRequestAsync publishes count messages from pubs goroutines, each
// taking size at a time: async publish of each, then wait for all their
// acks (what one ingest request would do without atomic batches). It
// returns msgs/s.
func perRequestAsync(ctx context.Context, n *NATS, count, size, pubs int, msg func(i int) *nats.Msg) (float64, error) {
	nc, js, err := n.Connect("bench-request-publisher")
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	var firstErr error
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				b := int(next.Add(1) - 1)
				if b*size >= count {
					return
				}
				var fs []jetstream.PubAckFuture
				for i := b * size; i < min((b+1)*size, count); i++ {
					f, err := js.PublishMsgAsync(msg(i))
					if err != nil {
						fail(err)
						return
					}
					fs = append(fs, f)
				}
				for _, f := range fs {
					select {
					case <-f.Ok():
					case err := <-f.Err():
						fail(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(count) / time.Since(t0).Seconds(), nil
}

func runIngest(ctx context.Context, s *Suite, sc *Scenario) error {
	events := s.size(100_000, 2000)
	const per = 100
	var (
		fRaw   = "raw async publish (1 publisher, window 1000)"
		fBatch = fmt.Sprintf("raw atomic batches of 100 (%d publishers)", ingestClients)
		fB1000 = fmt.Sprintf("raw atomic batches of 1000 (%d publishers)", ingestClients)
		fPerRq = fmt.Sprintf("raw async per request of 100, wait for its acks (%d publishers)", ingestClients)
	)
	const (
		fIng = "ingest /v1/batch"
		fP50 = "ingest request latency p50"
		fP99 = "ingest request latency p99"
		fCPU = "ingest process CPU per event"
	)
	sc.Declare(fRaw, "events/s", "", nil)
	sc.Declare(fBatch, "events/s", fRaw, nil)
	sc.Declare(fB1000, "events/s", fRaw, nil)
	sc.Declare(fPerRq, "events/s", fRaw, nil)
	sc.Declare(fIng, "events/s", fRaw, RatioAtLeast(0.40))
	sc.Declare(fP50, "ms", "", nil)
	sc.Declare(fP99, "ms", "", nil)
	sc.Declare(fCPU, "µs", "", nil)
	sc.Set("%d events of about 1 KiB per measurement (%d requests of %d events), %d concurrent keep-alive HTTP clients in the bench process, one account (rate limit 1,000,000/s), request bodies built before the clock starts; services: accounts and ingest as processes (log level info, telemetry as shipped, group commit 1: one atomic batch in flight per stream, the requests that arrive meanwhile stored together in the next)", events, events/per, per, ingestClients)
	sc.Set("raw baselines publish the same event JSON to the same INBOUND stream with the same Nats-Msg-Id and generation headers; INBOUND is purged between measurements; order rotates per run")

	st, err := NewStack(ctx, StackOptions{})
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.Start(ctx, "accounts"); err != nil {
		return err
	}
	ing, err := st.Start(ctx, "ingest")
	if err != nil {
		return err
	}
	a, err := st.CreateAccount(ctx, "ingest-a")
	if err != nil {
		return err
	}
	if err := st.WaitDirectory(ctx, a.ID); err != nil {
		return err
	}
	stream := streams.StreamName(streams.KindInbound, a.Shard)
	client := NewClient(st.IngestURL(), a.WriteKey, ingestClients)
	defer client.Close()

	type step struct {
		name string
		run  func(r int) error
	}
	// raw is a baseline step: publish the same events as ingest stores them,
	// with publish (one of the raw publishing modes), and record the rate.
	raw := func(fig, tag string, publish func(msg func(i int) *nats.Msg) (float64, error)) step {
		return step{fig, func(r int) error {
			prefix := fmt.Sprintf("%s%d", tag, r)
			rate, err := publish(func(i int) *nats.Msg {
				return inboundMsg(a, "track", prefix+"-"+itoa(i), EventJSON("Bench", prefix, i, 0))
			})
			if err == nil {
				sc.Add(fig, r, rate)
			}
			return err
		}}
	}
	steps := []step{
		raw(fRaw, "raw", func(msg func(int) *nats.Msg) (float64, error) {
			return asyncPublish(ctx, st.NATS, events, msg)
		}),
		raw(fBatch, "atomic", func(msg func(int) *nats.Msg) (float64, error) {
			return atomicBatches(ctx, st.NATS, events, per, ingestClients, msg)
		}),
		raw(fB1000, "atomick", func(msg func(int) *nats.Msg) (float64, error) {
			return atomicBatches(ctx, st.NATS, events, 1000, ingestClients, msg)
		}),
		raw(fPerRq, "perreq", func(msg func(int) *nats.Msg) (float64, error) {
			return perRequestAsync(ctx, st.NATS, events, per, ingestClients, msg)
		}),
		{fIng, func(r int) error {
			prefix := fmt.Sprintf("ing%d", r)
			// The bodies are built before the clock starts: the load
			// generator shares the two cores with what it measures.
			bodies := make([][]byte, events/per)
			for i := range bodies {
				bodies[i] = BatchBody(per, func(j int) []byte { return EventJSON("Bench", prefix, j, 0) }, i*per)
			}
			cpu0, _ := ing.CPU()
			res := ClosedLoop(ctx, client, ingestClients, events/per, func(i int) []byte { return bodies[i] })
			cpu1, _ := ing.CPU()
			if res.Failed > 0 {
				return fmt.Errorf("%d of %d requests failed (first: %s)", res.Failed, res.Requests, res.FirstErr)
			}
			sc.Add(fIng, r, float64(events)/res.Elapsed.Seconds())
			sc.Add(fP50, r, Ms(Percentile(res.Latencies, 50)))
			sc.Add(fP99, r, Ms(Percentile(res.Latencies, 99)))
			sc.Add(fCPU, r, float64((cpu1-cpu0).Microseconds())/float64(events))
			if r == 0 {
				if size, err := firstMsgSize(ctx, st.NATS, stream); err == nil {
					sc.Set("an event as ingest stores it: %d bytes of payload plus headers", size)
				}
			}
			return nil
		}},
	}
	for r := range s.Cfg.Runs {
		for _, stp := range rotate(steps, r) {
			if err := stp.run(r); err != nil {
				return fmt.Errorf("%s, run %d: %w", stp.name, r+1, err)
			}
			if m, _ := st.Msgs(ctx, stream); int(m) != events {
				return fmt.Errorf("%s, run %d: %s holds %d messages, want %d", stp.name, r+1, stream, m, events)
			}
			if err := purge(ctx, st.NATS, stream); err != nil {
				return err
			}
			s.Logf("   run %d %s done", r+1, stp.name)
		}
	}
	return nil
}

func firstMsgSize(ctx context.Context, n *NATS, stream string) (int, error) {
	st, err := n.JS.Stream(ctx, stream)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	m, err := st.GetMsg(ctx, info.State.FirstSeq)
	if err != nil {
		return 0, err
	}
	return streams.MsgSize(&nats.Msg{Data: m.Data, Header: m.Header}), nil
}
