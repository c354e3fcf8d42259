package sender_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/shardflow/shardflow/schemas"
	dbpkg "github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/services/internal/db/dbtest"
	"github.com/shardflow/shardflow/services/internal/sender"
	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/streamstest"
)

// The sender passes the consumer contract suite. Its effect is what a
// webhook receiver sees: deliveries per Idempotency-Key, counted by an
// httptest server. Postgres (the deliveries table, which keeps a
// redelivered message from being sent twice) is broken by pointing the pool
// at a port that refuses connections.
func TestContract(t *testing.T) {
	_, dsn := dbtest.New(t)
	db := dbtest.Breakable(t, dsn)
	rcv := newReceiver(t)
	message := func(i int, data []byte) streams.Message {
		return streams.Message{
			Subject:    streams.Subject{Kind: streams.KindOutbound, Account: "acme", Type: schemas.ChannelWebhook},
			ID:         streams.MessageID("acme", 1, fmt.Sprintf("m%d", i)) + ":welcome",
			Generation: 1,
			Data:       data,
		}
	}
	streamstest.Run(t, streamstest.Harness{
		Stage: streams.ConsumerSpec{Name: streams.StageSender, Kind: streams.KindOutbound},
		NewHandler: func(t *testing.T, _ *streamstest.Env) streams.Handler {
			s, err := sender.New(sender.Config{DB: dbpkg.SharedPool(db.Pool), Accounts: secrets{}, Client: &http.Client{Timeout: 5 * time.Second}})
			if err != nil {
				t.Fatal(err)
			}
			return s.Handle
		},
		GoodMessage: func(i int) streams.Message {
			id := streams.MessageID("acme", 1, fmt.Sprintf("m%d", i)) + ":welcome"
			data, _ := json.Marshal(schemas.Outbound{
				ID: id, Account: "acme", Shard: 0, Generation: 1, Channel: schemas.ChannelWebhook, Trigger: "welcome",
				URL: rcv.URL + "/hook", InboundID: fmt.Sprintf("m%d", i), CreatedAt: time.Now().UTC(),
				Event: schemas.Event{Type: schemas.TypeTrack, UserID: fmt.Sprintf("u%d", i), Event: "Signed Up"},
			})
			return message(i, data)
		},
		PoisonMessage:   func() streams.Message { return message(-1, []byte(`{"id":"acme:1:m-1:welcome","account":`)) },
		Effect:          func(_ *testing.T, _ *streamstest.Env, m streams.Message) int { return rcv.deliveries(m.ID) },
		BreakDependency: func(*testing.T) func() { return db.Break() },
		Features:        streamstest.Features{AccountGate: true},
	})
}

// secrets gives every account the same webhook signing secret.
type secrets struct{}

func (secrets) Lookup(id string) (streams.Account, bool) {
	return streams.Account{ID: id, Status: streams.StatusActive, Generation: 1, Secret: "secret"}, true
}

// receiver is a webhook receiver counting the deliveries of each
// Idempotency-Key.
type receiver struct {
	*httptest.Server
	mu    sync.Mutex
	byKey map[string]int
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{byKey: map[string]int{}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		key := req.Header.Get(sender.HeaderIdempotencyKey)
		if key == "" || req.Header.Get(sender.HeaderSignature) == "" {
			http.Error(w, "missing Idempotency-Key or signature", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.byKey[key]++
		r.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) deliveries(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byKey[key]
}
