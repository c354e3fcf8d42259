package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shardflow/shardflow/streams"
)

// ---- admin API ----

// adminClient calls the accounts service's admin API.
type adminClient struct {
	base, token string
}

var apiClient = &http.Client{Timeout: 10 * time.Second}

// do sends a JSON request and decodes a 2xx answer into out (may be nil). It
// returns the status code; an error only when there was no answer.
func (a *adminClient) do(ctx context.Context, method, path string, body, out any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := apiClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("admin API %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if out != nil && resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, b, fmt.Errorf("admin API %s %s: decode %q: %w", method, path, b, err)
		}
	}
	return resp.StatusCode, b, nil
}

// apiAccount is the admin API's view of an account (the fields the stack
// uses of both the POST and the GET answers).
type apiAccount struct {
	ID         string                `json:"id"`
	Shard      int                   `json:"shard"`
	Status     streams.AccountStatus `json:"status"`
	Generation int64                 `json:"generation"`
	WriteKey   string                `json:"write_key"`
}

// ensureAccount creates an account, or reads it back if it exists (409).
func (a *adminClient) ensureAccount(ctx context.Context, id string) (acct apiAccount, created bool, err error) {
	code, body, err := a.do(ctx, http.MethodPost, "/v1/accounts", map[string]string{"id": id}, &acct)
	if err != nil {
		return acct, false, err
	}
	switch {
	case code/100 == 2:
		return acct, true, nil
	case code == http.StatusConflict:
		code, body, err = a.do(ctx, http.MethodGet, "/v1/accounts/"+id, nil, &acct)
		if err != nil {
			return acct, false, err
		}
		if code != http.StatusOK {
			return acct, false, fmt.Errorf("admin API GET /v1/accounts/%s: HTTP %d: %s", id, code, bytes.TrimSpace(body))
		}
		return acct, false, nil
	default:
		return acct, false, fmt.Errorf("admin API POST /v1/accounts (%s): HTTP %d: %s", id, code, bytes.TrimSpace(body))
	}
}

// ---- demo accounts ----

// demoAccount is a demo account and its traffic counters.
type demoAccount struct {
	ID       string
	Shard    int
	WriteKey string

	accepted atomic.Int64 // events ingest answered 200 for
	rejected atomic.Int64 // events of requests refused or failed
}

// triggerEvent is the event the demo trigger matches; otherEvent matches
// no trigger.
const (
	triggerEvent = "Signed Up"
	otherEvent   = "Page Viewed"
)

// setupDemo creates demo-1, demo-2, ... until every shard has a demo account
// (at most 4×shards tries: the shard is a hash of the id), each with a
// trigger sending triggerEvent to hookURL, and waits until the directory
// has them.
func setupDemo(ctx context.Context, con *console, admin *adminClient, dir *streams.Directory, shards int, hookURL string) ([]*demoAccount, error) {
	con.step("creating demo accounts through the admin API (one per shard), trigger %q → %s", triggerEvent, hookURL)
	covered := make([]bool, shards)
	left := shards
	var accts []*demoAccount
	for n := 1; n <= 4*shards && left > 0; n++ {
		id := fmt.Sprintf("demo-%d", n)
		a, created, err := admin.ensureAccount(ctx, id)
		if err != nil {
			return nil, err
		}
		if a.Status != streams.StatusActive {
			con.printf("    %-8s exists but is %s: not used (restore it, or delete the data to start afresh)", id, a.Status)
			continue
		}
		if a.Shard < 0 || a.Shard >= shards {
			con.printf("    %-8s is on shard %d, outside this run's %d shards (made with another --shards): not used", id, a.Shard, shards)
			continue
		}
		trig := map[string]string{"event": triggerEvent, "channel": "webhook", "url": hookURL}
		code, body, err := admin.do(ctx, http.MethodPut, "/v1/accounts/"+id+"/triggers/welcome", trig, nil)
		if err != nil {
			return nil, err
		}
		if code/100 != 2 {
			return nil, fmt.Errorf("admin API PUT /v1/accounts/%s/triggers/welcome: HTTP %d: %s", id, code, bytes.TrimSpace(body))
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err = dir.Wait(wctx, id, func(d streams.Account, ok bool) bool {
			return ok && d.Status == streams.StatusActive && d.Generation >= a.Generation
		})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			con.printf("    %-8s is not in the NATS account directory (was the data directory deleted while Postgres kept the account?): not used", id)
			continue
		}
		what := "existing"
		if created {
			what = "created"
		}
		con.printf("    %-8s shard %d  write key %s  (%s)", id, a.Shard, a.WriteKey, what)
		accts = append(accts, &demoAccount{ID: id, Shard: a.Shard, WriteKey: a.WriteKey})
		if !covered[a.Shard] {
			covered[a.Shard] = true
			left--
		}
	}
	if len(accts) == 0 {
		return nil, errors.New("no usable demo account: see the lines above")
	}
	if left > 0 {
		var missing []string
		for i, c := range covered {
			if !c {
				missing = append(missing, fmt.Sprint(i))
			}
		}
		con.printf("    no demo account landed on shard %s within %d tries", strings.Join(missing, ", "), 4*shards)
	}
	return accts, nil
}

// ---- traffic ----

const (
	trafficTick = 500 * time.Millisecond
	maxPerBatch = 500 // well under ingest's 500 KB and streams.MaxBatch
)

// traffic posts demo events to the tracking API.
type traffic struct {
	url      string
	accts    []*demoAccount
	rate     int // events/s per account
	runID    string
	shards   []atomic.Int64 // accepted events by shard
	con      *console
	client   *http.Client
	warnMu   sync.Mutex
	lastWarn map[string]time.Time
}

func newTraffic(url string, accts []*demoAccount, rate, shards int, con *console) *traffic {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &traffic{
		url: url, accts: accts, rate: rate, runID: hex.EncodeToString(b[:]),
		shards: make([]atomic.Int64, shards), con: con, lastWarn: map[string]time.Time{},
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}},
	}
}

func (t *traffic) accepted(shard int) int64 { return t.shards[shard].Load() }

// run sends every account's events until ctx ends.
func (t *traffic) run(ctx context.Context) {
	if t.rate == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, a := range t.accts {
		wg.Go(func() { t.account(ctx, a) })
	}
	wg.Wait()
}

func (t *traffic) account(ctx context.Context, a *demoAccount) {
	tick := time.NewTicker(trafficTick)
	defer tick.Stop()
	var seq int
	var carry float64
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		want := float64(t.rate)*trafficTick.Seconds() + carry
		n := int(want)
		carry = want - float64(n)
		for n > 0 && ctx.Err() == nil {
			k := min(n, maxPerBatch)
			t.send(ctx, a, seq, k)
			seq += k
			n -= k
		}
	}
}

// batch builds a /v1/batch body of n track events numbered from seq: most
// triggerEvent, every tenth otherEvent.
func (t *traffic) batch(a *demoAccount, seq, n int) []byte {
	var b strings.Builder
	b.WriteString(`{"batch":[`)
	for i := range n {
		k := seq + i
		if i > 0 {
			b.WriteByte(',')
		}
		event, props := triggerEvent, `{"plan":"free","source":"shardflow-stack"}`
		if k%10 == 9 {
			event, props = otherEvent, `{"path":"/pricing"}`
		}
		fmt.Fprintf(&b, `{"type":"track","userId":"user-%d","event":%q,"messageId":"stack-%s-%s-%d","properties":%s}`,
			k%100, event, t.runID, a.ID, k, props)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

func (t *traffic) send(ctx context.Context, a *demoAccount, seq, n int) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url+"/v1/batch", bytes.NewReader(t.batch(a, seq, n)))
	if err != nil {
		return
	}
	req.SetBasicAuth(a.WriteKey, "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := t.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			a.rejected.Add(int64(n))
			t.warn(a, err.Error())
		}
		return
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		a.accepted.Add(int64(n))
		t.shards[a.Shard].Add(int64(n))
		return
	}
	a.rejected.Add(int64(n))
	t.warn(a, fmt.Sprintf("HTTP %d %s", resp.StatusCode, bytes.TrimSpace(body)))
}

// warn prints a refused request, at most once every 10 s per account.
func (t *traffic) warn(a *demoAccount, msg string) {
	t.warnMu.Lock()
	defer t.warnMu.Unlock()
	if time.Since(t.lastWarn[a.ID]) < 10*time.Second {
		return
	}
	t.lastWarn[a.ID] = time.Now()
	t.con.prefixed("demo", "91", fmt.Sprintf("%s: ingest refused a batch: %s", a.ID, msg))
}
