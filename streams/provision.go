package streams

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Action is what provisioning did (or would do) to one stream or consumer.
type Action string

// Provisioning actions.
const (
	ActionCreated   Action = "created"
	ActionUpdated   Action = "updated"
	ActionUnchanged Action = "unchanged"
	ActionDrift     Action = "drift"  // differs, and was not (or cannot be) changed
	ActionFailed    Action = "failed" // missing, and creating it failed (the error says why)
)

// Change reports one stream or consumer.
type Change struct {
	Stream   string
	Consumer string // empty for a stream
	Action   Action
	// Diff lists each differing field as "field: have X, want Y".
	Diff []string
}

func (c Change) String() string {
	name := c.Stream
	if c.Consumer != "" {
		name += "/" + c.Consumer
	}
	if len(c.Diff) == 0 {
		return fmt.Sprintf("%-9s %s", c.Action, name)
	}
	return fmt.Sprintf("%-9s %s (%s)", c.Action, name, strings.Join(c.Diff, "; "))
}

// Report lists what provisioning found and did.
type Report struct{ Changes []Change }

// Count returns how many changes had action a.
func (r Report) Count(a Action) int {
	n := 0
	for _, c := range r.Changes {
		if c.Action == a {
			n++
		}
	}
	return n
}

// Changed reports whether anything was created or updated.
func (r Report) Changed() bool { return r.Count(ActionCreated)+r.Count(ActionUpdated) > 0 }

func (r Report) String() string {
	var b strings.Builder
	for _, c := range r.Changes {
		b.WriteString(c.String())
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "%d created, %d updated, %d unchanged, %d drift",
		r.Count(ActionCreated), r.Count(ActionUpdated), r.Count(ActionUnchanged), r.Count(ActionDrift))
	if n := r.Count(ActionFailed); n > 0 {
		fmt.Fprintf(&b, ", %d failed", n)
	}
	b.WriteByte('\n')
	return b.String()
}

// ProvisionOptions tunes Provision.
type ProvisionOptions struct {
	// DryRun reports drift without changing anything.
	DryRun bool
}

// Provision makes the server match the topology: it creates what is
// missing, updates what differs, and reports each stream and consumer.
// Applying it twice changes nothing the second time. Fields JetStream cannot
// change in place (retention, storage) are reported as drift and returned
// as an error, never silently ignored.
func Provision(ctx context.Context, js jetstream.JetStream, t Topology, opts *ProvisionOptions) (Report, error) {
	if opts == nil {
		opts = &ProvisionOptions{}
	}
	if err := t.Validate(); err != nil {
		return Report{}, err
	}
	var rep Report
	var errs []error
	for shard := 0; shard < t.Shards; shard++ {
		for _, kind := range Kinds {
			want := t.StreamConfig(kind, shard)
			ch, err := provisionStream(ctx, js, want, opts.DryRun)
			rep.Changes = append(rep.Changes, ch)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, spec := range t.Consumers {
				if spec.Kind != kind {
					continue
				}
				ch, err := provisionConsumer(ctx, js, want.Name, t.ConsumerConfig(spec, shard), opts.DryRun)
				rep.Changes = append(rep.Changes, ch)
				if err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if !opts.DryRun {
		if err := ProvisionDirectory(ctx, js, t.Replicas); err != nil {
			errs = append(errs, err)
		}
	}
	return rep, errors.Join(errs...)
}

func provisionStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, dry bool) (Change, error) {
	ch := Change{Stream: want.Name}
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		ch.Action = ActionCreated
		if dry {
			ch.Action, ch.Diff = ActionDrift, []string{"missing"}
			return ch, nil
		}
		if _, err := js.CreateStream(ctx, want); err != nil {
			ch.Action = ActionFailed // not created: a retry must not count it twice
			return ch, fmt.Errorf("streams: create stream %s: %w", want.Name, err)
		}
		return ch, nil
	}
	if err != nil {
		return ch, fmt.Errorf("streams: stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	diff, immutable := streamDiff(have, want)
	ch.Diff = diff
	switch {
	case len(diff) == 0:
		ch.Action = ActionUnchanged
		return ch, nil
	case dry:
		ch.Action = ActionDrift
		return ch, nil
	case len(immutable) > 0:
		ch.Action = ActionDrift
		return ch, fmt.Errorf("streams: stream %s: %s cannot be changed in place; migrate the stream", want.Name, strings.Join(immutable, ", "))
	}
	// Keep server-side fields we do not manage.
	upd := have
	upd.Subjects, upd.Replicas, upd.MaxMsgSize, upd.Duplicates = want.Subjects, want.Replicas, want.MaxMsgSize, want.Duplicates
	upd.MaxAge, upd.Discard, upd.AllowAtomicPublish, upd.Description, upd.Placement = want.MaxAge, want.Discard, want.AllowAtomicPublish, want.Description, want.Placement
	upd.AllowMsgSchedules, upd.AllowRollup = want.AllowMsgSchedules, want.AllowRollup
	if _, err := js.UpdateStream(ctx, upd); err != nil {
		return ch, fmt.Errorf("streams: update stream %s: %w", want.Name, err)
	}
	ch.Action = ActionUpdated
	return ch, nil
}

func streamDiff(have, want jetstream.StreamConfig) (diff, immutable []string) {
	add := func(field string, h, w any, mutable bool) {
		diff = append(diff, fmt.Sprintf("%s: have %v, want %v", field, h, w))
		if !mutable {
			immutable = append(immutable, field)
		}
	}
	if !slices.Equal(have.Subjects, want.Subjects) {
		add("subjects", have.Subjects, want.Subjects, true)
	}
	if have.Retention != want.Retention {
		add("retention", have.Retention, want.Retention, false)
	}
	if have.Storage != want.Storage {
		add("storage", have.Storage, want.Storage, false)
	}
	if have.Replicas != want.Replicas {
		add("replicas", have.Replicas, want.Replicas, true)
	}
	if have.MaxMsgSize != want.MaxMsgSize {
		add("max_msg_size", have.MaxMsgSize, want.MaxMsgSize, true)
	}
	if have.Duplicates != want.Duplicates {
		add("duplicate_window", have.Duplicates, want.Duplicates, true)
	}
	if have.MaxAge != want.MaxAge {
		add("max_age", have.MaxAge, want.MaxAge, true)
	}
	if have.Discard != want.Discard {
		add("discard", have.Discard, want.Discard, true)
	}
	if have.AllowAtomicPublish != want.AllowAtomicPublish {
		add("allow_atomic", have.AllowAtomicPublish, want.AllowAtomicPublish, true)
	}
	if have.AllowMsgSchedules != want.AllowMsgSchedules {
		add("allow_msg_schedules", have.AllowMsgSchedules, want.AllowMsgSchedules, true)
	}
	if have.AllowRollup != want.AllowRollup {
		add("allow_rollup_hdrs", have.AllowRollup, want.AllowRollup, true)
	}
	if have.Description != want.Description {
		add("description", have.Description, want.Description, true)
	}
	if placement(have.Placement) != placement(want.Placement) {
		add("placement", placement(have.Placement), placement(want.Placement), true)
	}
	return diff, immutable
}

func placement(p *jetstream.Placement) string {
	if p == nil {
		return ""
	}
	return p.Cluster + "/" + strings.Join(p.Tags, ",")
}

func provisionConsumer(ctx context.Context, js jetstream.JetStream, stream string, want jetstream.ConsumerConfig, dry bool) (Change, error) {
	ch := Change{Stream: stream, Consumer: want.Durable}
	c, err := js.Consumer(ctx, stream, want.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		ch.Action = ActionCreated
		if dry {
			ch.Action, ch.Diff = ActionDrift, []string{"missing"}
			return ch, nil
		}
		if _, err := js.CreateConsumer(ctx, stream, want); err != nil {
			ch.Action = ActionFailed
			return ch, fmt.Errorf("streams: create consumer %s/%s: %w", stream, want.Durable, err)
		}
		return ch, nil
	}
	if err != nil {
		return ch, fmt.Errorf("streams: consumer %s/%s: %w", stream, want.Durable, err)
	}
	have := c.CachedInfo().Config
	ch.Diff = consumerDiff(have, want)
	switch {
	case len(ch.Diff) == 0:
		ch.Action = ActionUnchanged
		return ch, nil
	case dry:
		ch.Action = ActionDrift
		return ch, nil
	}
	if _, err := js.UpdateConsumer(ctx, stream, want); err != nil {
		ch.Action = ActionDrift
		return ch, fmt.Errorf("streams: update consumer %s/%s: %w", stream, want.Durable, err)
	}
	ch.Action = ActionUpdated
	return ch, nil
}

func consumerDiff(have, want jetstream.ConsumerConfig) []string {
	var diff []string
	add := func(field string, h, w any) { diff = append(diff, fmt.Sprintf("%s: have %v, want %v", field, h, w)) }
	if have.FilterSubject != want.FilterSubject {
		add("filter_subject", have.FilterSubject, want.FilterSubject)
	}
	if have.AckPolicy != want.AckPolicy {
		add("ack_policy", have.AckPolicy, want.AckPolicy)
	}
	if have.AckWait != want.AckWait {
		add("ack_wait", have.AckWait, want.AckWait)
	}
	if have.MaxDeliver != want.MaxDeliver {
		add("max_deliver", have.MaxDeliver, want.MaxDeliver)
	}
	if !slices.Equal(have.BackOff, want.BackOff) {
		add("backoff", have.BackOff, want.BackOff)
	}
	if have.MaxAckPending != want.MaxAckPending {
		add("max_ack_pending", have.MaxAckPending, want.MaxAckPending)
	}
	if have.MaxRequestMaxBytes != want.MaxRequestMaxBytes {
		add("max_bytes", have.MaxRequestMaxBytes, want.MaxRequestMaxBytes)
	}
	if have.Description != want.Description {
		add("description", have.Description, want.Description)
	}
	return diff
}
