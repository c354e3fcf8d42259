package natsconf

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/shardflow/shardflow/streams"
)

// The NATS users, one per service. Their names are also the services'
// inbox prefixes (_INBOX_<name>) and the file names of their NKey seeds.
const (
	Ingest      = "ingest"
	Processor   = "processor"
	Sender      = "sender"
	Accounts    = "accounts"
	DeadLetter  = "deadletter"
	Provisioner = "provisioner" // sfctl provision: a deploy-time job
)

// Services lists the built-in users of the SHARDFLOW account, in config
// order. Declared consumers (Config.Consumers) get a user each too.
var Services = []string{Ingest, Processor, Sender, Accounts, DeadLetter, Provisioner}

// builtinStages are the consumers of the built-in services.
var builtinStages = []string{streams.StageProcessor, streams.StageSender, streams.StageIndexer, streams.StageAccounts}

// Account names.
const (
	// AccountName is the JetStream account every service lives in.
	AccountName = "SHARDFLOW"
	// SystemAccount is the system account (server events, `nats server`
	// operator commands such as raft peer-remove).
	SystemAccount = "SYS"
	// SystemUser is the operator user of the system account.
	SystemUser = "sys"
)

// InboxPrefix is the inbox prefix a service must use
// (SHARDFLOW_NATS_INBOX_PREFIX): the only subjects it may subscribe to,
// besides advisories for the deadletter service, are below it.
func InboxPrefix(service string) string { return "_INBOX_" + service }

// Perms are a user's subject permissions.
type Perms struct {
	PublishAllow   []string `json:"publish_allow"`
	PublishDeny    []string `json:"publish_deny"`
	SubscribeAllow []string `json:"subscribe_allow"`
}

// Subjects denied to every user (deny wins over allow, so no later widening
// of an allow list can give these rights back).
var (
	denyDelete = []string{"$JS.API.STREAM.DELETE.>"}
	denyPurge  = []string{"$JS.API.STREAM.PURGE.>"}
)

// Permissions returns the permissions of a service's user for a topology
// of shards shards with the default consumers: publish allow and deny, and
// subscribe allow (no user has a subscribe deny list).
func Permissions(service string, shards int) (pub, sub, pubDeny []string, err error) {
	p, err := ServicePermissions(streams.Topology{Shards: shards}.WithDefaults(), service)
	return p.PublishAllow, p.SubscribeAllow, p.PublishDeny, err
}

// Users lists the users of a topology: the built-in services, then one per
// consumer the topology declares besides the built-in stages.
func Users(t streams.Topology) []string {
	users := slices.Clone(Services)
	for _, c := range t.WithDefaults().Consumers {
		if !slices.Contains(builtinStages, c.Name) && !slices.Contains(users, c.Name) {
			users = append(users, c.Name)
		}
	}
	return users
}

// Table returns the permissions of every user of a topology.
func Table(t streams.Topology) (map[string]Perms, error) {
	out := map[string]Perms{}
	for _, s := range Users(t) {
		p, err := ServicePermissions(t, s)
		if err != nil {
			return nil, err
		}
		out[s] = p
	}
	return out, nil
}

// ServicePermissions returns the permissions of a service's user: exactly
// the subjects its code publishes to and the JetStream API calls it makes,
// per shard of t.
func ServicePermissions(t streams.Topology, service string) (Perms, error) {
	t = t.WithDefaults()
	if err := t.Validate(); err != nil {
		return Perms{}, err
	}
	var b builder
	b.t = t
	b.sub(InboxPrefix(service) + ".>")
	switch service {
	case Ingest:
		// Start-up limit check (streams.CheckLimits: STREAM.INFO), the
		// directory watch, and publishing inbound data with a JetStream ack
		// (the ack comes back on the inbox). Exactly four tokens, so ingest
		// cannot write the held or deferred copies of the stage.
		b.streamInfo(streams.KindInbound)
		b.kvWatch()
		b.shardSubjects(streams.KindInbound, "*.*")
		// The stages' brake advisories (streams.WatchBrakes).
		b.sub(streams.BrakeSubjectAll)
	case Processor:
		if err := b.stage(streams.StageProcessor); err != nil {
			return Perms{}, err
		}
		b.streamInfo(streams.KindInbound, streams.KindOutbound, streams.KindDeadLetter)
		b.kvWatch()
		b.shardSubjects(streams.KindOutbound, "*.*")
		b.deadLetters(streams.StageProcessor)
		b.brakeAdvisories()
		// The parked copy of a suspended account's message and the
		// schedule of a deferred one (streams.ConsumerConfig.Gate, Defer).
		b.shardSubjects(streams.KindInbound, "*.held.*")
		b.shardSubjects(streams.KindInbound, "*.deferred.*")
	case Sender:
		if err := b.stage(streams.StageSender); err != nil {
			return Perms{}, err
		}
		b.streamInfo(streams.KindOutbound, streams.KindDeadLetter)
		b.kvWatch()
		b.deadLetters(streams.StageSender)
		b.brakeAdvisories()
		b.shardSubjects(streams.KindOutbound, "*.held.*")
		b.shardSubjects(streams.KindOutbound, "*.deferred.*")
	case Accounts:
		if err := b.stage(streams.StageAccounts); err != nil {
			return Perms{}, err
		}
		// Limit check (accounts, inbound, outbound), the status snapshot
		// (every stream and stage consumer of a shard), the deletion
		// saga's counts and verification.
		b.streamInfo(streams.KindAccounts, streams.KindInbound, streams.KindOutbound, streams.KindDeadLetter)
		for _, c := range t.Consumers {
			b.consumerInfo(c)
		}
		// Lifecycle events, and its own stage's dead letters.
		b.shardSubjects(streams.KindAccounts, "*.*")
		b.deadLetters(streams.StageAccounts)
		// The deletion saga's filtered purges: the only user that may purge.
		b.api("STREAM.PURGE", streams.KindInbound, streams.KindOutbound, streams.KindDeadLetter)
		// Releasing a restored account's held messages (get by sequence,
		// republish on the original subject, delete the copy) and replaying
		// dead letters onto their original subjects.
		b.api("STREAM.MSG.GET", streams.KindInbound, streams.KindOutbound)
		b.api("STREAM.MSG.DELETE", streams.KindInbound, streams.KindOutbound)
		b.shardSubjects(streams.KindInbound, "*.*")
		b.shardSubjects(streams.KindOutbound, "*.*")
		// The directory: its writer (KV put is a JetStream publish) and a
		// reader by key (direct get).
		b.pub("$JS.API.STREAM.INFO.KV_" + streams.DirectoryBucket)
		b.pub("$JS.API.DIRECT.GET.KV_" + streams.DirectoryBucket + ".>")
		b.pub("$KV." + streams.DirectoryBucket + ".>")
	case DeadLetter:
		if err := b.stage(streams.StageIndexer); err != nil {
			return Perms{}, err
		}
		b.streamInfo(streams.KindInbound, streams.KindOutbound, streams.KindDeadLetter)
		// The sweeper: max-deliveries advisories (one subscription with a
		// queue group over all of them), the stage consumers' ack floors,
		// and get → dead-letter → delete by sequence on the stage streams.
		b.sub(streams.MaxDeliverAdvisorySubject)
		for _, c := range t.Consumers {
			if c.Kind == streams.KindInbound || c.Kind == streams.KindOutbound {
				b.consumerInfo(c)
				b.deadLetters(c.Name)
			}
		}
		b.api("STREAM.MSG.GET", streams.KindInbound, streams.KindOutbound)
		b.api("STREAM.MSG.DELETE", streams.KindInbound, streams.KindOutbound)
		b.deadLetters(streams.StageIndexer)
	case Provisioner:
		// streams.Provision: read, create and update every stream and
		// stage consumer of the topology and the directory bucket; the
		// bucket's creation reads the account info first. Nothing else: no
		// messages, no purge, no delete.
		b.pub("$JS.API.INFO")
		names := append(t.StreamNames(), "KV_"+streams.DirectoryBucket)
		for _, verb := range []string{"STREAM.INFO", "STREAM.CREATE", "STREAM.UPDATE"} {
			for _, n := range names {
				b.pub("$JS.API." + verb + "." + n)
			}
		}
		for _, c := range t.Consumers {
			b.consumerInfo(c)
			for shard := range t.Shards {
				// CONSUMER.CREATE.<stream>.<consumer>.<filter>: the filter
				// subject is part of the API subject (create and update).
				b.pub("$JS.API.CONSUMER.CREATE." + streams.StreamName(c.Kind, shard) + "." + c.Name + ".>")
			}
		}
	default:
		c, ok := t.Consumer(service)
		if !ok || slices.Contains(builtinStages, service) {
			return Perms{}, fmt.Errorf("natsconf: unknown service %q (one of %v, or a declared consumer)", service, Services)
		}
		// A declared consumer (Config.Consumers, e.g. the audit sink): its
		// own durable on every shard's stream of its kind, the start-up
		// limit check (its kind and dead letters), its dead letters. No
		// directory: the account gate of streams.Stage is off for it (the
		// directory holds write keys and webhook secrets), and no consumer
		// creation: the provisioner declares it.
		if !streams.SharedKind(c.Kind) {
			return Perms{}, fmt.Errorf("natsconf: consumer %s reads %s, a work-queue kind that belongs to one stage", c.Name, c.Kind)
		}
		if err := b.stage(c.Name); err != nil {
			return Perms{}, err
		}
		b.streamInfo(c.Kind, streams.KindDeadLetter)
		b.deadLetters(c.Name)
	}
	p := Perms{PublishAllow: b.pubs, SubscribeAllow: b.subs, PublishDeny: slices.Clone(denyDelete)}
	if service != Accounts {
		p.PublishDeny = append(p.PublishDeny, denyPurge...)
	}
	return p, nil
}

// builder collects a user's subjects, without repeats, in order.
type builder struct {
	t          streams.Topology
	pubs, subs []string
}

func (b *builder) pub(s string) {
	if !slices.Contains(b.pubs, s) {
		b.pubs = append(b.pubs, s)
	}
}

func (b *builder) sub(s string) {
	if !slices.Contains(b.subs, s) {
		b.subs = append(b.subs, s)
	}
}

// api allows $JS.API.<verb>.<stream> on every shard's stream of the kinds.
func (b *builder) api(verb string, kinds ...streams.Kind) {
	for _, k := range kinds {
		for shard := range b.t.Shards {
			b.pub("$JS.API." + verb + "." + streams.StreamName(k, shard))
		}
	}
}

func (b *builder) streamInfo(kinds ...streams.Kind) { b.api("STREAM.INFO", kinds...) }

// shardSubjects allows <kind>.<shard>.<rest> on every shard.
func (b *builder) shardSubjects(kind streams.Kind, rest string) {
	for shard := range b.t.Shards {
		b.pub(string(kind) + "." + strconv.Itoa(shard) + "." + rest)
	}
}

// deadLetters allows writing the dead letters of a stage on every shard:
// deadletter.<shard>.<account>.<stage>.
func (b *builder) deadLetters(stage string) {
	b.shardSubjects(streams.KindDeadLetter, "*."+stage)
}

// brakeAdvisories: a stage announces the accounts it brakes, per shard
// (streams.Brake.Announce).
func (b *builder) brakeAdvisories() {
	for shard := range b.t.Shards {
		b.pub(streams.BrakeSubject(shard, "*"))
	}
}

func (b *builder) consumerInfo(c streams.ConsumerSpec) {
	for shard := range b.t.Shards {
		b.pub("$JS.API.CONSUMER.INFO." + streams.StreamName(c.Kind, shard) + "." + c.Name)
	}
}

// stage allows pulling a stage's durable consumer on every shard: bind
// (CONSUMER.INFO), pull requests (CONSUMER.MSG.NEXT), and acks, naks,
// in-progress and terms ($JS.ACK in both the v1 form and the domain/account
// hash v2 form).
func (b *builder) stage(name string) error {
	c, ok := b.t.Consumer(name)
	if !ok {
		return fmt.Errorf("natsconf: the topology has no %s consumer", name)
	}
	b.consumerInfo(c)
	for shard := range b.t.Shards {
		s := streams.StreamName(c.Kind, shard)
		b.pub("$JS.API.CONSUMER.MSG.NEXT." + s + "." + c.Name)
		b.pub("$JS.ACK." + s + "." + c.Name + ".>")
		b.pub("$JS.ACK.*.*." + s + "." + c.Name + ".>")
	}
	return nil
}

// kvWatch allows watching the directory bucket (streams.OpenDirectory):
// nats.go looks the bucket's stream up, then creates an ordered push
// consumer delivering to the inbox, answers its flow control, and deletes
// (or, after a gap, recreates) it.
func (b *builder) kvWatch() {
	kv := "KV_" + streams.DirectoryBucket
	b.pub("$JS.API.STREAM.INFO." + kv)
	b.pub("$JS.API.CONSUMER.CREATE." + kv + ".>")
	b.pub("$JS.API.CONSUMER.DELETE." + kv + ".*")
	b.pub("$JS.FC." + kv + ".>")
	b.pub("$JS.FC.*.*." + kv + ".>")
}

// PlacementTags returns the placement tags of each shard's streams in a
// cluster of nodes servers (see the package doc): cell:<shard mod cells>
// and sync:always. Use it as streams.Topology.PlacementTags.
func PlacementTags(nodes int) func(shard int) []string {
	cells := max(nodes/3, 1)
	return func(shard int) []string {
		return []string{"cell:" + strconv.Itoa(shard%cells), "sync:always"}
	}
}

// ServerTags returns the server_tags of node i (0-based).
func ServerTags(i int) []string {
	return []string{"az:" + string(rune('a'+i%3)), "cell:" + strconv.Itoa(i/3), "sync:always"}
}
