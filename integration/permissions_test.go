package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shardflow/shardflow/integration/harness"
	"github.com/shardflow/shardflow/streams"
)

// TestPermissions (T17 of the reliability plan) runs the least-privilege
// configuration `sfctl nats-config` generates — the single-node variant,
// NKey users, one per service — and checks, user by user and from the
// generated permission table (manifest.json):
//
//   - every operation the service's code performs works: publishing its
//     subjects with a JetStream ack, pulling its consumers through the real
//     consumer runtime (ack, dead-letter, defer, park), watching and reading
//     the directory, purging (accounts only), getting and deleting by
//     sequence, provisioning (the provisioner);
//   - everything else is refused, and each refusal reaches the connection's
//     error handler as a permissions violation, not just as a timeout:
//     publishing outside its subjects, purging (anyone but accounts),
//     deleting a stream (everyone, the provisioner included), creating or
//     updating streams and consumers (anyone but the provisioner), pulling
//     another stage's consumer, reading messages by sequence, subscribing to
//     another service's inbox or to _INBOX.>; and no refused call changed
//     any stream;
//   - the real ingest binary, given the ingest user's NKey and inbox
//     prefix, takes a POST /v1/track into INBOUND_n, and a publish the
//     permissions refuse (an account on a shard the NATS config was not
//     generated for) shows in its shardflow_nats_permission_violations_total.
func TestPermissions(t *testing.T) {
	lp := startLeastPrivilege(t)
	g, srv, url, topo, conns := lp.g, lp.srv, lp.url, lp.topo, lp.conns
	users := natsUsers
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	// An unauthenticated client gets nothing (no no_auth_user).
	if nc, err := nats.Connect(url, nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("a client without credentials was let in (no_auth_user?)")
	}

	t.Run("provisioner creates the topology", func(t *testing.T) {
		p := conns["provisioner"]
		rep, err := streams.Provision(ctx, p.js, topo, nil)
		if err != nil {
			t.Fatalf("provision as the provisioner: %v", err)
		}
		if n := rep.Count(streams.ActionCreated); n != len(topo.StreamNames())+topo.Shards*len(topo.Consumers) {
			t.Fatalf("provision created %d streams and consumers:\n%s", n, rep)
		}
		rep, err = streams.Provision(ctx, p.js, topo, &streams.ProvisionOptions{DryRun: true})
		if err != nil || rep.Changed() || rep.Count(streams.ActionDrift) > 0 {
			t.Fatalf("second provision (dry run): %v\n%s", err, rep)
		}
		p.noViolations(t)
	})

	t.Run("accounts writes and reads the directory", func(t *testing.T) {
		a := conns["accounts"]
		if err := streams.CheckLimits(ctx, a.js, topo, streams.KindAccounts, streams.KindInbound, streams.KindOutbound); err != nil {
			t.Fatal(err)
		}
		kv, err := streams.DirectoryKV(ctx, a.js)
		if err != nil {
			t.Fatal(err)
		}
		for _, acct := range []streams.Account{
			{ID: "acme", Shard: 1, Status: streams.StatusActive, Generation: 1, WriteKey: "wk-acme"},
			{ID: "sleepy", Shard: 0, Status: streams.StatusSuspended, Generation: 1, WriteKey: "wk-sleepy"},
		} {
			if err := streams.PutAccount(ctx, kv, acct); err != nil {
				t.Fatal(err)
			}
		}
		e, err := kv.Get(ctx, "acme") // a direct get
		if err != nil || !strings.Contains(string(e.Value()), `"wk-acme"`) {
			t.Fatalf("get acme: %v", err)
		}
		pub := publisher(t, a.js, topo)
		for shard := range topo.Shards {
			publish(t, ctx, pub, streams.KindAccounts, shard, "acme", "created", "created-"+strconv.Itoa(shard))
		}
		a.noViolations(t)
	})

	t.Run("ingest publishes inbound and watches the directory", func(t *testing.T) {
		in := conns["ingest"]
		if err := streams.CheckLimits(ctx, in.js, topo, streams.KindInbound); err != nil {
			t.Fatal(err)
		}
		dir, err := streams.OpenDirectory(ctx, in.js, quiet)
		if err != nil {
			t.Fatalf("watch the directory as ingest: %v", err)
		}
		if a, ok := dir.Lookup("acme"); !ok || a.WriteKey != "wk-acme" {
			t.Fatalf("directory: acme = %+v, %v", a, ok)
		}
		dir.Close() // deletes its ordered consumer: allowed too
		pub := publisher(t, in.js, topo)
		for shard := range topo.Shards {
			publish(t, ctx, pub, streams.KindInbound, shard, "acme", "track", "in-"+strconv.Itoa(shard))
		}
		// Shard 0: the processor's inputs, and one atomic batch (/v1/batch).
		publish(t, ctx, pub, streams.KindInbound, 0, "acme", "poison", "poison")
		publish(t, ctx, pub, streams.KindInbound, 0, "acme", "later", "later")
		publish(t, ctx, pub, streams.KindInbound, 0, "sleepy", "track", "sleepy")
		var batch []streams.Message
		for i := range 3 {
			s, _ := streams.NewSubject(streams.KindInbound, 2, "acme", "track")
			batch = append(batch, streams.Message{Subject: s, ID: fmt.Sprintf("acme:1:batch-%d", i), Generation: 1, Data: []byte(`{}`)})
		}
		if err := pub.PublishBatch(ctx, batch); err != nil {
			t.Fatalf("atomic batch as ingest: %v", err)
		}
		in.noViolations(t)
	})

	t.Run("processor pulls INBOUND and writes outbound, dead letters, held and deferred copies", func(t *testing.T) {
		p := conns["processor"]
		if err := streams.CheckLimits(ctx, p.js, topo, streams.KindInbound, streams.KindOutbound, streams.KindDeadLetter); err != nil {
			t.Fatal(err)
		}
		dir, err := streams.OpenDirectory(ctx, p.js, quiet)
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		pub := publisher(t, p.js, topo)
		var back atomic.Bool // the deferred message came back
		st := runStage(t, ctx, p.js, topo, streams.StageProcessor, 0, dir, func(ctx context.Context, m *streams.Msg) streams.Outcome {
			switch m.Subject.Type {
			case "poison":
				return streams.DeadLetter(streams.ClassPermanent, errors.New("poison"))
			case "later":
				if m.Deferrals == 0 {
					return streams.Defer(time.Second, "test")
				}
				back.Store(true)
			}
			s, _ := streams.NewSubject(streams.KindOutbound, m.Subject.Shard, m.Subject.Account, "webhook")
			if _, err := pub.Publish(ctx, streams.Message{Subject: s, ID: "out:" + m.ID, Generation: m.Generation, Data: m.Data}); err != nil {
				return streams.Retry(err)
			}
			return streams.Ack()
		}, func(s streams.Stats) bool {
			return back.Load() && s.Acked >= 2 && s.DeadLettered >= 1 && s.Deferred >= 1 && s.Dropped >= 1
		})
		t.Logf("processor shard 0: %+v", st)
		// Shards 1..3: its consumer there, pulled and double-acked directly.
		for shard := 1; shard < topo.Shards; shard++ {
			pullOne(t, ctx, p.js, streams.StreamName(streams.KindInbound, shard), streams.StageProcessor)
		}
		// The sender's inputs on shard 0.
		for _, m := range [][2]string{{"acme", "poison"}, {"acme", "later"}, {"sleepy", "webhook"}} {
			publish(t, ctx, pub, streams.KindOutbound, 0, m[0], m[1], "o-"+m[0]+"-"+m[1])
		}
		p.noViolations(t)
		wantSubjects(t, conns["accounts"], "INBOUND_0", "inbound.0.sleepy.held.track")
		wantSubjects(t, conns["accounts"], "DEADLETTER_0", "deadletter.0.acme.processor")
	})

	t.Run("sender pulls OUTBOUND and writes dead letters, held and deferred copies", func(t *testing.T) {
		s := conns["sender"]
		if err := streams.CheckLimits(ctx, s.js, topo, streams.KindOutbound, streams.KindDeadLetter); err != nil {
			t.Fatal(err)
		}
		dir, err := streams.OpenDirectory(ctx, s.js, quiet)
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		var back atomic.Bool
		st := runStage(t, ctx, s.js, topo, streams.StageSender, 0, dir, func(ctx context.Context, m *streams.Msg) streams.Outcome {
			switch m.Subject.Type {
			case "poison":
				return streams.DeadLetter(streams.ClassReceiver4xx, errors.New("410 from the receiver"))
			case "later":
				if m.Deferrals == 0 {
					return streams.Defer(time.Second, "breaker open")
				}
				back.Store(true)
			}
			return streams.Ack()
		}, func(s streams.Stats) bool {
			return back.Load() && s.Acked >= 2 && s.DeadLettered >= 1 && s.Deferred >= 1 && s.Dropped >= 1
		})
		t.Logf("sender shard 0: %+v", st)
		s.noViolations(t)
		wantSubjects(t, conns["accounts"], "OUTBOUND_0", "outbound.0.sleepy.held.webhook")
		wantSubjects(t, conns["accounts"], "DEADLETTER_0", "deadletter.0.acme.sender")
	})

	t.Run("stages announce braked accounts and ingest hears them", func(t *testing.T) {
		w, err := streams.WatchBrakes(conns["ingest"].nc, quiet)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if err := conns["ingest"].nc.Flush(); err != nil { // the subscription is in place
			t.Fatal(err)
		}
		for _, stage := range []string{"processor", "sender"} {
			for shard := range topo.Shards {
				acct := fmt.Sprintf("braked-%s-%d", stage, shard)
				data, _ := json.Marshal(streams.BrakeAdvisory{Stage: stage, Shard: shard, Account: acct, Braked: true, Rate: 200, TTL: 60_000})
				// The subject the runtime announces on (streams.Brake.Announce).
				if err := conns[stage].nc.Publish(streams.BrakeSubject(shard, acct), data); err != nil {
					t.Fatal(err)
				}
				harness.Eventually(t, 10*time.Second, func() error {
					if _, ok := w.Braked(acct); !ok {
						return fmt.Errorf("ingest did not hear %s announce %s braked on shard %d", stage, acct, shard)
					}
					return nil
				})
			}
			conns[stage].noViolations(t)
		}
		conns["ingest"].noViolations(t)
	})

	t.Run("deadletter indexes, sweeps, and gets and deletes by sequence", func(t *testing.T) {
		d := conns["deadletter"]
		if err := streams.CheckLimits(ctx, d.js, topo, streams.KindInbound, streams.KindOutbound, streams.KindDeadLetter); err != nil {
			t.Fatal(err)
		}
		adv, err := d.nc.QueueSubscribeSync(streams.MaxDeliverAdvisorySubject, "shardflow-deadletter-sweeper-0_1_2_3")
		if err != nil {
			t.Fatal(err)
		}
		if err := d.nc.FlushTimeout(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		defer adv.Unsubscribe()
		for shard := range topo.Shards {
			for _, c := range []string{streams.StageProcessor, streams.StageSender} {
				kind := streams.KindInbound
				if c == streams.StageSender {
					kind = streams.KindOutbound
				}
				if _, err := d.js.Consumer(ctx, streams.StreamName(kind, shard), c); err != nil {
					t.Fatalf("ack floor of %s on shard %d: %v", c, shard, err)
				}
			}
		}
		pullOne(t, ctx, d.js, "DEADLETTER_0", streams.StageIndexer)
		// What the sweeper does with a max-delivered message: get it by
		// sequence, store its dead letter, delete it from the stage stream.
		// (The processor pulled INBOUND_3 empty: publish one to sweep.)
		publish(t, ctx, publisher(t, conns["ingest"].js, topo), streams.KindInbound, 3, "acme", "track", "crashloop")
		st, err := d.js.Stream(ctx, "INBOUND_3")
		if err != nil {
			t.Fatal(err)
		}
		found, err := streams.DeadLetterBySequence(ctx, d.js, streams.MaxDeliverAdvisory{Stream: "INBOUND_3", Consumer: streams.StageProcessor, StreamSeq: st.CachedInfo().State.LastSeq, Deliveries: 5}, streams.ClassMaxDeliver, errors.New("test"))
		if err != nil || !found {
			t.Fatalf("dead-letter by sequence as deadletter: found %v, %v", found, err)
		}
		wantSubjects(t, conns["accounts"], "DEADLETTER_3", "deadletter.3.acme.processor")
		d.noViolations(t)
	})

	t.Run("a declared consumer (auditsink) pulls ACCOUNTS and writes its dead letters", func(t *testing.T) {
		a := conns["auditsink"]
		if err := streams.CheckLimits(ctx, a.js, topo, streams.KindAccounts, streams.KindDeadLetter); err != nil {
			t.Fatal(err)
		}
		publish(t, ctx, publisher(t, conns["accounts"].js, topo), streams.KindAccounts, 0, "acme", "garbled", "garbled")
		st := runStage(t, ctx, a.js, topo, "auditsink", 0, nil, func(ctx context.Context, m *streams.Msg) streams.Outcome {
			if m.Subject.Type == "garbled" {
				return streams.DeadLetter(streams.ClassUndecodable, errors.New("garbled"))
			}
			return streams.Ack()
		}, func(s streams.Stats) bool { return s.Acked >= 1 && s.DeadLettered >= 1 })
		t.Logf("auditsink shard 0: %+v", st)
		for shard := 1; shard < topo.Shards; shard++ {
			pullOne(t, ctx, a.js, streams.StreamName(streams.KindAccounts, shard), "auditsink")
		}
		wantSubjects(t, conns["accounts"], "DEADLETTER_0", "deadletter.0.acme.auditsink")
		a.noViolations(t)
	})

	t.Run("accounts purges, releases held messages, replays, reads consumers", func(t *testing.T) {
		a := conns["accounts"]
		for _, kind := range []streams.Kind{streams.KindInbound, streams.KindOutbound} {
			n, err := streams.ReleaseHeld(ctx, a.js, kind, 0, "sleepy")
			if err != nil || n != 1 {
				t.Fatalf("release held %s messages of sleepy: %d, %v", kind, n, err)
			}
		}
		left, err := streams.CountSubject(ctx, a.js, "INBOUND_0", streams.HeldFilter(streams.KindInbound, 0, "sleepy"))
		if err != nil || left != 0 {
			t.Fatalf("held left: %d, %v", left, err)
		}
		// A dead letter replayed on its original subject.
		pub := publisher(t, a.js, topo)
		publish(t, ctx, pub, streams.KindOutbound, 2, "acme", "webhook", "replayed")
		pullOne(t, ctx, a.js, "ACCOUNTS_0", streams.StageAccounts)
		for shard := range topo.Shards {
			for _, c := range topo.Consumers {
				if _, err := a.js.Consumer(ctx, streams.StreamName(c.Kind, shard), c.Name); err != nil {
					t.Fatalf("status: consumer %s on shard %d: %v", c.Name, shard, err)
				}
			}
			for _, kind := range []streams.Kind{streams.KindInbound, streams.KindOutbound, streams.KindDeadLetter} {
				if _, err := streams.PurgeSubject(ctx, a.nc, streams.StreamName(kind, shard), streams.AccountFilter(kind, shard, "sleepy")); err != nil {
					t.Fatalf("purge as accounts: %v", err)
				}
			}
		}
		a.noViolations(t)
	})

	// Everything else is refused, visibly.
	before := streamStates(t, srv)
	universe := []string{
		"inbound.0.acme.track", "inbound.4.acme.track", "inbound.0.acme.held.track", "inbound.0.acme.deferred.7",
		"outbound.0.acme.webhook", "outbound.0.acme.held.webhook", "outbound.0.acme.deferred.7",
		"accounts.0.acme.created", "deadletter.0.acme.processor", "deadletter.0.acme.sender",
		"deadletter.0.acme.indexer", "deadletter.0.acme.accounts", "$KV.shardflow_accounts.evil", "elsewhere.entirely",
		"shardflow.brake.0.acme", // only a stage may brake an account: ingest cannot be made to slow one
	}
	for _, name := range users {
		t.Run("refused/"+name, func(t *testing.T) {
			u := conns[name]
			perms := g.Manifest.Users[name]
			var ops []refusal
			for _, subj := range universe {
				if permitted(perms, subj) {
					continue
				}
				ops = append(ops, refusal{"publish " + subj, subj, func(ctx context.Context) error {
					_, err := u.js.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: []byte("x"), Header: nats.Header{jetstream.MsgIDHeader: []string{"evil-" + subj}}})
					return err
				}})
			}
			if name != "accounts" {
				ops = append(ops, refusal{"purge", "$JS.API.STREAM.PURGE.INBOUND_0", func(ctx context.Context) error {
					_, err := streams.PurgeSubject(ctx, u.nc, "INBOUND_0", "inbound.0.acme.>")
					return err
				}})
			}
			for _, s := range []string{"INBOUND_0", "DEADLETTER_1", "KV_" + streams.DirectoryBucket} {
				ops = append(ops, refusal{"delete stream " + s, "$JS.API.STREAM.DELETE." + s, func(ctx context.Context) error { return u.js.DeleteStream(ctx, s) }})
			}
			ops = append(ops, refusal{"create a stream outside the topology", "$JS.API.STREAM.CREATE.EVIL", func(ctx context.Context) error {
				_, err := u.js.CreateStream(ctx, jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}})
				return err
			}})
			ops = append(ops, refusal{"consumer on another's stream", "$JS.API.CONSUMER.CREATE.INBOUND_0.spy.inbound.0.>", func(ctx context.Context) error {
				_, err := u.js.CreateConsumer(ctx, "INBOUND_0", jetstream.ConsumerConfig{Durable: "spy", FilterSubject: "inbound.0.>"})
				return err
			}})
			if name != "provisioner" {
				ops = append(ops, refusal{"update a stream", "$JS.API.STREAM.UPDATE.OUTBOUND_1", func(ctx context.Context) error {
					_, err := u.js.UpdateStream(ctx, topo.StreamConfig(streams.KindOutbound, 1))
					return err
				}})
			}
			if name != "processor" {
				ops = append(ops, refusal{"pull the processor's consumer", "$JS.API.CONSUMER.MSG.NEXT.INBOUND_1.processor", func(ctx context.Context) error {
					_, err := u.nc.RequestWithContext(ctx, "$JS.API.CONSUMER.MSG.NEXT.INBOUND_1.processor", []byte(`{"batch":1,"no_wait":true}`))
					return err
				}})
			}
			if name != "accounts" && name != "deadletter" {
				ops = append(ops, refusal{"get a message by sequence", "$JS.API.STREAM.MSG.GET.INBOUND_1", func(ctx context.Context) error {
					_, err := u.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.INBOUND_1", []byte(`{"seq":1}`))
					return err
				}})
			}
			if kv := "$JS.API.STREAM.INFO.KV_" + streams.DirectoryBucket; !permitted(perms, kv) {
				ops = append(ops, refusal{"look the directory up", kv, func(ctx context.Context) error {
					_, err := u.nc.RequestWithContext(ctx, kv, nil)
					return err
				}})
			}
			if name != "accounts" {
				ops = append(ops, refusal{"write the directory", "$KV.shardflow_accounts.acme", func(ctx context.Context) error {
					_, err := u.js.Publish(ctx, "$KV.shardflow_accounts.acme", []byte(`{"id":"acme","status":"deleted"}`))
					return err
				}})
			}
			u.refuseAll(t, ops)

			// Subscribing to another service's inbox, or to every inbox.
			var subjects []string
			for _, other := range users {
				if other != name {
					subjects = append(subjects, "_INBOX_"+other+".>")
				}
			}
			subjects = append(subjects, "_INBOX.>", "inbound.0.>")
			for _, subj := range subjects {
				sub, err := u.nc.SubscribeSync(subj)
				if err != nil {
					t.Fatal(err)
				}
				u.waitViolation(t, "Subscription to "+strconv.Quote(subj))
				_ = sub.Unsubscribe()
			}
		})
	}
	if after := streamStates(t, srv); !equalStates(before, after) {
		t.Fatalf("refused calls changed streams:\nbefore %v\nafter  %v", before, after)
	}

	t.Run("the ingest binary with the ingest user", func(t *testing.T) {
		st := harness.AttachStack(t, topo, url, "")
		seed := g.Path(g.Manifest.Users["ingest"].SeedFile)
		ingest := st.Start("ingest",
			"SHARDFLOW_NATS_NKEY_FILE="+seed,
			"SHARDFLOW_NATS_INBOX_PREFIX="+g.Manifest.Users["ingest"].InboxPrefix)
		a := conns["accounts"]
		inbound1 := func() uint64 {
			n, err := streams.CountSubject(ctx, a.js, "INBOUND_1", streams.AccountFilter(streams.KindInbound, 1, "acme"))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		was := inbound1()
		code, body := st.Send("/v1/track", "wk-acme", []byte(`{"userId":"u1","event":"signed_up","messageId":"perm-1"}`))
		if code != 200 {
			t.Fatalf("POST /v1/track as acme: %d %s\n%s", code, body, ingest.Log())
		}
		if n := inbound1(); n != was+1 {
			t.Fatalf("INBOUND_1 holds %d messages of acme, want %d", n, was+1)
		}
		if v := violationsMetric(ingest.Metrics()); v != 0 {
			t.Fatalf("ingest counted %v permission violations on its normal path", v)
		}

		// A topology grown without regenerating the NATS config: an account
		// on shard 4, which this config's ingest user may not publish to.
		kv, err := streams.DirectoryKV(ctx, a.js)
		if err != nil {
			t.Fatal(err)
		}
		if err := streams.PutAccount(ctx, kv, streams.Account{ID: "future", Shard: 4, Status: streams.StatusActive, Generation: 1, WriteKey: "wk-future"}); err != nil {
			t.Fatal(err)
		}
		harness.Eventually(t, 10*time.Second, func() error {
			code, body = st.Send("/v1/track", "wk-future", []byte(`{"userId":"u1","event":"signed_up","messageId":"perm-2"}`))
			if code == 401 {
				return fmt.Errorf("ingest does not know the account yet")
			}
			return nil
		})
		if code == 200 {
			t.Fatalf("a publish to inbound.4 was accepted: %s", body)
		}
		harness.Eventually(t, 10*time.Second, func() error {
			if v := violationsMetric(ingest.Metrics()); v < 1 {
				return fmt.Errorf("shardflow_nats_permission_violations_total is %v", v)
			}
			return nil
		})
		if len(ingest.LogLines(`Permissions Violation for Publish to \"inbound.4.future.track\"`)) == 0 && len(ingest.LogLines("inbound.4.future.track")) == 0 {
			t.Errorf("ingest did not log the violation:\n%s", ingest.Log())
		}
		t.Logf("refused publish: HTTP %d %s; metric %v", code, strings.TrimSpace(body), violationsMetric(ingest.Metrics()))
	})
}

// natsUsers are the users the generated config must hold: one per service,
// the provisioner, and one per declared consumer.
var natsUsers = []string{"ingest", "processor", "sender", "accounts", "deadletter", "provisioner", "auditsink"}

// auditsinkSpec is a consumer declared besides the platform's stages (the
// example consumer of services/auditsink): the generated config gives it a
// user of its own.
const auditsinkSpec = "auditsink:accounts:max_deliver=10"

// leastPrivilege is a server started from the generated single-node config
// and a connection per user.
type leastPrivilege struct {
	g     *harness.NATSConfigSet
	srv   *server.Server
	url   string
	topo  streams.Topology
	conns map[string]*userConn
}

func startLeastPrivilege(t *testing.T) *leastPrivilege {
	t.Helper()
	port, mon := harness.FreePort(t), harness.FreePort(t)
	g := harness.GenerateNATSConfig(t, func(string) []string {
		return []string{"--shards", "4", "--listen-host", "127.0.0.1", "--single-ports", fmt.Sprintf("%d:%d", port, mon), "--consumer", auditsinkSpec}
	})
	srv := harness.StartConfiguredServer(t, g.Path(g.Manifest.Single.Config), func(o *server.Options) { o.StoreDir = t.TempDir() })
	spec, err := streams.ParseConsumerSpec(auditsinkSpec)
	if err != nil {
		t.Fatal(err)
	}
	lp := &leastPrivilege{g: g, srv: srv, url: srv.ClientURL(), conns: map[string]*userConn{},
		topo: streams.Topology{Shards: 4, PlacementTags: g.PlacementTags(), Consumers: append(streams.DefaultConsumers(), spec)}.WithDefaults()}
	if g.Manifest.Shards != lp.topo.Shards || g.Manifest.MaxPayload != lp.topo.RequiredMaxPayload() {
		t.Fatalf("manifest: %d shards, max_payload %d; want %d and %d", g.Manifest.Shards, g.Manifest.MaxPayload, lp.topo.Shards, lp.topo.RequiredMaxPayload())
	}
	for _, u := range natsUsers {
		if _, ok := g.Manifest.Users[u]; !ok {
			t.Fatalf("the generated config has no user %s", u)
		}
	}
	if len(g.Manifest.Users) != len(natsUsers) {
		t.Fatalf("the generated config has users %v, want exactly %v", sortedKeys(g.Manifest.Users), natsUsers)
	}
	for _, u := range natsUsers {
		lp.conns[u] = connectUser(t, g, lp.url, u)
	}
	return lp
}

// serviceEnv is what a service process needs to connect as its user.
func (lp *leastPrivilege) serviceEnv(user string) []string {
	u := lp.g.Manifest.Users[user]
	return []string{"SHARDFLOW_NATS_NKEY_FILE=" + lp.g.Path(u.SeedFile), "SHARDFLOW_NATS_INBOX_PREFIX=" + u.InboxPrefix}
}

// TestPermissionsServices runs every service binary as its own
// least-privilege user against the generated config and drives the whole
// pipeline through them: an account created, an event tracked, processed
// and delivered to a webhook, the status snapshot read, the account
// deleted (the saga's purges, counts and consumer checks). No process may
// count a single permissions violation: a permission the code needs and
// the generated config lacks shows here.
func TestPermissionsServices(t *testing.T) {
	lp := startLeastPrivilege(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := streams.Provision(ctx, lp.conns["provisioner"].js, lp.topo, nil); err != nil {
		t.Fatalf("provision as the provisioner: %v", err)
	}
	dsn, _ := harness.Schema(t)
	st := harness.AttachStack(t, lp.topo, lp.url, dsn)
	procs := map[string]*harness.Proc{}
	for _, svc := range []string{"accounts", "ingest", "processor", "sender", "deadletter"} {
		procs[svc] = st.Start(svc, lp.serviceEnv(svc)...)
	}
	acct := st.CreateAccount("lp-acme")
	dir, err := streams.OpenDirectory(ctx, lp.conns["processor"].js, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	recv := harness.NewReceiver(t, func(id string) string { a, _ := dir.Lookup(id); return a.Secret })
	st.SetTrigger(acct.ID, "welcome", "Signed Up", recv.URL())
	if code, body := st.Send("/v1/batch", acct.WriteKey, harness.TrackBatch("Signed Up", "lp", 0, 20)); code != 200 {
		t.Fatalf("batch: %d %s", code, body)
	}
	harness.Eventually(t, 60*time.Second, func() error {
		if d, _, bad := recv.Stats(); d < 20 || bad > 0 {
			return fmt.Errorf("%d of 20 webhooks, %d bad signatures", d, bad)
		}
		return nil
	})
	var status map[string]any
	if code := st.Admin("GET", "/v1/status?sample=0", nil, &status); code != 200 {
		t.Fatalf("GET /v1/status as the accounts user: HTTP %d %v", code, status)
	}
	if code := st.Admin("DELETE", "/v1/accounts/"+acct.ID, nil, nil); code/100 != 2 {
		t.Fatalf("delete account: HTTP %d", code)
	}
	st.WaitStatus(acct.ID, "deleted", 60*time.Second)
	// Let the deadletter sweeper run its start-up sweep and the consumers
	// a few fetch rounds.
	time.Sleep(time.Second)
	for name, p := range procs {
		if v := violationsMetric(p.Metrics()); v != 0 {
			t.Errorf("%s counted %v permission violations:\n%s", name, v, strings.Join(p.LogLines("ermissions"), "\n"))
		}
		if lines := p.LogLines("ermissions violation"); len(lines) > 0 {
			t.Errorf("%s logged permission violations:\n%s", name, strings.Join(lines, "\n"))
		}
	}
}

// userConn is one service user's connection, recording the permissions
// violations its error handler sees.
type userConn struct {
	name string
	nc   *nats.Conn
	js   jetstream.JetStream

	mu         sync.Mutex
	violations []string
	changed    chan struct{}
}

func connectUser(t *testing.T, g *harness.NATSConfigSet, url, user string) *userConn {
	t.Helper()
	u := &userConn{name: user, changed: make(chan struct{}, 1)}
	opts := append(g.UserOptions(t, user, false),
		nats.MaxReconnects(-1),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				return
			}
			u.mu.Lock()
			u.violations = append(u.violations, err.Error())
			u.mu.Unlock()
			select {
			case u.changed <- struct{}{}:
			default:
			}
		}))
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	u.nc, u.js = nc, js
	return u
}

func (u *userConn) seen(substr string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, v := range u.violations {
		if strings.Contains(v, substr) {
			return true
		}
	}
	return false
}

func (u *userConn) waitViolation(t *testing.T, substr string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for !u.seen(substr) {
		select {
		case <-u.changed:
		case <-deadline:
			u.mu.Lock()
			defer u.mu.Unlock()
			t.Fatalf("%s: no permissions violation for %s reached the error handler; seen: %q", u.name, substr, u.violations)
		}
	}
}

func (u *userConn) noViolations(t *testing.T) {
	t.Helper()
	// Violations are asynchronous: a round trip makes sure any is in.
	if err := u.nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.violations) > 0 {
		t.Fatalf("%s needs permissions it lacks: %q", u.name, u.violations)
	}
}

// refusal is an operation a user must be refused, and the subject the
// violation names.
type refusal struct {
	what, subject string
	op            func(ctx context.Context) error
}

// refuseAll runs the operations at once (each only times out on the
// client), then requires an error from each and a violation naming its
// subject on the error handler.
func (u *userConn) refuseAll(t *testing.T, ops []refusal) {
	t.Helper()
	errs := make([]error, len(ops))
	var wg sync.WaitGroup
	for i, r := range ops {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			defer cancel()
			errs[i] = r.op(ctx)
		})
	}
	wg.Wait()
	for i, r := range ops {
		if errs[i] == nil {
			t.Errorf("%s: %s was allowed", u.name, r.what)
			continue
		}
		u.waitViolation(t, "Publish to "+strconv.Quote(r.subject))
	}
	t.Logf("%s: %d operations refused, each reported to the error handler", u.name, len(ops))
}

// permitted applies a user's publish permissions to a subject as the server
// does: allowed by a pattern and not denied by one.
func permitted(u harness.NATSUser, subject string) bool {
	match := func(patterns []string) bool {
		return slices.ContainsFunc(patterns, func(p string) bool { return subjectMatch(p, subject) })
	}
	return match(u.PublishAllow) && !match(u.PublishDeny)
}

// subjectMatch reports whether a NATS pattern matches a literal subject
// (whole-token wildcards: * one token, > one or more at the end).
func subjectMatch(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(p) == len(s)
}

func TestSubjectMatch(t *testing.T) {
	for _, c := range []struct {
		p, s string
		want bool
	}{
		{"inbound.0.*.*", "inbound.0.acme.track", true},
		{"inbound.0.*.*", "inbound.0.acme.held.track", false},
		{"inbound.0.*.*", "inbound.1.acme.track", false},
		{"$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.DELETE.X", true},
		{"$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.DELETE", false},
		{"a.>", "a.b.c", true},
	} {
		if got := subjectMatch(c.p, c.s); got != c.want {
			t.Errorf("subjectMatch(%q, %q) = %v", c.p, c.s, got)
		}
	}
}

func publisher(t *testing.T, js jetstream.JetStream, topo streams.Topology) *streams.Publisher {
	t.Helper()
	p, err := streams.NewPublisher(streams.PublisherConfig{JetStream: js, Topology: topo})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func publish(t *testing.T, ctx context.Context, p *streams.Publisher, kind streams.Kind, shard int, account, typ, key string) {
	t.Helper()
	s, err := streams.NewSubject(kind, shard, account, typ)
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Publish(ctx, streams.Message{Subject: s, ID: streams.MessageID(account, 1, key), Generation: 1, Data: []byte(`{"k":"` + key + `"}`)})
	if err != nil {
		t.Fatalf("publish %s: %v", s, err)
	}
	if want := streams.StreamName(kind, shard); res.Stream != want {
		t.Fatalf("publish %s: stored in %s, want %s", s, res.Stream, want)
	}
}

// pullOne pulls one message from a durable consumer and double-acks it.
func pullOne(t *testing.T, ctx context.Context, js jetstream.JetStream, stream, consumer string) {
	t.Helper()
	c, err := js.Consumer(ctx, stream, consumer)
	if err != nil {
		t.Fatalf("bind %s/%s: %v", stream, consumer, err)
	}
	b, err := c.Fetch(1, jetstream.FetchMaxWait(3*time.Second))
	if err != nil {
		t.Fatalf("fetch %s/%s: %v", stream, consumer, err)
	}
	n := 0
	for m := range b.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatalf("ack on %s/%s: %v", stream, consumer, err)
		}
		n++
	}
	if b.Error() != nil || n != 1 {
		t.Fatalf("fetch %s/%s: %d messages, %v", stream, consumer, n, b.Error())
	}
}

// runStage runs the real consumer runtime on one shard until done(stats).
func runStage(t *testing.T, ctx context.Context, js jetstream.JetStream, topo streams.Topology, stage string, shard int, gate streams.AccountGate, h streams.Handler, done func(streams.Stats) bool) streams.Stats {
	t.Helper()
	c, err := streams.NewConsumer(ctx, streams.ConsumerConfig{
		JetStream: js, Topology: topo, Stage: stage, Shard: shard, Handler: h, Gate: gate,
		FetchWait: 200 * time.Millisecond, StopTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("%s consumer on shard %d: %v", stage, shard, err)
	}
	rctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- c.Run(rctx) }()
	defer func() {
		stop()
		if err := <-ran; err != nil {
			t.Errorf("%s consumer: %v", stage, err)
		}
	}()
	harness.Eventually(t, 30*time.Second, func() error {
		if s := c.Stats(); !done(s) {
			return fmt.Errorf("%s consumer stats %+v", stage, s)
		}
		return nil
	})
	return c.Stats()
}

// wantSubjects requires a stored message on each subject of a stream
// (counted as the accounts user, which may read every stream's state).
func wantSubjects(t *testing.T, a *userConn, stream string, subjects ...string) {
	t.Helper()
	for _, s := range subjects {
		n, err := streams.CountSubject(context.Background(), a.js, stream, s)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Errorf("%s holds no message on %s", stream, s)
		}
	}
}

// streamStates is every SHARDFLOW stream's state (the directory bucket's
// consumer count left out: watches come and go).
func streamStates(t *testing.T, srv *server.Server) map[string]string {
	t.Helper()
	jsz, err := srv.Jsz(&server.JSzOptions{Account: "SHARDFLOW", Streams: true, Consumer: true})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, ad := range jsz.AccountDetails {
		for _, sd := range ad.Streams {
			var cons []string
			for _, c := range sd.Consumer {
				cons = append(cons, c.Name)
			}
			sort.Strings(cons)
			if strings.HasPrefix(sd.Name, "KV_") {
				cons = nil
			}
			out[sd.Name] = fmt.Sprintf("msgs=%d first=%d last=%d consumers=%v", sd.State.Msgs, sd.State.FirstSeq, sd.State.LastSeq, cons)
		}
	}
	if len(out) == 0 {
		t.Fatal("no SHARDFLOW streams in the server's Jsz")
	}
	return out
}

func equalStates(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

var violationsRe = regexp.MustCompile(`(?m)^shardflow_nats_permission_violations_total(\{[^}]*\})? ([0-9.e+]+)$`)

// violationsMetric sums shardflow_nats_permission_violations_total in a
// Prometheus text exposition (0 when absent).
func violationsMetric(text string) float64 {
	var sum float64
	for _, m := range violationsRe.FindAllStringSubmatch(text, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		sum += v
	}
	return sum
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
