package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/services/internal/status"
	"github.com/shardflow/shardflow/streams"
)

// view prints the endpoints once, then a line per shard every interval.
type view struct {
	cfg      Config
	con      *console
	js       jetstream.JetStream
	topo     streams.Topology
	sink     *sink
	traffic  *traffic
	services map[string]*proc
	start    time.Time
}

// header prints where everything is.
func (v *view) header(natsURL, sinkURL string, tr traces, accts []*demoAccount) {
	c := v.con
	c.step("shardflow is running, Ctrl-C to stop")
	c.printf("    tracking API  http://%s", v.cfg.IngestAddr)
	c.printf("                  curl -u %s: -H 'Content-Type: application/json' -d '{\"userId\":\"u1\",\"event\":\"%s\"}' http://%s/v1/track",
		accts[0].WriteKey, triggerEvent, v.cfg.IngestAddr)
	c.printf("    admin API     http://%s  (Authorization: Bearer %s)", v.cfg.AdminAddr, v.cfg.AdminToken)
	c.printf("    NATS          %s  (nats --server %s stream ls)", natsURL, natsURL)
	c.printf("    webhook sink  %s/hook  (counts: %s/stats)", sinkURL, sinkURL)
	var metrics []string
	for _, name := range serviceNames {
		if p := v.services[name]; p != nil {
			metrics = append(metrics, fmt.Sprintf("%s http://%s/metrics", name, p.healthAddr()))
		}
	}
	c.printf("    metrics       %s", strings.Join(metrics, "\n                  "))
	if tr.ui != "" {
		c.printf("    traces        Jaeger UI %s", tr.ui)
	} else {
		c.printf("    traces        not exported (set OTEL_EXPORTER_OTLP_ENDPOINT or put jaeger on PATH)")
	}
	c.printf("    demo traffic  %d events/s for each of %d accounts; every 10th event is %q, which matches no trigger",
		v.cfg.Rate, len(accts), otherEvent)
	c.printf("    sfctl         %s/bin/sfctl", v.cfg.DataDir)
}

func (v *view) run(ctx context.Context) {
	tick := time.NewTicker(v.cfg.ViewInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			rows := v.rows(ctx)
			if ctx.Err() != nil {
				return // stopped while reading: the numbers are partial
			}
			v.printRows(rows)
		}
	}
}

// shardRow is one line of the view; negative numbers are unknown.
type shardRow struct {
	shard                 int
	accepted, processed   int64
	delivered             int64
	pendingIn, pendingOut int64
	deadLettered          int64
}

func (v *view) rows(ctx context.Context) []shardRow {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	processed, perr := v.processed(ctx)
	rows := make([]shardRow, v.topo.Shards)
	for i := range rows {
		r := shardRow{shard: i, accepted: v.traffic.accepted(i), delivered: v.sink.delivered(i), processed: -1}
		if perr == nil {
			r.processed = int64(processed[i])
		}
		r.pendingIn = v.pending(ctx, streams.KindInbound, i, streams.StageProcessor)
		r.pendingOut = v.pending(ctx, streams.KindOutbound, i, streams.StageSender)
		r.deadLettered = -1
		if st, err := v.js.Stream(ctx, streams.StreamName(streams.KindDeadLetter, i)); err == nil {
			if info, err := st.Info(ctx); err == nil {
				r.deadLettered = int64(info.State.Msgs)
			}
		}
		rows[i] = r
	}
	return rows
}

// print prints one line per shard.
func (v *view) print(ctx context.Context) { v.printRows(v.rows(ctx)) }

func (v *view) printRows(rows []shardRow) {
	v.con.printf("-- %s, up %s --", time.Now().Format("15:04:05"), time.Since(v.start).Round(time.Second))
	for _, r := range rows {
		v.con.printf("shard %d | accepted %7s | processed %7s | delivered %7s | pending in %5s out %5s | dead-lettered %s",
			r.shard, num(r.accepted), num(r.processed), num(r.delivered), num(r.pendingIn), num(r.pendingOut), num(r.deadLettered))
	}
}

func num(n int64) string {
	if n < 0 {
		return "?"
	}
	return strconv.FormatInt(n, 10)
}

// pending is NumPending + NumAckPending of a stage consumer, -1 if unknown.
func (v *view) pending(ctx context.Context, kind streams.Kind, shard int, stage string) int64 {
	c, err := v.js.Consumer(ctx, streams.StreamName(kind, shard), stage)
	if err != nil {
		return -1
	}
	info, err := c.Info(ctx)
	if err != nil {
		return -1
	}
	return int64(info.NumPending) + int64(info.NumAckPending)
}

// processed reads the processor's acked counter per shard from its /metrics.
func (v *view) processed(ctx context.Context) (map[int]float64, error) {
	p := v.services["processor"]
	if p == nil {
		return nil, fmt.Errorf("no processor")
	}
	addr := p.healthAddr()
	if addr == "" {
		return nil, fmt.Errorf("processor health address unknown")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("processor metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("processor metrics: HTTP %d", resp.StatusCode)
	}
	return status.CounterByShard(resp.Body, streams.MetricAcked+"_total", streams.StageProcessor)
}

// totals prints, per demo account, what the demo sent and the sink got.
func (v *view) totals() {
	st := v.sink.snapshot()
	v.con.step("totals since start")
	for _, a := range v.traffic.accts {
		line := fmt.Sprintf("    %-8s shard %d | accepted %d | refused %d | delivered %d",
			a.ID, a.Shard, a.accepted.Load(), a.rejected.Load(), st.ByAccount[a.ID])
		if n := st.Rejected[a.ID]; n > 0 {
			line += fmt.Sprintf(" | bad signatures %d", n)
		}
		v.con.println(line)
	}
}
