package status

import (
	"strings"
	"testing"
)

func TestParseSample(t *testing.T) {
	for _, tc := range []struct {
		line   string
		name   string
		labels map[string]string
		value  float64
		ok     bool
	}{
		{`shardflow_stage_acked_total{shard="1",stage="sender"} 42`, "shardflow_stage_acked_total", map[string]string{"shard": "1", "stage": "sender"}, 42, true},
		{`shardflow_stage_acked_total{shard="1",stage="sender",} 42 1700000000000`, "shardflow_stage_acked_total", map[string]string{"shard": "1", "stage": "sender"}, 42, true},
		{`m{reason="a \"quoted\", odd} reason\\n",shard="0"} 1.5e+06`, "m", map[string]string{"reason": `a "quoted", odd} reason\n`, "shard": "0"}, 1.5e6, true},
		{`m 3`, "m", map[string]string{}, 3, true},
		{`m{shard="1"} NaN`, "m", map[string]string{"shard": "1"}, 0, true},
		{`m{shard="1"`, "", nil, 0, false},
		{`m{shard=1} 2`, "", nil, 0, false},
		{`m{shard="1"}`, "", nil, 0, false},
		{`m{shard="1"} x`, "", nil, 0, false},
	} {
		name, labels, value, ok := parseSample(tc.line)
		if ok != tc.ok {
			t.Errorf("%s: ok %v, want %v", tc.line, ok, tc.ok)
			continue
		}
		if !ok {
			continue
		}
		if name != tc.name || len(labels) != len(tc.labels) || (value != tc.value && tc.value != 0) {
			t.Errorf("%s: %q %v %v", tc.line, name, labels, value)
		}
		for k, v := range tc.labels {
			if labels[k] != v {
				t.Errorf("%s: label %s = %q, want %q", tc.line, k, labels[k], v)
			}
		}
	}
}

func TestSeriesSkipsOtherMetricsAndBadValues(t *testing.T) {
	s := newSeries()
	body := strings.Join([]string{
		`# HELP shardflow_stage_acked_total x`,
		`# TYPE shardflow_stage_acked_total counter`,
		`shardflow_stage_acked_total{shard="0",stage="processor"} 2`,
		`shardflow_stage_acked_total{shard="0",stage="processor"} 3`, // another process: summed
		`shardflow_stage_acked_total{stage="processor"} 100`,         // no shard: ignored
		`shardflow_stage_dropped_total{reason="account_deleted",shard="0",stage="processor"} +Inf`,
		`shardflow_ingest_events_accepted_total{shard="0"} 9`,
		`go_goroutines 12`,
		``,
	}, "\n")
	if err := s.parseMetrics(strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	c := s.counters(0, "processor")
	if c == nil || c.Acked != 5 || len(c.Dropped) != 0 {
		t.Fatalf("counters %+v", c)
	}
	if s.counters(1, "processor") != nil || s.counters(0, "sender") != nil {
		t.Fatal("counters for a shard or stage no series named")
	}
}
