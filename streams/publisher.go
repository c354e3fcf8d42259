package streams

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// MaxBatch is the largest atomic batch the server accepts.
const MaxBatch = 1000

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// JetStream is the client to publish with. Required.
	JetStream jetstream.JetStream
	// Topology gives the size limit of each kind's stream. Default
	// DefaultTopology().
	Topology Topology
	// Timeout bounds the wait for the JetStream acknowledgement when ctx has
	// no deadline. Default 5s.
	Timeout time.Duration
	// TracerProvider creates the producer spans. Default: the global one.
	TracerProvider trace.TracerProvider
	// GroupCommit, when above 0, lets concurrent PublishBatch calls for the
	// same stream share atomic batches (group commit, see groupcommit.go):
	// at most GroupCommit batches per stream are in flight, and the calls
	// that arrive meanwhile are committed together, up to MaxBatch messages
	// a batch. All calls in a batch get its outcome. Default 0: every call
	// is its own batch. The server allows 50 batches in flight per stream.
	GroupCommit int
}

// Publisher publishes messages and waits until JetStream has stored them.
// Every message carries a Nats-Msg-Id (JetStream drops a repeat inside the
// duplicate window), the publisher's trace context, and is checked against
// the size limit before anything is sent. It is safe for concurrent use.
type Publisher struct {
	js         jetstream.JetStream
	topo       Topology
	timeout    time.Duration
	tracer     trace.Tracer
	maxPayload int

	groupSlots int
	groupsMu   sync.Mutex
	groups     map[string]*commitQueue
}

// NewPublisher returns a Publisher.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if cfg.JetStream == nil {
		return nil, errors.New("streams: PublisherConfig.JetStream is required")
	}
	if cfg.Topology.Shards == 0 {
		cfg.Topology = DefaultTopology()
	}
	if cfg.GroupCommit < 0 || cfg.GroupCommit > 50 {
		return nil, fmt.Errorf("streams: PublisherConfig.GroupCommit is %d, must be 0 to 50 (the server's batches in flight per stream)", cfg.GroupCommit)
	}
	return &Publisher{
		js:         cfg.JetStream,
		topo:       cfg.Topology,
		timeout:    cmp.Or(cfg.Timeout, 5*time.Second),
		tracer:     tracerFrom(cfg.TracerProvider),
		maxPayload: int(cfg.JetStream.Conn().MaxPayload()),
		groupSlots: cfg.GroupCommit,
		groups:     map[string]*commitQueue{},
	}, nil
}

// Message is one message to publish.
type Message struct {
	// Subject says where it goes; it must validate.
	Subject Subject
	// ID is the idempotency key (Nats-Msg-Id). Required. It must carry the
	// account generation (see MessageID): JetStream's duplicate window
	// survives purges.
	ID string
	// Generation is the account generation, sent as a header so consumers can
	// drop stragglers of a deleted incarnation. 0 leaves it out.
	Generation int64
	// Data is the payload.
	Data []byte
	// Header holds extra headers; it may be nil.
	Header nats.Header
}

// MessageID builds an id that stays unique across re-creations of an account
// (the duplicate window outlives a purge): <account>:<generation>:<key>.
func MessageID(account string, generation int64, key string) string {
	return account + ":" + strconv.FormatInt(generation, 10) + ":" + key
}

// PublishResult is the outcome of a successful publish.
type PublishResult struct {
	Stream    string
	Sequence  uint64
	Duplicate bool
}

func (p *Publisher) build(ctx context.Context, m Message) (*nats.Msg, error) {
	if err := m.Subject.Validate(); err != nil {
		return nil, err
	}
	if m.ID == "" {
		return nil, fmt.Errorf("streams: publish to %s: message ID is required", m.Subject)
	}
	subj := m.Subject.String()
	h := nats.Header{}
	for k, v := range m.Header {
		h[k] = append([]string(nil), v...)
	}
	h.Set(jetstream.MsgIDHeader, m.ID)
	if h.Get(HeaderMessageID) == "" {
		h.Set(HeaderMessageID, m.ID)
	}
	if m.Generation > 0 {
		h.Set(HeaderGeneration, strconv.FormatInt(m.Generation, 10))
	}
	InjectTrace(ctx, h)
	msg := &nats.Msg{Subject: subj, Data: m.Data, Header: h}
	size := MsgSize(msg)
	limit := min(p.topo.MaxMsgSize(m.Subject.Kind), p.maxPayload)
	if size > limit {
		return nil, &SizeError{Subject: subj, Size: size, Limit: limit}
	}
	return msg, nil
}

// MsgSize is the size the server counts against max_payload and a stream's
// max_msg_size: payload plus encoded headers.
func MsgSize(m *nats.Msg) int {
	n := len(m.Data)
	if len(m.Header) > 0 {
		n += len("NATS/1.0\r\n\r\n")
		for k, vs := range m.Header {
			for _, v := range vs {
				n += len(k) + len(v) + 4
			}
		}
	}
	return n
}

func (p *Publisher) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, p.timeout)
}

// startSend starts the PRODUCER span of publishing m.
func (p *Publisher) startSend(ctx context.Context, m Message) (context.Context, trace.Span) {
	ctx, span := p.tracer.Start(ctx, "send "+StreamName(m.Subject.Kind, m.Subject.Shard), trace.WithSpanKind(trace.SpanKindProducer))
	if span.IsRecording() {
		// Built only for a span that is kept, as the consumer's are: a
		// stage that forwards every message would otherwise pay for them
		// with nothing recording.
		span.SetAttributes(append(subjectAttrs(m.Subject), attrSystemNATS,
			semconv.MessagingOperationTypeSend,
			semconv.MessagingOperationName("send"),
			semconv.MessagingDestinationName(m.Subject.String()),
			semconv.MessagingMessageID(m.ID),
			semconv.MessagingMessageBodySize(len(m.Data)))...)
	}
	return ctx, span
}

// Publish publishes m and returns once JetStream acknowledged it. A repeat
// of an id inside the duplicate window succeeds with Duplicate set.
func (p *Publisher) Publish(ctx context.Context, m Message) (PublishResult, error) {
	ctx, span := p.startSend(ctx, m)
	defer span.End()
	msg, err := p.build(ctx, m)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		return PublishResult{}, err
	}
	ctx, cancel := p.withTimeout(ctx)
	defer cancel()
	ack, err := p.js.PublishMsg(ctx, msg)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return PublishResult{}, fmt.Errorf("streams: publish to %s: %w", msg.Subject, err)
	}
	span.SetAttributes(attribute.Int64("messaging.nats.stream_sequence", int64(ack.Sequence)), attribute.Bool("shardflow.duplicate", ack.Duplicate))
	return PublishResult{Stream: ack.Stream, Sequence: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// PublishBatch stores msgs, which must all go to one stream, as one
// JetStream atomic batch: all of them or none, with one disk sync for the
// whole batch under sync_interval: always. With GroupCommit set, the batch
// may also hold other concurrent calls' messages. A batch holding an id that
// JetStream has already seen (a client retrying a request) is refused whole
// by the server; PublishBatch then publishes the messages one by one, so the
// duplicates are acknowledged as such and the rest stored — each message is
// idempotent, so the outcome is the same as a first successful try.
func (p *Publisher) PublishBatch(ctx context.Context, msgs []Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if len(msgs) > MaxBatch {
		return fmt.Errorf("streams: batch of %d messages is over the limit of %d", len(msgs), MaxBatch)
	}
	first := msgs[0].Subject
	ctx, span := p.tracer.Start(ctx, "send "+StreamName(first.Kind, first.Shard),
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(append(subjectAttrs(first), attrSystemNATS,
			semconv.MessagingOperationTypeSend,
			semconv.MessagingOperationName("send"),
			semconv.MessagingDestinationName(StreamName(first.Kind, first.Shard)),
			semconv.MessagingBatchMessageCount(len(msgs)))...))
	defer span.End()
	natsMsgs := make([]*nats.Msg, len(msgs))
	ids := make([]string, len(msgs))
	seen := make(map[string]struct{}, len(msgs))
	for i, m := range msgs {
		if m.Subject.Kind != first.Kind || m.Subject.Shard != first.Shard {
			return fmt.Errorf("streams: batch mixes streams %s and %s", StreamName(first.Kind, first.Shard), StreamName(m.Subject.Kind, m.Subject.Shard))
		}
		if _, dup := seen[m.ID]; dup {
			return fmt.Errorf("streams: batch holds message id %q twice", m.ID)
		}
		seen[m.ID] = struct{}{}
		nm, err := p.build(ctx, m)
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
			return err
		}
		natsMsgs[i], ids[i] = nm, m.ID
	}
	ctx, cancel := p.withTimeout(ctx)
	defer cancel()
	var err error
	if p.groupSlots > 0 {
		err = p.commitGrouped(ctx, StreamName(first.Kind, first.Shard), natsMsgs, ids)
	} else {
		err = p.commitBatch(ctx, natsMsgs)
	}
	return wrapSpanErr(span, err, first)
}

// commitBatch stores msgs as one atomic batch; when the server refuses it
// because it holds an id already stored, one by one.
func (p *Publisher) commitBatch(ctx context.Context, msgs []*nats.Msg) error {
	if len(msgs) == 1 {
		_, err := p.js.PublishMsg(ctx, msgs[0])
		return err
	}
	_, err := jetstreamext.PublishMsgBatch(ctx, p.js, msgs)
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == 10201 || apiErr.ErrorCode == 10158) {
		trace.SpanFromContext(ctx).AddEvent("batch holds an already-stored id; publishing one by one")
		err = p.publishEach(ctx, msgs)
	}
	return err
}

func wrapSpanErr(span trace.Span, err error, s Subject) error {
	if err == nil {
		return nil
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	return fmt.Errorf("streams: publish batch to %s: %w", StreamName(s.Kind, s.Shard), err)
}

// publishEach publishes msgs asynchronously and waits for every ack.
func (p *Publisher) publishEach(ctx context.Context, msgs []*nats.Msg) error {
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for _, m := range msgs {
		for _, k := range []string{jetstreamext.BatchIDHeader, jetstreamext.BatchSeqHeader, jetstreamext.BatchCommitHeader} {
			m.Header.Del(k)
		}
		m.Reply = ""
		f, err := p.js.PublishMsgAsync(m)
		if err != nil {
			return err
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
