package streams

import (
	"context"
	"strconv"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metric names of the consumer runtime (Prometheus adds _total to counters
// and the unit suffix to histograms). Labels: shard and stage, plus reason
// on dead-lettered and dropped; never the account (cardinality).
const (
	MetricAcked        = "shardflow_stage_acked"
	MetricRetried      = "shardflow_stage_retried"
	MetricRedelivered  = "shardflow_stage_redeliveries"
	MetricDeadLettered = "shardflow_stage_dead_lettered"
	MetricDropped      = "shardflow_stage_dropped"
	MetricParked       = "shardflow_stage_parked"
	MetricDeferred     = "shardflow_stage_deferred"
	MetricDuration     = "shardflow_stage_handler_duration"
	MetricInFlight     = "shardflow_stage_in_flight"
	MetricPending      = "shardflow_stage_pending"
	MetricAckPending   = "shardflow_stage_ack_pending"
	MetricHeld         = "shardflow_stage_held"
	MetricBraked       = "shardflow_stage_braked"
)

type stageMetrics struct {
	base                                                                 []attribute.KeyValue
	attrs                                                                metric.MeasurementOption
	acked, retried, redelivered, deadLettered, dropped, parked, deferred metric.Int64Counter
	duration                                                             metric.Float64Histogram
}

func newStageMetrics(mp metric.MeterProvider, c *Consumer) (*stageMetrics, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(instrumentationName)
	base := []attribute.KeyValue{attribute.String("shard", strconv.Itoa(c.cfg.Shard)), attribute.String("stage", c.spec.Name)}
	s := &stageMetrics{base: base, attrs: metric.WithAttributeSet(attribute.NewSet(base...))}
	var err error
	counter := func(name, desc string) metric.Int64Counter {
		if err != nil {
			return nil
		}
		var ctr metric.Int64Counter
		ctr, err = meter.Int64Counter(name, metric.WithDescription(desc))
		return ctr
	}
	s.acked = counter(MetricAcked, "Messages handled and acknowledged.")
	s.retried = counter(MetricRetried, "Messages nak'ed with a delay for a transient failure.")
	s.redelivered = counter(MetricRedelivered, "Deliveries that were not the first of their message.")
	s.deadLettered = counter(MetricDeadLettered, "Messages dead-lettered, by reason (error class).")
	s.dropped = counter(MetricDropped, "Messages terminated without processing, by reason.")
	s.parked = counter(MetricParked, "Messages of suspended accounts parked until restore.")
	s.deferred = counter(MetricDeferred, "Messages set aside for later without using an attempt, by reason.")
	if err != nil {
		return nil, err
	}
	s.duration, err = meter.Float64Histogram(MetricDuration, metric.WithUnit("s"), metric.WithDescription("Handler latency."),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	if err != nil {
		return nil, err
	}
	inFlight, err := meter.Int64ObservableGauge(MetricInFlight, metric.WithDescription("Messages held by the runtime now."))
	if err != nil {
		return nil, err
	}
	held, err := meter.Int64ObservableGauge(MetricHeld, metric.WithDescription("Messages held because a dependency is unavailable."))
	if err != nil {
		return nil, err
	}
	pending, err := meter.Int64ObservableGauge(MetricPending, metric.WithDescription("Messages in the stream not yet delivered to the stage."))
	if err != nil {
		return nil, err
	}
	ackPending, err := meter.Int64ObservableGauge(MetricAckPending, metric.WithDescription("Messages delivered and not yet acknowledged."))
	if err != nil {
		return nil, err
	}
	braked, err := meter.Int64ObservableGauge(MetricBraked, metric.WithDescription("1 while the consumer is slowed by its brake (nearly every recent message dead-lettered), else 0."))
	if err != nil {
		return nil, err
	}
	_, err = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		o.ObserveInt64(inFlight, c.inFlight.Load(), s.attrs)
		var b int64
		if c.brake.braked() {
			b = 1
		}
		o.ObserveInt64(braked, b, s.attrs)
		o.ObserveInt64(held, c.held.Load(), s.attrs)
		ictx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if info, err := c.cons.Info(ictx); err == nil {
			o.ObserveInt64(pending, int64(info.NumPending), s.attrs)
			o.ObserveInt64(ackPending, int64(info.NumAckPending), s.attrs)
		}
		return nil
	}, inFlight, held, pending, ackPending, braked)
	return s, err
}
