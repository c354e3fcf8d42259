package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/shardflow/shardflow/streams"
)

func runStage(ctx context.Context, s *Suite, sc *Scenario) error {
	count := s.size(200_000, 3000)
	variants := StageVariants()
	const raw = "raw nats.go"
	for _, v := range variants {
		var t *Target
		switch v.Name {
		case "streams, Forward outcome":
			t = RatioAtLeast(0.70)
		}
		base := raw
		if v.Name == raw {
			base = ""
		}
		sc.Declare(v.Name, "msgs/s", base, t)
	}
	sc.Set("%d messages of 1 KiB per variant and run, seeded on INBOUND_0 (each with a Nats-Msg-Id) before the stage starts; a fresh server per variant and run; variants in rotating order", count)
	sc.Set("time: from the stage's start until INBOUND_0 is empty (work-queue: a message leaves once acked); every variant ran in this process, on its own connection")
	sc.Set("raw nats.go: jetstream Consume() on the provisioned durable (MaxAckPending 1000), PublishMsgAsync with a window of 1000, ack once the publish ack arrived; '+ Nats-Msg-Id' sets an id on the output as streams must")
	sc.Set("streams, defaults: NewConsumer with Concurrency 64 (default), MaxInFlight = MaxAckPending 1000; tuned: Concurrency %d, MaxInFlight 1000; the handler calls Publisher.Publish (waits for the ack, sets Nats-Msg-Id) and returns Ack; Forward outcome (the runtime's API for a stage that turns a message into others, and the target's figure): defaults, the handler returns streams.Forward(out) and the runtime publishes asynchronously and acks on the publish ack; no account gate, global (no-op) OTel providers", StreamsTunedConcurrency)
	sc.Set("Watermill v1.5.1 + watermill-nats v2.1.3 pkg/nats (JetStream push, durable queue subscription, ManualAck, MaxAckPending 1000), router with PoisonQueue + Retry + Recoverer; defaults: SubscribersCount 1, AckAsync false (AckSync); best found: SubscribersCount %d, AckAsync true", WatermillBestSubscribers)
	topo := streams.Topology{Shards: 1}.WithDefaults()
	for r := range s.Cfg.Runs {
		for _, v := range rotate(variants, r) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			rate, err := stageOnce(ctx, topo, v, count)
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", v.Name, r+1, err)
			}
			sc.Add(v.Name, r, rate)
			s.Logf("   run %d %-28s %s msgs/s", r+1, v.Name, fmtNum(rate))
		}
	}
	return nil
}

func stageOnce(ctx context.Context, topo streams.Topology, v StageVariant, count int) (float64, error) {
	n, err := StartNATS(ctx, topo, false)
	if err != nil {
		return 0, err
	}
	defer n.Close()
	if _, err := SeedStage(ctx, n, count); err != nil {
		return 0, fmt.Errorf("seed: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	el, err := v.Run(rctx, n, count)
	if err != nil {
		return 0, err
	}
	out, err := n.Msgs(ctx, stageOut)
	if err != nil {
		return 0, err
	}
	if int(out) < count {
		return 0, fmt.Errorf("OUTBOUND_0 holds %d of %d messages", out, count)
	}
	return float64(count) / el.Seconds(), nil
}
