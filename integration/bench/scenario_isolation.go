package bench

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/shardflow/shardflow/streams"
)

// throughput sends n events (batches of 100, 4 clients, closed loop) for
// account and returns deliveries/s from the first request to the last
// delivery. prefix must be new to the account (ids are deduplicated).
func throughput(ctx context.Context, p *pipeline, c *Client, account, prefix string, n int) (float64, error) {
	base := p.sink.Count(account)
	t0 := time.Now()
	res := ClosedLoop(ctx, c, 4, n/100, func(i int) []byte {
		now := time.Now().UnixNano()
		return BatchBody(100, func(j int) []byte { return EventJSON("Bench", prefix, j, now) }, i*100)
	})
	if res.Failed > 0 {
		return 0, fmt.Errorf("%d of %d requests failed (first: %s)", res.Failed, res.Requests, res.FirstErr)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := p.sink.WaitCount(wctx, account, base+n); err != nil {
		return 0, err
	}
	_, last := p.sink.Window(account)
	return float64(n) / last.Sub(t0).Seconds(), nil
}

// steady offers account rate events/s for d (open loop, batches of 10)
// and returns the delivered rate — the events sent over the time from the
// first request to the last webhook — and the p99 request → webhook
// latency. prefix must be new to the account.
func steady(ctx context.Context, p *pipeline, c *Client, account, prefix string, rate float64, d time.Duration) (float64, time.Duration, error) {
	base := p.sink.Count(account)
	t0 := time.Now()
	res := OpenLoop(ctx, c, time.Duration(float64(10*time.Second)/rate), d, 256, func(i int) []byte {
		now := time.Now().UnixNano()
		return BatchBody(10, func(j int) []byte { return EventJSON("Bench", prefix, j, now) }, i*10)
	})
	if res.Failed > res.Skipped {
		return 0, 0, fmt.Errorf("%d of %d requests failed (first: %s)", res.Failed-res.Skipped, res.Requests, res.FirstErr)
	}
	// Requests not sent because 256 were already waiting are offered load
	// the shard did not take: they count against its rate.
	n := (res.Requests - res.Skipped) * 10
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := p.sink.WaitCount(wctx, account, base+n); err != nil {
		return 0, 0, err
	}
	_, last := p.sink.Window(account)
	lat := latencies(p.sink.Samples(account), t0, last)
	return float64(n) / max(last.Sub(t0), res.Elapsed).Seconds(), Percentile(lat, 99), nil
}

func runIsolation(ctx context.Context, s *Suite, sc *Scenario) error {
	n, flood, hung := s.size(10_000, 500), s.size(30_000, 1000), s.size(2000, 200)
	steadyFor := s.sizeD(10*time.Second, 2*time.Second)
	const (
		fSolo  = "healthy shard alone"
		fFlood = "healthy shard while the other shard is flooded with poison"
		fHSolo = "healthy shard alone, offered half its saturated rate"
		fHFl   = "healthy shard flooded, offered half its saturated rate"
		fHSP99 = "healthy shard alone at half rate, p99 request → webhook"
		fHFP99 = "healthy shard flooded at half rate, p99 request → webhook"
		fASolo = "account alone"
		fAHang = "account while another account's receiver hangs (same shard)"
	)
	sc.Declare(fSolo, "events/s", "", nil)
	sc.Declare(fFlood, "events/s", fSolo, RatioAtLeast(0.90))
	sc.Declare("machine CPU busy, healthy shard saturated and the other flooded", "%", "", nil)
	for _, name := range []string{"ingest", "processor", "sender", "deadletter"} {
		sc.Declare("CPU of "+name+", healthy shard saturated and the other flooded", "% of machine", "", nil)
	}
	for _, tag := range []string{"saturated", "half rate"} {
		sc.Declare("poison events ingest accepted, "+tag, "events", "", nil)
		sc.Declare("poison requests refused (429, account braked), "+tag, "requests", "", nil)
	}
	sc.Declare(fHSolo, "events/s", "", nil)
	sc.Declare(fHFl, "events/s", fHSolo, RatioAtLeast(0.90))
	sc.Declare(fHSP99, "ms", "", nil)
	sc.Declare(fHFP99, "ms", fHSP99, nil)
	sc.Declare(fASolo, "events/s", "", nil)
	sc.Declare(fAHang, "events/s", fASolo, RatioAtLeast(0.80))
	sc.Set("a fresh stack per run: accounts, ingest, processor, sender, deadletter as processes, SHARDFLOW_WEBHOOK_TIMEOUT=1s for the sender (other settings default: breaker after 5 failures, 5 s cool-down); one processor and one sender process serve both shards, as in the default deployment")
	sc.Set("throughput: %d track events (batches of 100, 4 clients, closed loop) from the first request to the last webhook", n)
	sc.Set("shard isolation: %d poison events (identify, traits holding \\u0000: jsonb refuses them, the processor dead-letters each at once, the deadletter service indexes them) offered to shard 0 from 2 clients, starting just before and running alongside the healthy account's events on shard 1", flood)
	sc.Set("the stages run as shipped, with the brake (SHARDFLOW_BRAKE_ABOVE 0.9, SHARDFLOW_BRAKE_RATE 200): a shard's consumer whose recent messages nearly all end dead-lettered fetches at most 200 a second, and announces the account whose messages they are; ingest paces that account at 200 events/s (SHARDFLOW_INGEST_HONOR_BRAKES, on), answering the rest 429 with Retry-After before parsing them. The flood's client behaves as an analytics SDK does: on 429 it waits for Retry-After and sends the same batch again, until the measurement ends. After each measurement the poison still waiting is purged instead of waited for")
	sc.Set("saturated: the healthy account sends as fast as the pipeline takes it, so on these 2 cores, shared by both shards' work, nats-server, Postgres and the load generator, the flood's CPU comes straight out of its rate; this is the CPU the machine has, not a shard waiting on another's work. Half rate (the target): the healthy account offers half the rate it reached alone in the same run, for %v (open loop, /v1/batch of 10), alone and then with a fresh poison flood of the same size on shard 0; the figure is the rate it got through (events sent / first request → last webhook): whether a shard keeps up with its traffic while another shard's work all fails", steadyFor)
	sc.Set("account isolation: %d events of an account whose webhook receiver hangs (the sink holds the request until the sender's 1 s timeout) are sent first, then the measured account's events on the same shard", hung)
	for r := range s.Cfg.Runs {
		if err := isolationOnce(ctx, s, sc, r, n, flood, hung, steadyFor); err != nil {
			return fmt.Errorf("run %d: %w", r+1, err)
		}
	}
	return nil
}

func isolationOnce(ctx context.Context, s *Suite, sc *Scenario, r, n, flood, hung int, steadyFor time.Duration) error {
	p, err := startPipeline(ctx, StackOptions{Env: []string{"SHARDFLOW_WEBHOOK_TIMEOUT=1s"}}, "accounts", "ingest", "processor", "sender", "deadletter")
	if err != nil {
		return err
	}
	defer p.Close()
	shards := p.st.Topo.Shards
	bad, err := p.addAccount(ctx, IDsOnShard(fmt.Sprintf("poison%d", r), 1, 0, shards)[0], false)
	if err != nil {
		return err
	}
	good, err := p.addAccount(ctx, IDsOnShard(fmt.Sprintf("healthy%d", r), 1, 1, shards)[0], true)
	if err != nil {
		return err
	}
	gc := NewClient(p.st.IngestURL(), good.WriteKey, 8)
	defer gc.Close()
	bc := NewClient(p.st.IngestURL(), bad.WriteKey, 4)
	defer bc.Close()

	solo, err := throughput(ctx, p, gc, good.ID, "solo", n)
	if err != nil {
		return fmt.Errorf("healthy alone: %w", err)
	}
	in0 := streams.StreamName(streams.KindInbound, 0)
	// poisoned runs measure during a poison flood on shard 0, started just
	// before it and stopped when it ends; it checks the flood lasted the
	// whole measurement. The flood's client is an SDK: on 429 it waits for
	// Retry-After and sends the same batch again.
	bc.SDK = true
	poisoned := func(tag string, measure func() error) error {
		fctx, stopFlood := context.WithCancel(ctx)
		defer stopFlood()
		floodDone := make(chan LoadResult, 1)
		refusedBefore := bc.Refused.Load()
		go func() {
			floodDone <- ClosedLoop(fctx, bc, 2, flood/100, func(i int) []byte {
				return BatchBody(100, func(j int) []byte { return PoisonJSON("p"+tag, j) }, i*100)
			})
		}()
		time.Sleep(s.sizeD(500*time.Millisecond, 100*time.Millisecond))
		poisonAtStart, _ := p.st.Msgs(ctx, in0)
		err := measure()
		var fr LoadResult
		select {
		case fr = <-floodDone:
			sc.Note("run %d, %s: the poison flood (%d events) was all sent before the healthy account's events were all delivered: it did not last the whole measurement; raise its size", r+1, tag, flood)
		default:
			stopFlood()
			fr = <-floodDone
		}
		if err != nil {
			return err
		}
		if fr.Failed > 0 && !strings.Contains(fr.FirstErr, "context canceled") {
			return fmt.Errorf("poison flood: %d requests failed (first: %s)", fr.Failed, fr.FirstErr)
		}
		accepted, refused := 100*len(fr.Latencies), bc.Refused.Load()-refusedBefore
		sc.Add("poison events ingest accepted, "+tag, r, float64(accepted))
		sc.Add("poison requests refused (429, account braked), "+tag, r, float64(refused))
		s.Logf("   run %d %s: poison accepted %d events, refused %d requests; waiting in INBOUND_0 at the start %d", r+1, tag, accepted, refused, poisonAtStart)
		// The braked shard would take minutes to dead-letter the rest
		// (TestShardIsolation checks it does): clear it for the next part.
		if _, err := streams.PurgeAccount(ctx, p.st.JS, streams.KindInbound, 0, bad.ID); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		if _, err := p.st.WaitMsgs(wctx, in0, 100*time.Millisecond, func(m uint64) bool { return m == 0 }); err != nil {
			return fmt.Errorf("poison flood did not drain: %w", err)
		}
		return nil
	}
	var flooded, busy float64
	procCPU := map[string]time.Duration{}
	var elapsed time.Duration
	if err := poisoned("saturated", func() (err error) {
		for name, pr := range p.procs {
			c, _ := pr.CPU()
			procCPU[name] = -c
		}
		t0 := time.Now()
		busy = busyShare(func() { flooded, err = throughput(ctx, p, gc, good.ID, "flood", n) })
		elapsed = time.Since(t0)
		for name, pr := range p.procs {
			c, _ := pr.CPU()
			procCPU[name] += c
		}
		return err
	}); err != nil {
		return fmt.Errorf("healthy during the flood: %w", err)
	}
	sc.Add("healthy shard alone", r, solo)
	sc.Add("healthy shard while the other shard is flooded with poison", r, flooded)
	sc.Add("machine CPU busy, healthy shard saturated and the other flooded", r, 100*busy)
	for _, name := range []string{"ingest", "processor", "sender", "deadletter"} {
		sc.Add("CPU of "+name+", healthy shard saturated and the other flooded", r, 100*procCPU[name].Seconds()/elapsed.Seconds()/float64(runtime.NumCPU()))
	}
	s.Logf("   run %d: healthy shard %s/s alone, %s/s flooded", r+1, fmtNum(solo), fmtNum(flooded))

	half := solo / 2
	hSolo, pSolo, err := steady(ctx, p, gc, good.ID, "hsolo", half, steadyFor)
	if err != nil {
		return fmt.Errorf("healthy alone at half rate: %w", err)
	}
	var hFlood float64
	var pFlood time.Duration
	if err := poisoned("half rate", func() (err error) {
		hFlood, pFlood, err = steady(ctx, p, gc, good.ID, "hflood", half, steadyFor)
		return err
	}); err != nil {
		return fmt.Errorf("healthy at half rate during the flood: %w", err)
	}
	sc.Add("healthy shard alone, offered half its saturated rate", r, hSolo)
	sc.Add("healthy shard flooded, offered half its saturated rate", r, hFlood)
	sc.Add("healthy shard alone at half rate, p99 request → webhook", r, Ms(pSolo))
	sc.Add("healthy shard flooded at half rate, p99 request → webhook", r, Ms(pFlood))
	s.Logf("   run %d: healthy shard offered %s/s: %s/s alone (p99 %.0f ms), %s/s flooded (p99 %.0f ms)", r+1, fmtNum(half), fmtNum(hSolo), Ms(pSolo), fmtNum(hFlood), Ms(pFlood))

	// Account isolation inside a shard.
	ids := IDsOnShard(fmt.Sprintf("acct%d", r), 2, 1, shards)
	slow, err := p.addAccount(ctx, ids[0], true)
	if err != nil {
		return err
	}
	fast, err := p.addAccount(ctx, ids[1], true)
	if err != nil {
		return err
	}
	p.sink.Hang(slow.ID, true)
	fc := NewClient(p.st.IngestURL(), fast.WriteKey, 8)
	defer fc.Close()
	sc2 := NewClient(p.st.IngestURL(), slow.WriteKey, 4)
	defer sc2.Close()
	alone, err := throughput(ctx, p, fc, fast.ID, "alone", n)
	if err != nil {
		return fmt.Errorf("account alone: %w", err)
	}
	hr := ClosedLoop(ctx, sc2, 2, hung/100, func(i int) []byte {
		return BatchBody(100, func(j int) []byte { return EventJSON("Bench", "hang", j, 0) }, i*100)
	})
	if hr.Failed > 0 {
		return fmt.Errorf("hanging account: %d requests failed (first: %s)", hr.Failed, hr.FirstErr)
	}
	beside, err := throughput(ctx, p, fc, fast.ID, "beside", n)
	if err != nil {
		return fmt.Errorf("account beside a hanging receiver: %w", err)
	}
	sc.Add("account alone", r, alone)
	sc.Add("account while another account's receiver hangs (same shard)", r, beside)
	s.Logf("   run %d: account %s/s alone, %s/s beside a hanging receiver", r+1, fmtNum(alone), fmtNum(beside))
	return nil
}
