package streams

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// CheckLimits verifies at start-up that the one size limit of the topology
// can be carried end to end: the server's max_payload must be at least the
// largest derived message size, and every stream of the topology must accept
// its kind's size. A mismatch returns an ErrLimitMismatch error naming both
// numbers; a service must refuse to start on it (failure F2 of the design:
// a worker whose limit is lower than what producers create).
//
// Only streams are read (STREAM.INFO), so least-privilege users need that
// permission on their streams.
func CheckLimits(ctx context.Context, js jetstream.JetStream, t Topology, kinds ...Kind) error {
	if len(kinds) == 0 {
		kinds = Kinds
	}
	var errs []error
	maxPayload := int(js.Conn().MaxPayload())
	for _, k := range kinds {
		if need := t.MaxMsgSize(k); maxPayload < need {
			errs = append(errs, fmt.Errorf("%w: server max_payload is %d bytes but %s messages need up to %d bytes (MaxEventBytes %d); raise max_payload or lower the event limit",
				ErrLimitMismatch, maxPayload, k, need, t.MaxEventBytes))
		}
	}
	for shard := 0; shard < t.Shards; shard++ {
		for _, k := range kinds {
			name := StreamName(k, shard)
			s, err := js.Stream(ctx, name)
			if err != nil {
				if errors.Is(err, jetstream.ErrStreamNotFound) {
					errs = append(errs, fmt.Errorf("%w: stream %s does not exist (run provisioning)", ErrLimitMismatch, name))
					continue
				}
				return fmt.Errorf("streams: check limits of %s: %w", name, err)
			}
			have := int(s.CachedInfo().Config.MaxMsgSize)
			if need := t.MaxMsgSize(k); have >= 0 && have < need {
				errs = append(errs, fmt.Errorf("%w: stream %s max_msg_size is %d bytes but the configured limit needs %d bytes (MaxEventBytes %d); re-provision",
					ErrLimitMismatch, name, have, need, t.MaxEventBytes))
			}
		}
	}
	return errors.Join(errs...)
}
