package processor_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	dbpkg "github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/services/internal/db/dbtest"
	"github.com/shardflow/shardflow/services/internal/processor"
	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/streamstest"
)

// The processor passes the consumer contract suite. Good messages alternate
// identify (effect: the person's row carries the message id) and track
// (effect: the outbound message of the account's trigger, counted in
// OUTBOUND_0 by its id). Postgres is broken by pointing the pool at a port
// that refuses connections.
func TestContract(t *testing.T) {
	pool, dsn := dbtest.New(t) // Effect and set-up read through this one
	db := dbtest.Breakable(t, dsn)
	if _, err := pool.Exec(t.Context(), `
		INSERT INTO accounts (id, shard, write_key, secret) VALUES ('acme', 0, 'wk_acme', 'secret');
		INSERT INTO triggers (account_id, name, event, channel, url)
		VALUES ('acme', 'welcome', 'Signed Up', 'webhook', 'https://example.com/hook')`); err != nil {
		t.Fatal(err)
	}
	message := func(i int, typ, data string) streams.Message {
		return streams.Message{
			Subject:    streams.Subject{Kind: streams.KindInbound, Account: "acme", Type: typ},
			ID:         streams.MessageID("acme", 1, fmt.Sprintf("m%d", i)),
			Generation: 1,
			Data:       []byte(data),
		}
	}
	streamstest.Run(t, streamstest.Harness{
		Stage: streams.ConsumerSpec{Name: streams.StageProcessor, Kind: streams.KindInbound},
		NewHandler: func(t *testing.T, e *streamstest.Env) streams.Handler {
			p, err := processor.New(processor.Config{DB: dbpkg.SharedPool(db.Pool), TriggerCacheTTL: time.Nanosecond})
			if err != nil {
				t.Fatal(err)
			}
			return p.Handle
		},
		GoodMessage: func(i int) streams.Message {
			if i%2 == 0 {
				return message(i, "identify", fmt.Sprintf(`{"type":"identify","userId":"u%d","traits":{"n":%d}}`, i, i))
			}
			return message(i, "track", fmt.Sprintf(`{"type":"track","userId":"u%d","event":"Signed Up"}`, i))
		},
		PoisonMessage: func() streams.Message { return message(-1, "track", `{"type":"track","userId":`) },
		Effect: func(t *testing.T, e *streamstest.Env, m streams.Message) int {
			if m.Subject.Type == "identify" {
				var n int
				err := pool.QueryRow(t.Context(), `SELECT count(*) FROM people WHERE account_id = $1 AND last_message_id = $2`, m.Subject.Account, m.ID).Scan(&n)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			return outbound(t, e.JetStream, m.Subject.Account, m.ID+":welcome")
		},
		BreakDependency: func(*testing.T) func() { return db.Break() },
		Features:        streamstest.Features{AccountGate: true},
	})
}

// outbound counts the messages with logical id id that the processor
// published to OUTBOUND_0 for account.
func outbound(t *testing.T, js jetstream.JetStream, account, id string) int {
	t.Helper()
	s, err := js.Stream(t.Context(), "OUTBOUND_0")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for seq := uint64(1); ; {
		m, err := s.GetMsg(t.Context(), seq, jetstream.WithGetMsgSubject(streams.AccountFilter(streams.KindOutbound, 0, account)))
		var apiErr *jetstream.APIError
		if errors.Is(err, jetstream.ErrMsgNotFound) || (errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeMessageNotFound) {
			return n // no message at or after seq
		}
		if err != nil {
			t.Fatalf("read OUTBOUND_0 from %d: %v", seq, err)
		}
		if m.Header.Get(streams.HeaderMessageID) == id {
			n++
		}
		seq = m.Sequence + 1
	}
}
