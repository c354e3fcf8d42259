package streams

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// SharedKind reports whether several consumers may read a kind's streams:
// true for account events and dead letters (limits retention: history that
// any number of consumers read independently), false for inbound and
// outbound (work-queue retention: each message is work for exactly one
// stage, and the server refuses a second consumer overlapping a subject).
func SharedKind(k Kind) bool { return k == KindAccounts || k == KindDeadLetter }

// ParseConsumerSpec parses a consumer declaration as written in a flag or an
// environment variable:
//
//	name:kind[:max_deliver=N][:backoff=D/D/...][:max_ack_pending=N]
//
// for example "auditsink:accounts" or
// "auditsink:accounts:max_deliver=10:backoff=1s/5s/30s". Fields left out take
// the defaults of Topology.WithDefaults.
func ParseConsumerSpec(s string) (ConsumerSpec, error) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	if len(parts) < 2 {
		return ConsumerSpec{}, fmt.Errorf("streams: consumer declaration %q: want name:kind[:key=value...]", s)
	}
	spec := ConsumerSpec{Name: parts[0], Kind: Kind(parts[1])}
	if err := validateToken("consumer name", spec.Name); err != nil {
		return ConsumerSpec{}, fmt.Errorf("streams: consumer declaration %q: %w", s, err)
	}
	if (Subject{Kind: spec.Kind, Account: "x", Type: "x"}).Validate() != nil {
		return ConsumerSpec{}, fmt.Errorf("streams: consumer declaration %q: unknown kind %q (inbound, outbound, accounts, deadletter)", s, parts[1])
	}
	for _, kv := range parts[2:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return ConsumerSpec{}, fmt.Errorf("streams: consumer declaration %q: %q is not key=value", s, kv)
		}
		var err error
		switch k {
		case "max_deliver":
			spec.MaxDeliver, err = strconv.Atoi(v)
		case "max_ack_pending":
			spec.MaxAckPending, err = strconv.Atoi(v)
		case "backoff":
			for _, d := range strings.Split(v, "/") {
				var dur time.Duration
				if dur, err = time.ParseDuration(d); err != nil {
					break
				}
				spec.BackOff = append(spec.BackOff, dur)
			}
		default:
			err = errors.New("unknown key (max_deliver, backoff, max_ack_pending)")
		}
		if err != nil {
			return ConsumerSpec{}, fmt.Errorf("streams: consumer declaration %q: %s: %w", s, k, err)
		}
	}
	return spec, nil
}

// ProvisionConsumer creates or updates one declared consumer (named name in
// t.Consumers) on every shard's stream of its kind, and touches nothing
// else: the streams must exist already (Provision, `sfctl provision`). A
// service team's binary can call it at start-up to declare its own consumer
// without owning the topology. Applying it twice changes nothing the second
// time.
//
// A consumer of its own on a work-queue kind (inbound, outbound) is refused
// here, with the reason, rather than by the server: see SharedKind.
func ProvisionConsumer(ctx context.Context, js jetstream.JetStream, t Topology, name string, opts *ProvisionOptions) (Report, error) {
	if opts == nil {
		opts = &ProvisionOptions{}
	}
	if err := t.Validate(); err != nil {
		return Report{}, err
	}
	spec, ok := t.Consumer(name)
	if !ok {
		return Report{}, fmt.Errorf("streams: consumer %q is not declared in the topology", name)
	}
	if !SharedKind(spec.Kind) {
		for _, other := range t.Consumers {
			if other.Kind == spec.Kind && other.Name != spec.Name {
				return Report{}, fmt.Errorf("streams: consumer %q cannot read %s streams: they are work queues, read by %q alone (each message is one stage's work; the server refuses a second consumer on a subject); read %s or %s streams instead",
					name, spec.Kind, other.Name, KindAccounts, KindDeadLetter)
			}
		}
	}
	var rep Report
	var errs []error
	for shard := range t.Shards {
		stream := StreamName(spec.Kind, shard)
		if _, err := js.Stream(ctx, stream); err != nil {
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				err = fmt.Errorf("streams: stream %s does not exist: provision the topology first (sfctl provision)", stream)
			}
			errs = append(errs, err)
			continue
		}
		ch, err := provisionConsumer(ctx, js, stream, t.ConsumerConfig(spec, shard), opts.DryRun)
		rep.Changes = append(rep.Changes, ch)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return rep, errors.Join(errs...)
}
