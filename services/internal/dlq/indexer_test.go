package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/schemas"
	"github.com/shardflow/shardflow/services/internal/db/dbtest"
	"github.com/shardflow/shardflow/services/internal/dlq"
	"github.com/shardflow/shardflow/streams"
)

// envelope builds a dead letter of a message published at seq of stream.
func envelope(subject, stream string, seq uint64, stage, class string, h nats.Header, payload []byte, failed time.Time) schemas.DeadLetter {
	return streams.Envelope(subject, h, payload, stream, seq, stage, class, errors.New("boom: "+class), 3,
		failed.Add(-time.Minute), failed)
}

func TestIndexerIndexesEachDeadLetterOnce(t *testing.T) {
	e := newEnv(t)
	ix, err := dlq.NewIndexer(dlq.IndexerConfig{Store: e.store})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	h := nats.Header{}
	h.Set(jetstream.MsgIDHeader, "acme:1:m7")
	h.Set(streams.HeaderMessageID, "acme:1:m7")
	h.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	a := envelope("inbound.0.acme.track", "INBOUND_0", 7, streams.StageProcessor, streams.ClassPermanent, h, []byte(`{"event":"x"}`), now)
	b := envelope("outbound.0.beta.webhook", "OUTBOUND_0", 3, streams.StageSender, streams.ClassReceiver4xx, nil, []byte("not json"), now)
	for _, env := range []schemas.DeadLetter{a, a, b} { // a twice
		if err := streams.PublishDeadLetter(t.Context(), e.js, env); err != nil {
			t.Fatal(err)
		}
	}
	// Not an envelope: dropped, never indexed, never dead-lettered again.
	if _, err := e.js.PublishMsg(t.Context(), &nats.Msg{Subject: "deadletter.0.acme.processor", Data: []byte("garbage"),
		Header: nats.Header{jetstream.MsgIDHeader: []string{"garbage-1"}}}); err != nil {
		t.Fatal(err)
	}

	c := e.runConsumer(t, streams.StageIndexer, ix.Handle)
	eventually(t, 10*time.Second, func() error {
		st := c.Stats()
		if st.Acked != 2 || st.Dropped != 1 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	counts, err := e.store.Counts(t.Context(), dlq.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{streams.ClassPermanent: 1, streams.ClassReceiver4xx: 1}; !reflect.DeepEqual(counts, want) {
		t.Fatalf("counts %v, want %v", counts, want)
	}
	row, err := e.store.Get(t.Context(), "INBOUND_0:7")
	if err != nil {
		t.Fatal(err)
	}
	want := dlq.Row{
		ID: "INBOUND_0:7", Shard: 0, Account: "acme", Stage: streams.StageProcessor, ErrorClass: streams.ClassPermanent,
		Error: "boom: permanent", Attempts: 3, OriginalSubject: "inbound.0.acme.track", Headers: a.Headers,
		Payload: []byte(`{"event":"x"}`), TraceID: "0af7651916cd43dd8448eb211c80319c",
		FirstFailure: now.Add(-time.Minute), LastFailure: now, DLStream: "DEADLETTER_0", DLSeq: 1,
	}
	got := row
	got.CreatedAt = time.Time{}
	got.FirstFailure, got.LastFailure = got.FirstFailure.UTC(), got.LastFailure.UTC()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("row\n got %+v\nwant %+v", got, want)
	}
	if row.CreatedAt.IsZero() || row.ReplayedAt != nil || row.DroppedAt != nil || row.ReplayCount != 0 {
		t.Fatalf("bookkeeping %+v", row)
	}
	rb, err := e.store.Get(t.Context(), "OUTBOUND_0:3")
	if err != nil {
		t.Fatal(err)
	}
	if rb.Account != "beta" || rb.Stage != streams.StageSender || rb.DLSeq != 2 || string(rb.Payload) != "not json" {
		t.Fatalf("row %+v", rb)
	}

	// Indexing again (a redelivery after a lost ack) is harmless.
	if err := e.store.Index(t.Context(), a, "DEADLETTER_0", 99); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := e.pool.QueryRow(t.Context(), `SELECT count(*) FROM dead_letters`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d rows, want 2", n)
	}
	if again, _ := e.store.Get(t.Context(), "INBOUND_0:7"); again.DLSeq != 1 {
		t.Fatalf("second index changed the row: %+v", again)
	}
}

func TestIndexerOutcomes(t *testing.T) {
	_, dsn := dbtest.New(t)
	env := envelope("inbound.0.acme.track", "INBOUND_0", 1, streams.StageProcessor, streams.ClassTransient, nil, []byte("x"), time.Now())
	data, err := env.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	msg := func(data []byte) *streams.Msg {
		return &streams.Msg{Data: data, Stream: "DEADLETTER_0", Sequence: 1, Delivered: 1}
	}
	handle := func(t *testing.T, pool *pgxpool.Pool, data []byte) streams.Outcome {
		t.Helper()
		ix, err := dlq.NewIndexer(dlq.IndexerConfig{Store: dlq.NewStore(pool)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		return ix.Handle(ctx, msg(data))
	}

	t.Run("undecodable", func(t *testing.T) {
		pool, _ := dbtest.New(t)
		for _, d := range []string{"garbage", `{"id":""}`, `[]`} {
			out := handle(t, pool, []byte(d))
			if out.Kind != streams.OutcomeDrop || out.Reason != dlq.ReasonUndecodableEnvelope {
				t.Fatalf("%q: %v", d, out)
			}
		}
	})
	t.Run("database down", func(t *testing.T) {
		pool, err := pgxpool.New(t.Context(), "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2")
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		if out := handle(t, pool, data); out.Kind != streams.OutcomeUnavailable {
			t.Fatalf("outcome %v", out)
		}
	})
	t.Run("pool closed", func(t *testing.T) {
		pool, err := pgxpool.New(t.Context(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		pool.Close()
		if out := handle(t, pool, data); out.Kind != streams.OutcomeUnavailable {
			t.Fatalf("outcome %v", out)
		}
	})
	t.Run("other database error", func(t *testing.T) {
		pool, _ := dbtest.New(t)
		if _, err := pool.Exec(t.Context(), `ALTER TABLE dead_letters RENAME TO dead_letters_gone`); err != nil {
			t.Fatal(err)
		}
		if out := handle(t, pool, data); out.Kind != streams.OutcomeRetry || out.Err == nil {
			t.Fatalf("outcome %v", out)
		}
	})
	t.Run("indexed", func(t *testing.T) {
		pool, _ := dbtest.New(t)
		if out := handle(t, pool, data); out.Kind != streams.OutcomeAck {
			t.Fatalf("outcome %v", out)
		}
	})
}
