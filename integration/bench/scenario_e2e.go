package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/streams"
)

// rawStream is a stream on the stack's server with the inbound streams'
// settings and no consumer: the raw publish baseline writes there, so the
// pipeline does not see it.
const rawStream = "BENCH_RAW"

func createRawStream(ctx context.Context, n *NATS) error {
	cfg := n.Topo.StreamConfig(streams.KindInbound, 0)
	cfg.Name, cfg.Subjects, cfg.Description = rawStream, []string{"benchraw.>"}, "bench: raw publish baseline"
	_, err := n.JS.CreateOrUpdateStream(ctx, cfg)
	return err
}

// rawPublishBaseline publishes count ~1 KiB events to BENCH_RAW (async,
// window 1000, Nats-Msg-Id) and purges it; it returns events/s.
func rawPublishBaseline(ctx context.Context, n *NATS, count int, prefix string) (float64, error) {
	if err := createRawStream(ctx, n); err != nil {
		return 0, err
	}
	rate, err := asyncPublish(ctx, n, count, func(i int) *nats.Msg {
		m := nats.NewMsg("benchraw.track")
		m.Data = EventJSON("Bench", prefix, i, 0)
		m.Header.Set(jetstream.MsgIDHeader, prefix+"-"+itoa(i))
		return m
	})
	if err != nil {
		return 0, err
	}
	return rate, purge(ctx, n, rawStream)
}

// E2EResult is one end-to-end measurement.
type E2EResult struct {
	Raw        float64 // raw async publish on the same server, events/s
	Sustained  float64 // deliveries/s with the pipeline saturated
	Offered    float64 // the open-loop rate of the latency phase (Sustained/2)
	P50, P99   float64 // request → webhook, ms, at Offered
	Samples    int
	ProcCPU    float64 // processor CPU per delivered event, µs
	SenderCPU  float64 // sender CPU per delivered event, µs
	IngestCPU  float64
	BacklogMin int64 // smallest INBOUND+OUTBOUND backlog seen in the window
}

// e2eSizes are the phases' sizes.
type e2eSizes struct {
	raw                    int
	warmup, window, latFor time.Duration
	outstanding            int // events sent and not yet delivered, at most
}

func (s *Suite) e2eSizes() e2eSizes {
	if s.Cfg.Quick {
		return e2eSizes{raw: 1000, warmup: 500 * time.Millisecond, window: 1500 * time.Millisecond, latFor: 1500 * time.Millisecond, outstanding: 1000}
	}
	return e2eSizes{raw: 50_000, warmup: 3 * time.Second, window: 10 * time.Second, latFor: 10 * time.Second, outstanding: 3000}
}

// pipeline is a running stack with the four pipeline services, one account
// whose "Bench" events trigger a webhook to the sink.
type pipeline struct {
	st     *Stack
	sink   *Sink
	procs  map[string]*Proc
	acct   Account
	client *Client
}

func startPipeline(ctx context.Context, opts StackOptions, services ...string) (*pipeline, error) {
	if len(services) == 0 {
		services = []string{"accounts", "ingest", "processor", "sender"}
	}
	st, err := NewStack(ctx, opts)
	if err != nil {
		return nil, err
	}
	p := &pipeline{st: st, procs: map[string]*Proc{}}
	p.sink, err = NewSink()
	if err != nil {
		p.Close()
		return nil, err
	}
	for _, name := range services {
		pr, err := st.Start(ctx, name)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.procs[name] = pr
	}
	return p, nil
}

func (p *pipeline) addAccount(ctx context.Context, id string, trigger bool) (Account, error) {
	a, err := p.st.CreateAccount(ctx, id)
	if err != nil {
		return a, err
	}
	if trigger {
		url, err := p.sink.NewURL()
		if err != nil {
			return a, err
		}
		if err := p.st.SetTrigger(ctx, id, "Bench", url); err != nil {
			return a, err
		}
	}
	return a, p.st.WaitDirectory(ctx, id)
}

func (p *pipeline) Close() {
	if p.client != nil {
		p.client.Close()
	}
	if p.st != nil {
		p.st.Close()
	}
	if p.sink != nil {
		p.sink.Close()
	}
}

// backlog is the number of messages waiting in the shard's stage streams.
func (p *pipeline) backlog(ctx context.Context, shard int) int64 {
	in, _ := p.st.Msgs(ctx, streams.StreamName(streams.KindInbound, shard))
	out, _ := p.st.Msgs(ctx, streams.StreamName(streams.KindOutbound, shard))
	return int64(in + out)
}

// saturate sends batches of 100 from workers clients, keeping at most
// outstanding events sent and not yet delivered, until ctx ends. It
// returns how many events were accepted.
func saturate(ctx context.Context, c *Client, sink *Sink, account, prefix string, workers, outstanding int) (int64, error) {
	const per = 100
	var sent, next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if sent.Load()-int64(sink.Count(account)) >= int64(outstanding) {
					time.Sleep(2 * time.Millisecond)
					continue
				}
				b := int(next.Add(1) - 1)
				now := time.Now().UnixNano()
				body := BatchBody(per, func(j int) []byte { return EventJSON("Bench", prefix, j, now) }, b*per)
				code, err := c.Post(context.WithoutCancel(ctx), "/v1/batch", body)
				if err != nil || code != 200 {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("ingest: HTTP %d %v", code, err)
					}
					mu.Unlock()
					time.Sleep(20 * time.Millisecond)
					continue
				}
				sent.Add(per)
			}
		}()
	}
	wg.Wait()
	return sent.Load(), firstErr
}

// measureE2E runs the three phases on a fresh pipeline: the raw publish
// baseline, the sustained rate (saturated, closed loop with a bounded
// number of events in flight), and the latency at half that rate (open
// loop). during, when set, runs alongside the saturated window.
func (s *Suite) measureE2E(ctx context.Context, opts StackOptions, run int, during func(ctx context.Context, p *pipeline, window time.Duration)) (E2EResult, error) {
	return s.measureE2EWith(ctx, opts, run, nil, during)
}

// measureE2EWith is measureE2E where each service named in pprofFiles gets
// SHARDFLOW_BENCH_PPROF_FILE set to its file (the profile scenario).
func (s *Suite) measureE2EWith(ctx context.Context, opts StackOptions, run int, pprofFiles map[string]string, during func(ctx context.Context, p *pipeline, window time.Duration)) (E2EResult, error) {
	var res E2EResult
	if len(pprofFiles) > 0 {
		opts.ProcEnv = map[string][]string{}
		for name, f := range pprofFiles {
			opts.ProcEnv[name] = []string{"SHARDFLOW_BENCH_PPROF_FILE=" + f}
		}
	}
	sz := s.e2eSizes()
	p, err := startPipeline(ctx, opts)
	if err != nil {
		return res, err
	}
	defer p.Close()
	p.acct, err = p.addAccount(ctx, fmt.Sprintf("e2e-%d", run), true)
	if err != nil {
		return res, err
	}
	a := p.acct
	p.client = NewClient(p.st.IngestURL(), a.WriteKey, 16)

	// 1. Raw JetStream publish on the same server.
	if res.Raw, err = rawPublishBaseline(ctx, p.st.NATS, sz.raw, fmt.Sprintf("raw%d", run)); err != nil {
		return res, fmt.Errorf("raw baseline: %w", err)
	}

	// 2. Sustained rate.
	sctx, stop := context.WithCancel(ctx)
	sentc := make(chan int64, 1)
	errc := make(chan error, 1)
	go func() {
		n, err := saturate(sctx, p.client, p.sink, a.ID, "sat", 4, sz.outstanding)
		sentc <- n
		errc <- err
	}()
	if err := p.sink.WaitCount(ctx, a.ID, 1); err != nil {
		stop()
		return res, err
	}
	time.Sleep(sz.warmup)
	cpu := func() (pr, se, in time.Duration) {
		pr, _ = p.procs["processor"].CPU()
		se, _ = p.procs["sender"].CPU()
		in, _ = p.procs["ingest"].CPU()
		return
	}
	var wg sync.WaitGroup
	if during != nil {
		wg.Add(1)
		go func() { defer wg.Done(); during(ctx, p, sz.window) }()
	}
	c0, t0 := p.sink.Count(a.ID), time.Now()
	pr0, se0, in0 := cpu()
	res.BacklogMin = 1 << 62
	for time.Since(t0) < sz.window {
		time.Sleep(sz.window / 10)
		res.BacklogMin = min(res.BacklogMin, p.backlog(ctx, a.Shard))
	}
	c1, el := p.sink.Count(a.ID), time.Since(t0)
	pr1, se1, in1 := cpu()
	stop()
	wg.Wait()
	sent, serr := <-sentc, <-errc
	if serr != nil {
		return res, serr
	}
	delivered := float64(c1 - c0)
	res.Sustained = delivered / el.Seconds()
	res.ProcCPU = float64((pr1 - pr0).Microseconds()) / delivered
	res.SenderCPU = float64((se1 - se0).Microseconds()) / delivered
	res.IngestCPU = float64((in1 - in0).Microseconds()) / delivered
	dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = p.sink.WaitCount(dctx, a.ID, int(sent))
	cancel()
	if err != nil {
		return res, fmt.Errorf("after the saturated phase: %w", err)
	}

	// 3. Latency at half the sustained rate, open loop, 10 events a request.
	res.Offered = res.Sustained / 2
	const per = 10
	interval := time.Duration(float64(time.Second) * per / res.Offered)
	latStart := time.Now()
	lr := OpenLoop(ctx, p.client, interval, sz.latFor, 256, func(i int) []byte {
		now := time.Now().UnixNano()
		return BatchBody(per, func(j int) []byte { return EventJSON("Bench", "lat", j, now) }, i*per)
	})
	if lr.Failed > 0 {
		return res, fmt.Errorf("latency phase: %d of %d requests failed (first: %s)", lr.Failed, lr.Requests, lr.FirstErr)
	}
	dctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
	err = p.sink.WaitCount(dctx, a.ID, int(sent)+lr.Requests*per)
	cancel()
	if err != nil {
		return res, fmt.Errorf("latency phase: %w", err)
	}
	var lats []time.Duration
	for _, smp := range p.sink.Samples(a.ID) {
		if !smp.Sent.Before(latStart) {
			lats = append(lats, smp.Latency())
		}
	}
	res.Samples = len(lats)
	res.P50, res.P99 = Ms(Percentile(lats, 50)), Ms(Percentile(lats, 99))
	return res, nil
}

const (
	fE2ERaw   = "raw async publish, same server (JetStream floor)"
	fE2ESust  = "sustained end to end"
	fE2EP50   = "latency request → webhook p50 at 50% of sustained"
	fE2EP99   = "latency request → webhook p99 at 50% of sustained"
	fE2EProc  = "processor CPU per event"
	fE2ESend  = "sender CPU per event"
	fE2EIngst = "ingest CPU per event"
)

func declareE2E(sc *Scenario, suffix string, target *Target) {
	sc.Declare(fE2ERaw+suffix, "events/s", "", nil)
	sc.Declare(fE2ESust+suffix, "events/s", fE2ERaw+suffix, target)
	sc.Declare(fE2EP50+suffix, "ms", "", nil)
	sc.Declare(fE2EP99+suffix, "ms", "", nil)
	sc.Declare(fE2EProc+suffix, "µs", "", nil)
	sc.Declare(fE2ESend+suffix, "µs", "", nil)
	sc.Declare(fE2EIngst+suffix, "µs", "", nil)
}

func addE2E(sc *Scenario, suffix string, r int, res E2EResult) {
	sc.Add(fE2ERaw+suffix, r, res.Raw)
	sc.Add(fE2ESust+suffix, r, res.Sustained)
	sc.Add(fE2EP50+suffix, r, res.P50)
	sc.Add(fE2EP99+suffix, r, res.P99)
	sc.Add(fE2EProc+suffix, r, res.ProcCPU)
	sc.Add(fE2ESend+suffix, r, res.SenderCPU)
	sc.Add(fE2EIngst+suffix, r, res.IngestCPU)
}

func (s *Suite) e2eSettings(sc *Scenario) {
	sz := s.e2eSizes()
	sc.Set("a fresh stack per run: accounts, ingest, processor and sender as processes (defaults: processor Concurrency 32 and MaxInFlight 256 with the Forward outcome, sender Concurrency 64 and MaxInFlight 1000, per shard), one account whose track event \"Bench\" triggers a webhook to a sink in the bench process; events of about 1 KiB")
	sc.Set("raw baseline: %d events async-published (window 1000, Nats-Msg-Id) to a stream with the inbound streams' settings on the same server, no consumer — the same method as scenario 2's raw figure, in the same run", sz.raw)
	sc.Set("sustained: 4 HTTP clients send /v1/batch of 100 events while fewer than %d events are in flight (sent, not yet delivered) — closed loop, so the pipeline stays saturated without an unbounded backlog; deliveries/s counted at the sink over %v after %v of warm-up", sz.outstanding, sz.window, sz.warmup)
	sc.Set("latency: open loop at half the sustained rate, /v1/batch of 10 events, for %v; request sent → webhook received, every event of the phase (all delivered before the figure is taken)", sz.latFor)
	sc.Set("CPU per event: user+system time of each process (/proc/<pid>/stat) over the saturated window, divided by the events delivered in it")
}

func runE2E(ctx context.Context, s *Suite, sc *Scenario) error {
	declareE2E(sc, "", nil)
	s.e2eSettings(sc)
	for r := range s.Cfg.Runs {
		res, err := s.measureE2E(ctx, StackOptions{}, r, nil)
		if err != nil {
			return fmt.Errorf("run %d: %w", r+1, err)
		}
		addE2E(sc, "", r, res)
		s.Logf("   run %d: raw %s/s, sustained %s/s, p50 %.1f ms, p99 %.1f ms at %s/s (%d samples), backlog ≥ %d", r+1, fmtNum(res.Raw), fmtNum(res.Sustained), res.P50, res.P99, fmtNum(res.Offered), res.Samples, res.BacklogMin)
	}
	return nil
}
