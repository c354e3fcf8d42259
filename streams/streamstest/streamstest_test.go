package streamstest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/shardflow/shardflow/streams"
	"github.com/shardflow/shardflow/streams/streamstest"
)

// memStore is the reference implementation of an idempotent effect: a set
// of message ids, written at most once each, behind a dependency that can
// be switched off.
type memStore struct {
	mu      sync.Mutex
	effects map[string]int
	down    atomic.Bool
}

func (s *memStore) handle(ctx context.Context, m *streams.Msg) streams.Outcome {
	var body struct {
		N int `json:"n"`
	}
	if err := json.Unmarshal(m.Data, &body); err != nil {
		return streams.DeadLetter(streams.ClassUndecodable, fmt.Errorf("decode: %w", err))
	}
	if s.down.Load() {
		return streams.Unavailable(errors.New("store: connection refused"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, done := s.effects[m.ID]; !done {
		s.effects[m.ID]++
	}
	return streams.Ack()
}

func (s *memStore) effect(m streams.Message) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.effects[m.ID]
}

func harness(kind streams.Kind, typ string, gate bool) streamstest.Harness {
	s := &memStore{effects: map[string]int{}}
	msg := func(i int, data string) streams.Message {
		return streams.Message{
			Subject:    streams.Subject{Kind: kind, Account: "acme", Type: typ},
			ID:         streams.MessageID("acme", 1, fmt.Sprintf("m%d", i)),
			Generation: 1,
			Data:       []byte(data),
		}
	}
	return streamstest.Harness{
		Stage:         streams.ConsumerSpec{Name: "memsink", Kind: kind},
		NewHandler:    func(*testing.T, *streamstest.Env) streams.Handler { return s.handle },
		GoodMessage:   func(i int) streams.Message { return msg(i, fmt.Sprintf(`{"n":%d}`, i)) },
		PoisonMessage: func() streams.Message { return msg(-1, `{"n":`) },
		Effect:        func(_ *testing.T, _ *streamstest.Env, m streams.Message) int { return s.effect(m) },
		BreakDependency: func(*testing.T) func() {
			s.down.Store(true)
			return func() { s.down.Store(false) }
		},
		Features: streamstest.Features{AccountGate: gate},
	}
}

// The suite against the reference handler, on a work-queue stage behind the
// account gate.
func TestContractWorkQueueStage(t *testing.T) {
	streamstest.Run(t, harness(streams.KindInbound, "track", true))
}

// The suite against the reference handler, on a shared (limits) stream
// without the gate, as a team's consumer of lifecycle events runs.
func TestContractSharedStage(t *testing.T) {
	streamstest.Run(t, harness(streams.KindAccounts, "created", false))
}
