package harness

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/shardflow/shardflow/schemas"
)

// Receiver is a webhook receiver for tests: it checks every signature and
// counts deliveries per Idempotency-Key.
type Receiver struct {
	srv *httptest.Server
	// Secret returns an account's webhook secret.
	Secret func(account string) string
	// Respond, when set, chooses the answer (default 200).
	Respond func(r *http.Request, out *schemas.Outbound) int

	mu        sync.Mutex
	byKey     map[string]int
	byAccount map[string]int
	badSig    int
	requests  int
	traces    map[string]string // idempotency key → traceparent
	lastAt    map[string]time.Time
}

// NewReceiver starts a receiver, closed when the test ends.
func NewReceiver(t testing.TB, secret func(string) string) *Receiver {
	r := &Receiver{Secret: secret, byKey: map[string]int{}, byAccount: map[string]int{}, traces: map[string]string{}, lastAt: map[string]time.Time{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.handle))
	t.Cleanup(r.srv.Close)
	return r
}

// URL is where triggers should point.
func (r *Receiver) URL() string { return r.srv.URL + "/hook" }

func (r *Receiver) handle(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		// A sender killed mid-request leaves a truncated body: a real
		// receiver refuses it, and so does this one (it is sent again).
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	var out schemas.Outbound
	_ = json.Unmarshal(body, &out)
	code := 200
	if r.Respond != nil {
		code = r.Respond(req, &out)
	}
	r.mu.Lock()
	r.requests++
	if code >= 200 && code < 300 {
		mac := hmac.New(sha256.New, []byte(r.Secret(out.Account)))
		mac.Write(body)
		if req.Header.Get("Shardflow-Signature") != "sha256="+hex.EncodeToString(mac.Sum(nil)) {
			r.badSig++
		}
		key := req.Header.Get("Idempotency-Key")
		r.byKey[key]++
		r.byAccount[out.Account]++
		r.traces[key] = req.Header.Get("traceparent")
		r.lastAt[out.Account] = time.Now()
	}
	r.mu.Unlock()
	w.WriteHeader(code)
}

// Stats returns distinct keys delivered, total successful deliveries, and
// the number with a bad signature.
func (r *Receiver) Stats() (distinct, total, badSig int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.byKey {
		total += n
	}
	return len(r.byKey), total, r.badSig
}

// Account returns successful deliveries for an account.
func (r *Receiver) Account(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byAccount[id]
}

// Duplicates returns the keys delivered more than once.
func (r *Receiver) Duplicates() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := map[string]int{}
	for k, n := range r.byKey {
		if n > 1 {
			d[k] = n
		}
	}
	return d
}

// Traceparent returns the traceparent header a delivery arrived with.
func (r *Receiver) Traceparent(key string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.traces[key]
}

// Requests counts every request, failed answers included.
func (r *Receiver) Requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests
}

// LastAt is when the account's last successful delivery arrived.
func (r *Receiver) LastAt(account string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastAt[account]
}
