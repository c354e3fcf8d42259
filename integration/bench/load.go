package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// padding makes a track event about 1 KiB as ingest stores it.
var padding = strings.Repeat("x", 820)

// EventJSON is one track event of about 1 KiB. sentNs (Unix nanoseconds)
// travels in its properties to the webhook, so the sink can measure the
// latency from request to delivery.
func EventJSON(event, prefix string, i int, sentNs int64) []byte {
	return fmt.Appendf(nil, `{"type":"track","userId":"u%d","event":%q,"messageId":"%s-%d","properties":{"sent_ns":%d,"pad":%q}}`,
		i, event, prefix, i, sentNs, padding)
}

// PoisonJSON is an identify event whose traits hold a NUL character: valid
// JSON that Postgres' jsonb refuses (SQLSTATE 22P05); the processor
// dead-letters it at once.
func PoisonJSON(prefix string, i int) []byte {
	return fmt.Appendf(nil, `{"type":"identify","userId":"p%d","messageId":"%s-%d","traits":{"name":"bad\u0000%d","pad":%q}}`,
		i, prefix, i, i, padding)
}

// BatchBody is a /v1/batch body of events from..from+n-1.
func BatchBody(n int, ev func(i int) []byte, from int) []byte {
	var b bytes.Buffer
	b.Grow(n * 1100)
	b.WriteString(`{"batch":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(ev(from + i))
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

// Client posts to the tracking API with one account's write key, over
// keep-alive connections.
type Client struct {
	URL, WriteKey string
	// SDK makes the client behave as analytics SDKs do on 429: wait for
	// Retry-After and send the same request again (Refused counts those).
	SDK     bool
	Refused atomic.Int64
	hc      *http.Client
}

// NewClient returns a client for up to conns concurrent requests.
func NewClient(url, writeKey string, conns int) *Client {
	tr := &http.Transport{
		MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, IdleConnTimeout: 90 * time.Second,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	}
	return &Client{URL: url, WriteKey: writeKey, hc: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

// Post sends body to path and returns the status code. An SDK client
// sends it again after Retry-After while it is answered 429, until ctx ends.
func (c *Client) Post(ctx context.Context, path string, body []byte) (int, error) {
	for {
		code, retryAfter, err := c.post(ctx, path, body)
		if err != nil || !c.SDK || code != http.StatusTooManyRequests {
			return code, err
		}
		c.Refused.Add(1)
		select {
		case <-ctx.Done():
			return code, ctx.Err()
		case <-time.After(retryAfter):
		}
	}
}

// post sends body once and returns the status code and Retry-After (1 s
// when absent).
func (c *Client) post(ctx context.Context, path string, body []byte) (int, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", c.URL+path, bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.SetBasicAuth(c.WriteKey, "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	retryAfter := time.Second
	if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && n > 0 {
		retryAfter = time.Duration(n) * time.Second
	}
	return resp.StatusCode, retryAfter, nil
}

// Close drops idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// LoadResult is what a load run measured on the client side.
type LoadResult struct {
	Requests, Failed int
	// Skipped counts the open loop's ticks that found every request slot
	// busy: not sent, and counted in Failed too.
	Skipped   int
	Elapsed   time.Duration
	Latencies []time.Duration // per successful request
	FirstErr  string
}

// ClosedLoop sends requests 0..requests-1 from workers concurrent clients
// as fast as they are answered. body(i) builds request i at send time.
func ClosedLoop(ctx context.Context, c *Client, workers, requests int, body func(i int) []byte) LoadResult {
	var next atomic.Int64
	var mu sync.Mutex
	res := LoadResult{Requests: requests}
	lat := make([][]time.Duration, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= requests {
					return
				}
				b := body(i)
				t0 := time.Now()
				code, err := c.Post(ctx, "/v1/batch", b)
				d := time.Since(t0)
				if err != nil || code != 200 {
					mu.Lock()
					res.Failed++
					if res.FirstErr == "" {
						res.FirstErr = fmt.Sprintf("HTTP %d %v", code, err)
					}
					mu.Unlock()
					continue
				}
				lat[w] = append(lat[w], d)
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	for _, l := range lat {
		res.Latencies = append(res.Latencies, l...)
	}
	return res
}

// OpenLoop sends one request every interval for d, whether or not earlier
// ones were answered (at most maxOutstanding at once; a tick finding them
// all busy is counted as failed). body(i) builds request i at send time.
func OpenLoop(ctx context.Context, c *Client, interval, d time.Duration, maxOutstanding int, body func(i int) []byte) LoadResult {
	var mu sync.Mutex
	var res LoadResult
	sem := make(chan struct{}, maxOutstanding)
	var wg sync.WaitGroup
	start := time.Now()
	t := time.NewTicker(interval)
	defer t.Stop()
	for i := 0; time.Since(start) < d && ctx.Err() == nil; i++ {
		res.Requests++
		select {
		case sem <- struct{}{}:
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				t0 := time.Now()
				// A request already sent is let finish when ctx ends.
				code, err := c.Post(context.WithoutCancel(ctx), "/v1/batch", body(i))
				dd := time.Since(t0)
				mu.Lock()
				defer mu.Unlock()
				if err != nil || code != 200 {
					res.Failed++
					if res.FirstErr == "" {
						res.FirstErr = fmt.Sprintf("HTTP %d %v", code, err)
					}
					return
				}
				res.Latencies = append(res.Latencies, dd)
			}()
		default:
			mu.Lock()
			res.Failed++
			res.Skipped++
			if res.FirstErr == "" {
				res.FirstErr = "client saturated"
			}
			mu.Unlock()
		}
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res
}

// Sink is the webhook receiver: it counts deliveries per account and the
// latency from the event's sent_ns to its arrival.
type Sink struct {
	srv   *http.Server
	ln    net.Listener
	extra []net.Listener

	mu      sync.Mutex
	count   map[string]int
	samples map[string][]Sample
	first   map[string]time.Time
	last    map[string]time.Time
	hang    map[string]bool
}

// Sample is one delivery: when its request was sent and when it arrived.
type Sample struct {
	Sent, At time.Time
}

// Latency is At - Sent.
func (s Sample) Latency() time.Duration { return s.At.Sub(s.Sent) }

// NewSink starts a sink on a free port.
func NewSink() (*Sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Sink{ln: ln, count: map[string]int{}, samples: map[string][]Sample{}, first: map[string]time.Time{}, last: map[string]time.Time{}, hang: map[string]bool{}}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.handle), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// URL is where triggers point.
func (s *Sink) URL() string { return "http://" + s.ln.Addr().String() + "/hook" }

// NewURL opens one more port served by the same sink and returns its URL:
// each account gets a receiver of its own, as in life (the sender's circuit
// breaker is per destination host:port).
func (s *Sink) NewURL() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	s.extra = append(s.extra, ln)
	s.mu.Unlock()
	go func() { _ = s.srv.Serve(ln) }()
	return "http://" + ln.Addr().String() + "/hook", nil
}

// Close stops the sink.
func (s *Sink) Close() { _ = s.srv.Close() }

// Hang makes the sink hold an account's webhooks until the caller gives up
// (then answers 504), or stop doing so.
func (s *Sink) Hang(account string, on bool) {
	s.mu.Lock()
	s.hang[account] = on
	s.mu.Unlock()
}

type outbound struct {
	Account string `json:"account"`
	Event   struct {
		Properties struct {
			SentNs int64 `json:"sent_ns"`
		} `json:"properties"`
	} `json:"event"`
}

func (s *Sink) handle(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	now := time.Now()
	var out outbound
	_ = json.Unmarshal(body, &out)
	s.mu.Lock()
	hang := s.hang[out.Account]
	s.mu.Unlock()
	if hang {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
		w.WriteHeader(http.StatusGatewayTimeout)
		return
	}
	s.mu.Lock()
	s.count[out.Account]++
	if _, ok := s.first[out.Account]; !ok {
		s.first[out.Account] = now
	}
	s.last[out.Account] = now
	if out.Event.Properties.SentNs > 0 {
		s.samples[out.Account] = append(s.samples[out.Account], Sample{Sent: time.Unix(0, out.Event.Properties.SentNs), At: now})
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// Count is the number of deliveries of an account.
func (s *Sink) Count(account string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count[account]
}

// Window is when the account's first and last deliveries arrived.
func (s *Sink) Window(account string) (first, last time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first[account], s.last[account]
}

// Samples returns a copy of an account's delivery samples.
func (s *Sink) Samples(account string) []Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.samples[account])
}

// WaitCount waits until the account has at least n deliveries.
func (s *Sink) WaitCount(ctx context.Context, account string, n int) error {
	for s.Count(account) < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %d of %d webhooks delivered: %w", account, s.Count(account), n, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// Percentile returns the p-th percentile (0..100) of ds (nearest rank).
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Ms renders a duration in milliseconds.
func Ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func itoa(i int) string { return strconv.Itoa(i) }
