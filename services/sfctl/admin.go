package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// adminClient calls the accounts service's admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

func (a *app) admin() (*adminClient, error) {
	if a.cli.AdminToken == "" {
		return nil, errors.New("the admin API needs a token: set SHARDFLOW_ADMIN_TOKEN or --admin-token")
	}
	u, err := url.Parse(a.cli.AdminURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--admin-url %q is not an http(s) URL", a.cli.AdminURL)
	}
	return &adminClient{base: strings.TrimRight(a.cli.AdminURL, "/"), token: a.cli.AdminToken, http: &http.Client{Timeout: a.cli.Timeout}}, nil
}

// APIError is a non-2xx answer of the admin API.
type APIError struct {
	Method, Path string
	Status       int
	Message      string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), e.Message)
}

// call sends a request and returns the answer's body (JSON); a non-2xx
// answer is an *APIError carrying the API's error message.
func (c *adminClient) call(ctx context.Context, method, path string, body any) (json.RawMessage, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(raw))
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, &APIError{Method: method, Path: path, Status: resp.StatusCode, Message: msg}
	}
	return raw, nil
}

// print writes a JSON answer, indented.
func (a *app) print(raw json.RawMessage) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(raw), "", "  "); err != nil {
		_, err = a.out.Write(raw) // not JSON: as it came
		return err
	}
	buf.WriteByte('\n')
	_, err := a.out.Write(buf.Bytes())
	return err
}

// callPrint is call then print.
func (a *app) callPrint(ctx context.Context, method, path string, body any) error {
	c, err := a.admin()
	if err != nil {
		return err
	}
	raw, err := c.call(ctx, method, path, body)
	if err != nil {
		return err
	}
	return a.print(raw)
}

func accountPath(id string, rest ...string) string {
	p := "/v1/accounts/" + url.PathEscape(id)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

// AccountsCmd is `sfctl accounts`.
type AccountsCmd struct {
	Create   AccountsCreateCmd   `cmd:"" help:"Create (or re-create a deleted) account."`
	Get      AccountsGetCmd      `cmd:"" help:"Show an account, with its latest deletion."`
	Update   AccountsUpdateCmd   `cmd:"" help:"Change an account's rate limit."`
	Delete   AccountsDeleteCmd   `cmd:"" help:"Delete an account (purges its messages and data)."`
	Suspend  AccountsSuspendCmd  `cmd:"" help:"Suspend an account: ingress closed, messages parked, data kept."`
	Restore  AccountsRestoreCmd  `cmd:"" help:"Restore a suspended account and release its parked messages."`
	Trigger  AccountsTriggerCmd  `cmd:"" help:"Create or replace a trigger."`
	Triggers AccountsTriggersCmd `cmd:"" help:"List an account's triggers."`
}

// AccountsCreateCmd is `sfctl accounts create`.
type AccountsCreateCmd struct {
	ID        string `arg:"" help:"Account id."`
	RateLimit int    `name:"rate-limit" help:"Ingress limit in events/s (0: the ingest default)."`
}

// Run creates the account.
func (c *AccountsCreateCmd) Run(a *app) error {
	ctx := a.ctx
	return a.callPrint(ctx, http.MethodPost, "/v1/accounts", map[string]any{"id": c.ID, "rate_limit": c.RateLimit})
}

// AccountsGetCmd is `sfctl accounts get`.
type AccountsGetCmd struct {
	ID string `arg:"" help:"Account id."`
}

// Run shows the account.
func (c *AccountsGetCmd) Run(a *app) error {
	ctx := a.ctx
	return a.callPrint(ctx, http.MethodGet, accountPath(c.ID), nil)
}

// AccountsUpdateCmd is `sfctl accounts update`.
type AccountsUpdateCmd struct {
	ID        string `arg:"" help:"Account id."`
	RateLimit int    `name:"rate-limit" required:"" help:"Ingress limit in events/s (0: the ingest default)."`
}

// Run changes the rate limit.
func (c *AccountsUpdateCmd) Run(a *app) error {
	ctx := a.ctx
	return a.callPrint(ctx, http.MethodPatch, accountPath(c.ID), map[string]any{"rate_limit": c.RateLimit})
}

// AccountsDeleteCmd is `sfctl accounts delete`.
type AccountsDeleteCmd struct {
	ID          string        `arg:"" help:"Account id."`
	Wait        bool          `name:"wait" help:"Wait until the deletion is complete, then show the account."`
	WaitTimeout time.Duration `name:"wait-timeout" default:"5m" help:"Bound on --wait."`
	Poll        time.Duration `name:"poll" default:"500ms" help:"Polling interval of --wait."`
}

// Run starts the deletion and, with --wait, polls until it is complete.
func (c *AccountsDeleteCmd) Run(a *app) error {
	ctx := a.ctx
	cl, err := a.admin()
	if err != nil {
		return err
	}
	raw, err := cl.call(ctx, http.MethodDelete, accountPath(c.ID), nil)
	if err != nil {
		return err
	}
	if !c.Wait {
		return a.print(raw)
	}
	if c.Poll <= 0 {
		return errors.New("--poll must be positive")
	}
	wctx, cancel := context.WithTimeout(ctx, c.WaitTimeout)
	defer cancel()
	t := time.NewTicker(c.Poll)
	defer t.Stop()
	for {
		raw, err := cl.call(wctx, http.MethodGet, accountPath(c.ID), nil)
		if err != nil {
			return err
		}
		var acc struct {
			Status   string `json:"status"`
			Deletion *struct {
				Step string `json:"step"`
			} `json:"deletion"`
		}
		if err := json.Unmarshal(raw, &acc); err != nil {
			return fmt.Errorf("decode account: %w", err)
		}
		if acc.Status == "deleted" {
			return a.print(raw)
		}
		select {
		case <-wctx.Done():
			step := "?"
			if acc.Deletion != nil {
				step = acc.Deletion.Step
			}
			return fmt.Errorf("account %s still %s (last step %s) after %v: %w", c.ID, acc.Status, step, c.WaitTimeout, context.Cause(wctx))
		case <-t.C:
		}
	}
}

// AccountsSuspendCmd is `sfctl accounts suspend`.
type AccountsSuspendCmd struct {
	ID string `arg:"" help:"Account id."`
}

// Run suspends the account.
func (c *AccountsSuspendCmd) Run(a *app) error {
	ctx := a.ctx
	return a.callPrint(ctx, http.MethodPost, accountPath(c.ID, "suspend"), nil)
}

// AccountsRestoreCmd is `sfctl accounts restore`.
type AccountsRestoreCmd struct {
	ID string `arg:"" help:"Account id."`
}

// Run restores the account.
func (c *AccountsRestoreCmd) Run(a *app) error {
	ctx := a.ctx
	return a.callPrint(ctx, http.MethodPost, accountPath(c.ID, "restore"), nil)
}

// AccountsTriggerCmd is `sfctl accounts trigger`.
type AccountsTriggerCmd struct {
	ID      string `arg:"" help:"Account id."`
	Name    string `arg:"" help:"Trigger name."`
	Event   string `name:"event" required:"" help:"Name of the tracked event that fires it."`
	Channel string `name:"channel" required:"" enum:"webhook,email" help:"webhook or email."`
	URL     string `name:"url" required:"" help:"Receiver: an http(s) URL for webhook, mailto:address for email."`
}

// Run creates or replaces the trigger.
func (c *AccountsTriggerCmd) Run(a *app) error {
	ctx := a.ctx
	return a.callPrint(ctx, http.MethodPut, accountPath(c.ID, "triggers", c.Name),
		map[string]any{"event": c.Event, "channel": c.Channel, "url": c.URL})
}

// AccountsTriggersCmd is `sfctl accounts triggers`.
type AccountsTriggersCmd struct {
	ID string `arg:"" help:"Account id."`
}

// Run lists the triggers.
func (c *AccountsTriggersCmd) Run(a *app) error {
	ctx := a.ctx
	return a.callPrint(ctx, http.MethodGet, accountPath(c.ID, "triggers"), nil)
}

// DLQCmd is `sfctl dlq`: a thin client of the dead-letter endpoints.
type DLQCmd struct {
	List   DLQListCmd   `cmd:"" help:"List dead letters."`
	Show   DLQShowCmd   `cmd:"" help:"Show one dead letter."`
	Replay DLQReplayCmd `cmd:"" help:"Replay dead letters (by id or filter) to their original subject."`
	Drop   DLQDropCmd   `cmd:"" help:"Drop dead letters (by id or filter)."`
}

// DLQFilter selects dead letters.
type DLQFilter struct {
	Shard   int    `name:"shard" default:"-1" help:"Only this shard."`
	Account string `name:"account" help:"Only this account."`
	Stage   string `name:"stage" help:"Only this stage (processor, sender...)."`
	Reason  string `name:"reason" help:"Only this error class (transient, permanent, max_deliver...)."`
	Since   string `name:"since" help:"Only from this time on: RFC 3339, or a duration ago (1h)."`
	Until   string `name:"until" help:"Only up to this time: RFC 3339, or a duration ago."`
	Limit   int    `name:"limit" help:"At most this many (0: the server's default)."`
}

// parseWhen accepts an RFC 3339 time or a duration before now.
func parseWhen(flag, s string, now time.Time) (string, error) {
	if s == "" {
		return "", nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC().Format(time.RFC3339Nano), nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d).UTC().Format(time.RFC3339Nano), nil
	}
	return "", fmt.Errorf("--%s %q: want an RFC 3339 time (2006-01-02T15:04:05Z) or a duration ago (90m)", flag, s)
}

// dlqRequest is the body of the replay and drop endpoints.
type dlqRequest struct {
	IDs     []string `json:"ids,omitempty"`
	Shard   *int     `json:"shard,omitempty"`
	Account string   `json:"account,omitempty"`
	Stage   string   `json:"stage,omitempty"`
	Reason  string   `json:"reason,omitempty"`
	Since   string   `json:"since,omitempty"`
	Until   string   `json:"until,omitempty"`
	Limit   int      `json:"limit,omitempty"`
	DryRun  bool     `json:"dry_run"`
}

func (f DLQFilter) request(now time.Time) (dlqRequest, error) {
	if f.Limit < 0 {
		return dlqRequest{}, fmt.Errorf("--limit %d is negative", f.Limit)
	}
	r := dlqRequest{Account: f.Account, Stage: f.Stage, Reason: f.Reason, Limit: f.Limit}
	if f.Shard >= 0 {
		shard := f.Shard
		r.Shard = &shard
	}
	var err error
	if r.Since, err = parseWhen("since", f.Since, now); err != nil {
		return r, err
	}
	if r.Until, err = parseWhen("until", f.Until, now); err != nil {
		return r, err
	}
	return r, nil
}

func (r dlqRequest) empty() bool {
	return len(r.IDs) == 0 && r.Shard == nil && r.Account == "" && r.Stage == "" && r.Reason == "" && r.Since == "" && r.Until == ""
}

// query is the filter as query parameters of the list endpoint.
func (r dlqRequest) query() url.Values {
	q := url.Values{}
	if r.Shard != nil {
		q.Set("shard", strconv.Itoa(*r.Shard))
	}
	if r.Limit > 0 {
		q.Set("limit", strconv.Itoa(r.Limit))
	}
	for k, v := range map[string]string{"account": r.Account, "stage": r.Stage, "reason": r.Reason, "since": r.Since, "until": r.Until} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}

// DLQListCmd is `sfctl dlq list`.
type DLQListCmd struct {
	DLQFilter      `embed:""`
	IncludeDropped bool `name:"include-dropped" help:"List dropped dead letters too."`
}

// Run lists the dead letters that match.
func (c *DLQListCmd) Run(a *app) error {
	ctx := a.ctx
	r, err := c.request(time.Now())
	if err != nil {
		return err
	}
	q := r.query()
	if c.IncludeDropped {
		q.Set("include_dropped", "true")
	}
	path := "/v1/deadletters"
	if q := q.Encode(); q != "" {
		path += "?" + q
	}
	return a.callPrint(ctx, http.MethodGet, path, nil)
}

// DLQShowCmd is `sfctl dlq show`.
type DLQShowCmd struct {
	ID string `arg:"" help:"Dead letter id (<stream>:<sequence>)."`
}

// Run shows the dead letter.
func (c *DLQShowCmd) Run(a *app) error {
	ctx := a.ctx
	return a.callPrint(ctx, http.MethodGet, "/v1/deadletters/"+url.PathEscape(c.ID), nil)
}

// DLQAction is the common part of replay and drop.
type DLQAction struct {
	IDs       []string `arg:"" optional:"" help:"Dead letter ids; or select by filter."`
	DLQFilter `embed:""`
	DryRun    bool `name:"dry-run" help:"Show what would be done; do nothing."`
}

// body is the request body of replay or drop.
func (c *DLQAction) body(verb string, now time.Time) (dlqRequest, error) {
	r, err := c.request(now)
	if err != nil {
		return r, err
	}
	r.IDs, r.DryRun = c.IDs, c.DryRun
	if r.empty() {
		// The server refuses it too: acting on every dead letter at once
		// is never what an operator means.
		return r, fmt.Errorf("dlq %s: give dead letter ids or a filter (--shard, --account, --stage, --reason, --since, --until)", verb)
	}
	return r, nil
}

func (c *DLQAction) run(a *app, verb string) error {
	r, err := c.body(verb, time.Now())
	if err != nil {
		return err
	}
	return a.callPrint(a.ctx, http.MethodPost, "/v1/deadletters/"+verb, r)
}

// DLQReplayCmd is `sfctl dlq replay`.
type DLQReplayCmd struct {
	DLQAction `embed:""`
}

// Run replays.
func (c *DLQReplayCmd) Run(a *app) error { return c.run(a, "replay") }

// DLQDropCmd is `sfctl dlq drop`.
type DLQDropCmd struct {
	DLQAction `embed:""`
}

// Run drops.
func (c *DLQDropCmd) Run(a *app) error { return c.run(a, "drop") }
