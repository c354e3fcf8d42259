package streams

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PurgeSubject removes every message matching filter from stream and
// returns how many were removed. (nats.go's Stream.Purge discards the count,
// so this sends the purge request itself.) In-flight deliveries of purged
// messages are dropped by the server: acking them is harmless and they are
// never redelivered. Only STREAM.PURGE is needed, not STREAM.INFO.
func PurgeSubject(ctx context.Context, nc *nats.Conn, stream, filter string) (uint64, error) {
	return purgeUpTo(ctx, nc, stream, filter, 0)
}

// purgeUpTo is PurgeSubject limited to the messages below sequence upTo
// (0: all).
func purgeUpTo(ctx context.Context, nc *nats.Conn, stream, filter string, upTo uint64) (uint64, error) {
	req, _ := json.Marshal(struct {
		Filter string `json:"filter"`
		Seq    uint64 `json:"seq,omitempty"`
	}{filter, upTo})
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	resp, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+stream, req)
	if err != nil {
		return 0, fmt.Errorf("streams: purge %s from %s: %w", filter, stream, err)
	}
	var r struct {
		Success bool                `json:"success"`
		Purged  uint64              `json:"purged"`
		Error   *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return 0, fmt.Errorf("streams: purge %s from %s: bad reply: %w", filter, stream, err)
	}
	if r.Error != nil {
		return 0, fmt.Errorf("streams: purge %s from %s: %w", filter, stream, r.Error)
	}
	return r.Purged, nil
}

// HeaderWake marks a wake-up message: the runtime acks it without calling
// the handler.
const HeaderWake = "Shardflow-Wake"

// PurgeAccount purges one account's subjects from a kind's stream on a
// shard and returns how many messages were removed. It purges a range of
// sequences at a time (purgeInSteps), so the other accounts of the shard
// wait for no long hold of their stream. On a work-queue (stage)
// stream it then publishes a wake-up message for the stage consumer: the
// server does not wake a pull consumer that was at MaxAckPending when the
// purge freed its slots (anchors, check 1f), so without it the other
// accounts of the shard wait until the consumer's next pull request.
func PurgeAccount(ctx context.Context, js jetstream.JetStream, kind Kind, shard int, account string) (uint64, error) {
	stream := StreamName(kind, shard)
	n, err := purgeInSteps(ctx, js, stream, AccountFilter(kind, shard, account))
	if err != nil || (kind != KindInbound && kind != KindOutbound) {
		return n, err
	}
	h := nats.Header{}
	h.Set(HeaderWake, "purge")
	h.Set(jetstream.MsgIDHeader, "wake:"+stream+":"+strconv.FormatInt(time.Now().UnixNano(), 10))
	// Not under the account's filter (so a verification of the purge does
	// not count it), and no account id can start with '_'.
	subj := string(kind) + "." + strconv.Itoa(shard) + "._wake.purge"
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(wctx, &nats.Msg{Subject: subj, Header: h}); err != nil {
		return n, fmt.Errorf("streams: wake %s after purging %s: %w", stream, account, err)
	}
	return n, nil
}

// purgeStep is how many sequences one purge request covers.
const purgeStep = 16_384

// purgeInSteps purges filter from stream a range of purgeStep sequences at
// a time, then whatever is left: a filtered purge holds the stream while it
// runs, and one over a whole large stream holds up every other account's
// publishes and fetches on the shard for as long; steps bound each hold.
func purgeInSteps(ctx context.Context, js jetstream.JetStream, stream, filter string) (uint64, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, fmt.Errorf("streams: purge %s from %s: %w", filter, stream, err)
	}
	st := s.CachedInfo().State
	var total uint64
	for upTo := st.FirstSeq + purgeStep; upTo <= st.LastSeq; upTo += purgeStep {
		n, err := purgeUpTo(ctx, js.Conn(), stream, filter, upTo)
		total += n
		if err != nil {
			return total, err
		}
	}
	n, err := purgeUpTo(ctx, js.Conn(), stream, filter, 0)
	return total + n, err
}

// CountSubject returns how many messages of stream match filter.
func CountSubject(ctx context.Context, js jetstream.JetStream, stream, filter string) (uint64, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, fmt.Errorf("streams: count %s in %s: %w", filter, stream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return 0, fmt.Errorf("streams: count %s in %s: %w", filter, stream, err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n, nil
}

// ReleaseHeld moves the parked copies of an account's messages (see
// ConsumerConfig.Gate) back to their original subjects, in order, and
// returns how many it moved. Each copy is republished with the id
// released:<stream>:<seq> (so a repeat is harmless) and its logical id
// unchanged, then removed. Call it when an account is restored. It reads by
// sequence (no consumer), so it works on work-queue streams.
func ReleaseHeld(ctx context.Context, js jetstream.JetStream, kind Kind, shard int, account string) (int, error) {
	stream := StreamName(kind, shard)
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, fmt.Errorf("streams: release held of %s: %w", account, err)
	}
	filter := HeldFilter(kind, shard, account)
	n := 0
	for seq := uint64(1); ; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if isNoMessage(err) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("streams: release held of %s: %w", account, err)
		}
		h := CopyHeaders(m.Header)
		orig := h.Get(HeaderOriginalSubject)
		if orig == "" {
			return n, fmt.Errorf("streams: held message %s:%d has no original subject", stream, m.Sequence)
		}
		h.Del(HeaderOriginalSubject)
		h.Set(jetstream.MsgIDHeader, "released:"+stream+":"+strconv.FormatUint(m.Sequence, 10))
		if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: orig, Header: h, Data: m.Data}); err != nil {
			return n, fmt.Errorf("streams: release held of %s: %w", account, err)
		}
		if err := s.DeleteMsg(ctx, m.Sequence); err != nil && !isNoMessage(err) {
			return n, fmt.Errorf("streams: release held of %s: %w", account, err)
		}
		n++
		seq = m.Sequence + 1
	}
}

func isNoMessage(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrMsgNotFound) || (errors.As(err, &apiErr) && (apiErr.ErrorCode == 10057 || apiErr.ErrorCode == 10037))
}

// MaxDeliverAdvisory is JetStream's advisory for a message that reached
// MaxDeliver without being acked or terminated (its handler crashed or hung
// on every delivery). It carries only the stream and sequence.
type MaxDeliverAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries int    `json:"deliveries"`
}

// MaxDeliverAdvisorySubject matches every max-deliveries advisory.
const MaxDeliverAdvisorySubject = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"

// DeadLetterBySequence dead-letters a message that a stage gave up on
// without a handler outcome: get it by sequence, publish its envelope
// (idempotent id <stream>:<seq>) and delete it from the stage stream — a
// work-queue stream would otherwise keep it for ever. It is idempotent: a
// message already gone is success (found=false).
func DeadLetterBySequence(ctx context.Context, js jetstream.JetStream, adv MaxDeliverAdvisory, class string, reason error) (found bool, err error) {
	s, err := js.Stream(ctx, adv.Stream)
	if err != nil {
		return false, fmt.Errorf("streams: dead-letter %s:%d: %w", adv.Stream, adv.StreamSeq, err)
	}
	raw, err := s.GetMsg(ctx, adv.StreamSeq)
	if err != nil {
		if isNoMessage(err) {
			return false, nil
		}
		return false, fmt.Errorf("streams: dead-letter %s:%d: get: %w", adv.Stream, adv.StreamSeq, err)
	}
	now := time.Now()
	env := Envelope(raw.Subject, raw.Header, raw.Data, adv.Stream, adv.StreamSeq, adv.Consumer, class, reason, adv.Deliveries, raw.Time, now)
	if err := PublishDeadLetter(ctx, js, env); err != nil {
		return true, err
	}
	if err := s.DeleteMsg(ctx, adv.StreamSeq); err != nil && !isNoMessage(err) {
		return true, fmt.Errorf("streams: dead-letter %s:%d: delete: %w", adv.Stream, adv.StreamSeq, err)
	}
	return true, nil
}
