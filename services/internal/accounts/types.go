package accounts

import (
	"hash/fnv"
	"time"

	"github.com/shardflow/shardflow/streams"
)

// Deletion saga steps, in the order they run. Each name is recorded in
// account_deletions.step once the step is finished, with its time in the
// audit's "steps" object. StepStarted is the state of a deletion whose saga
// has not finished any step yet.
const (
	StepStarted       = "started"
	StepIngressClosed = "ingress_closed"
	StepPurged        = "purged"
	StepRowsDeleted   = "rows_deleted"
	StepVerified      = "verified"
	StepSecondPurge   = "second_purge"
	StepDeleted       = "deleted"
)

// Steps lists the saga's steps in order.
var Steps = []string{StepIngressClosed, StepPurged, StepRowsDeleted, StepVerified, StepSecondPurge, StepDeleted}

// MaxRateLimit is the largest rate limit (events per second) accepted.
const MaxRateLimit = 1_000_000

// Account is an account as the admin API returns it.
type Account struct {
	ID         string                `json:"id"`
	Shard      int                   `json:"shard"`
	Status     streams.AccountStatus `json:"status"`
	Generation int64                 `json:"generation"`
	WriteKey   string                `json:"write_key"`
	// RateLimit is the ingress limit in events per second; 0 means the
	// ingest default.
	RateLimit int       `json:"rate_limit"`
	CreatedAt time.Time `json:"created_at"`
	// Deletion is the account's latest deletion, or nil if it was never
	// deleted.
	Deletion *Deletion `json:"deletion"`
}

// Created is the answer to POST /v1/accounts.
type Created struct {
	ID         string                `json:"id"`
	Shard      int                   `json:"shard"`
	WriteKey   string                `json:"write_key"`
	Status     streams.AccountStatus `json:"status"`
	Generation int64                 `json:"generation"`
}

// DeleteAccepted is the answer to DELETE /v1/accounts/{id}.
type DeleteAccepted struct {
	ID         string                `json:"id"`
	Status     streams.AccountStatus `json:"status"`
	Generation int64                 `json:"generation"`
}

// Deletion is one run of the deletion saga (a row of account_deletions).
type Deletion struct {
	// Generation is the account generation the deletion closed.
	Generation int64      `json:"generation"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	// Step is the last finished step (StepStarted before the first).
	Step  string `json:"step"`
	Audit Audit  `json:"audit"`
}

// Audit records what the saga did, step by step.
type Audit struct {
	// Steps maps each finished step to the time it finished.
	Steps map[string]time.Time `json:"steps"`
	// Purged is the number of messages removed per stream (INBOUND_3...) by
	// the first purge.
	Purged map[string]uint64 `json:"purged"`
	// SecondPurge is the number removed by the purge after the grace
	// period: messages published during the race with ingress closing.
	SecondPurge map[string]uint64 `json:"second_purge"`
	// RowsDeleted is the number of rows deleted per table.
	RowsDeleted map[string]int64 `json:"rows_deleted"`
	// LateRowsDeleted is the number of rows deleted per table after the
	// grace period (written by handlers that were in flight at deletion).
	LateRowsDeleted map[string]int64 `json:"late_rows_deleted,omitempty"`
	// VerifyPurged counts messages found (and purged) by verification; it is
	// absent when verification found none.
	VerifyPurged map[string]uint64 `json:"verify_purged,omitempty"`
	// Consumers records the position of the shard's stage consumers at
	// verification, by "<stream>/<consumer>".
	Consumers map[string]ConsumerPosition `json:"consumers"`
}

// ConsumerPosition is a stage consumer's position when a deletion was
// verified.
type ConsumerPosition struct {
	Exists             bool   `json:"exists"`
	DeliveredStreamSeq uint64 `json:"delivered_stream_seq"`
	DeliveredSeq       uint64 `json:"delivered_consumer_seq"`
	AckFloorStreamSeq  uint64 `json:"ack_floor_stream_seq"`
	AckFloorSeq        uint64 `json:"ack_floor_consumer_seq"`
	NumPending         uint64 `json:"num_pending"`
	NumAckPending      int    `json:"num_ack_pending"`
}

// Trigger is an account's trigger: when an event of that name is tracked,
// the processor emits an outbound message on the channel to the URL.
type Trigger struct {
	Account   string    `json:"account"`
	Name      string    `json:"name"`
	Event     string    `json:"event"`
	Channel   string    `json:"channel"`
	URL       string    `json:"url"`
	CreatedAt time.Time `json:"created_at"`
}

// Triggers is the answer to GET /v1/accounts/{id}/triggers.
type Triggers struct {
	Triggers []Trigger `json:"triggers"`
}

// ShardOf returns the shard an account id is assigned to when it is
// created: FNV-32a of the id, modulo the number of shards.
func ShardOf(id string, shards int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % uint32(shards))
}

func (a *Audit) init() {
	if a.Steps == nil {
		a.Steps = map[string]time.Time{}
	}
	if a.Purged == nil {
		a.Purged = map[string]uint64{}
	}
	if a.SecondPurge == nil {
		a.SecondPurge = map[string]uint64{}
	}
	if a.RowsDeleted == nil {
		a.RowsDeleted = map[string]int64{}
	}
	if a.Consumers == nil {
		a.Consumers = map[string]ConsumerPosition{}
	}
}
