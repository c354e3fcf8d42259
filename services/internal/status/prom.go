package status

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/shardflow/shardflow/streams"
)

// stageMetricPrefix starts every series of the consumer runtime.
const stageMetricPrefix = "shardflow_stage_"

// seriesKey identifies a runtime series: its name (as exposed, e.g.
// shardflow_stage_dropped_total) and labels.
type seriesKey struct {
	name, shard, stage, reason string
}

// stageKey is one shard and stage.
type stageKey struct{ shard, stage string }

// series holds the runtime series of the scraped endpoints, summed.
type series struct {
	values map[seriesKey]float64
	// seen holds every shard and stage any runtime series (a gauge
	// included) was exposed for: a stage present with no counter yet has
	// counted nothing; a stage absent was not scraped.
	seen map[stageKey]bool
}

func newSeries() *series {
	return &series{values: map[seriesKey]float64{}, seen: map[stageKey]bool{}}
}

// parseMetrics adds the shardflow_stage_* samples of a Prometheus text
// exposition to s (summing equal series). Other lines are skipped.
func (s *series) parseMetrics(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, stageMetricPrefix) {
			continue
		}
		name, labels, value, ok := parseSample(line)
		if !ok {
			continue
		}
		sk := stageKey{labels["shard"], labels["stage"]}
		if sk.shard == "" || sk.stage == "" {
			continue
		}
		s.seen[sk] = true
		if math.IsNaN(value) || math.IsInf(value, 0) {
			continue
		}
		s.values[seriesKey{name, sk.shard, sk.stage, labels["reason"]}] += value
	}
	return sc.Err()
}

// parseSample parses `name{a="x",b="y"} value [timestamp]` (or
// `name value`).
func parseSample(line string) (name string, labels map[string]string, value float64, ok bool) {
	labels = map[string]string{}
	rest := line
	if i := strings.IndexAny(line, "{ "); i < 0 {
		return "", nil, 0, false
	} else if line[i] == '{' {
		name = line[:i]
		end, l, good := parseLabels(line[i+1:])
		if !good {
			return "", nil, 0, false
		}
		labels = l
		rest = line[i+1+end:]
	} else {
		name, rest = line[:i], line[i:]
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", nil, 0, false
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return "", nil, 0, false
	}
	return name, labels, v, true
}

// parseLabels parses `a="x",b="y"}` and returns the index just past the
// closing brace. Values may hold \\, \" and \n escapes.
func parseLabels(s string) (end int, labels map[string]string, ok bool) {
	labels = map[string]string{}
	i := 0
	for {
		for i < len(s) && (s[i] == ',' || s[i] == ' ') {
			i++
		}
		if i >= len(s) {
			return 0, nil, false
		}
		if s[i] == '}' {
			return i + 1, labels, true
		}
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 {
			return 0, nil, false
		}
		key := strings.TrimSpace(s[i : i+eq])
		i += eq + 1
		if i >= len(s) || s[i] != '"' {
			return 0, nil, false
		}
		i++
		var val strings.Builder
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(s[i])
				}
				continue
			}
			val.WriteByte(s[i])
		}
		if i >= len(s) {
			return 0, nil, false
		}
		i++ // closing quote
		labels[key] = val.String()
	}
}

// scrapeAll scrapes every endpoint; it returns the summed series, the
// endpoints that answered, and a warning per endpoint that did not.
func (c *Collector) scrapeAll(ctx context.Context) (*series, []string, []string) {
	all := newSeries()
	var ok, warnings []string
	for _, u := range c.metrics {
		if err := c.scrape(ctx, u, all); err != nil {
			warnings = append(warnings, fmt.Sprintf("metrics %s: %v", u, err))
			continue
		}
		ok = append(ok, u)
	}
	return all, ok, warnings
}

func (c *Collector) scrape(ctx context.Context, url string, into *series) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	// Parse into a scratch set first, so a body cut short adds nothing.
	one := newSeries()
	if err := one.parseMetrics(io.LimitReader(resp.Body, 64<<20)); err != nil {
		return err
	}
	for k, v := range one.values {
		into.values[k] += v
	}
	for k := range one.seen {
		into.seen[k] = true
	}
	return nil
}

// Counter names as exposed (the exporter adds _total to counters).
var (
	promAcked        = streams.MetricAcked + "_total"
	promRetried      = streams.MetricRetried + "_total"
	promRedelivered  = streams.MetricRedelivered + "_total"
	promDeadLettered = streams.MetricDeadLettered + "_total"
	promDropped      = streams.MetricDropped + "_total"
	promDeferred     = streams.MetricDeferred + "_total"
	promParked       = streams.MetricParked + "_total"
)

// counters returns the counters of one shard and stage, nil if no series
// of it was scraped.
func (s *series) counters(shard int, stage string) *StageCounters {
	sk := stageKey{strconv.Itoa(shard), stage}
	if !s.seen[sk] {
		return nil
	}
	c := &StageCounters{DeadLettered: map[string]uint64{}, Dropped: map[string]uint64{}, Deferred: map[string]uint64{}}
	for k, v := range s.values {
		if k.shard != sk.shard || k.stage != sk.stage {
			continue
		}
		n := uint64(math.Round(max(v, 0)))
		switch k.name {
		case promAcked:
			c.Acked += n
		case promRetried:
			c.Retried += n
		case promRedelivered:
			c.Redeliveries += n
		case promParked:
			c.Parked += n
		case promDeadLettered:
			c.DeadLettered[k.reason] += n
		case promDropped:
			c.Dropped[k.reason] += n
		case promDeferred:
			c.Deferred[k.reason] += n
		}
	}
	return c
}

// applyCounters fills each consumer's counters and each shard's sums from
// the scraped series.
func applyCounters(snap *Snapshot, s *series) {
	for i := range snap.Shards {
		sh := &snap.Shards[i]
		for j := range sh.Consumers {
			c := &sh.Consumers[j]
			c.Counters = s.counters(sh.Shard, c.Name)
			if c.Counters == nil {
				continue
			}
			if sh.Dropped == nil {
				sh.DeadLettered, sh.Dropped, sh.Redeliveries = map[string]uint64{}, map[string]uint64{}, new(uint64)
			}
			for r, n := range c.Counters.DeadLettered {
				sh.DeadLettered[r] += n
			}
			for r, n := range c.Counters.Dropped {
				sh.Dropped[r] += n
			}
			*sh.Redeliveries += c.Counters.Redeliveries
		}
	}
}

// CounterByShard sums one metric's samples for a stage by their shard
// label, from a Prometheus text exposition (the local stack's view reads
// the processor's acked counter this way).
func CounterByShard(r io.Reader, metric, stage string) (map[int]float64, error) {
	out := map[int]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		name, labels, value, ok := parseSample(sc.Text())
		if !ok || name != metric || labels["stage"] != stage {
			continue
		}
		shard, err := strconv.Atoi(labels["shard"])
		if err != nil || math.IsNaN(value) || math.IsInf(value, 0) {
			continue
		}
		out[shard] += value
	}
	return out, sc.Err()
}
