// Package natsconf generates the production NATS configuration of shardflow:
// one nats-server config per node of a 3-node JetStream cluster, a
// single-node variant (the local stack's shape: R1, no TLS, no cluster),
// the accounts and users (one NKey user per service, least privilege), a
// self-signed CA with server and client certificates, fresh NKey seeds, the
// Helm values for the official NATS chart, and a manifest (JSON) with the
// permission table, the server tags and the placement of each shard.
//
// # Least privilege
//
// Every service connects as its own user in the SHARDFLOW account, with
// exactly the JetStream API subjects its code calls (see [Permissions]):
//
//   - the JetStream API is a set of subjects ($JS.API.<VERB>.<stream>...),
//     so a user gets STREAM.INFO, CONSUMER.INFO, CONSUMER.MSG.NEXT, and acks
//     ($JS.ACK.<stream>.<consumer>.>) only on its own streams and consumers;
//   - NATS wildcards match whole tokens only (INBOUND_* is not a pattern),
//     so every per-shard rule is expanded here, one per shard; a config
//     generated for N shards refuses subjects of shard N and above, which is
//     what makes a topology grown without regenerating the config visible
//     (a permissions violation, counted in
//     shardflow_nats_permission_violations_total) instead of silent;
//   - only the accounts service may purge ($JS.API.STREAM.PURGE.<stream>,
//     one subject per stream: the purge filter travels in the payload, so
//     whoever may purge one account may purge the whole stream);
//   - only the provisioner may create or update streams and consumers, and
//     nobody, not even the provisioner, may delete a stream: every user's
//     publish deny list holds $JS.API.STREAM.DELETE.> (deny wins over allow);
//   - every service subscribes only to its own inbox prefix
//     (_INBOX_<service>.>, set with SHARDFLOW_NATS_INBOX_PREFIX), since
//     "any client with permission to subscribe to _INBOX.> can receive all
//     responses published".
//
// The account directory (KV bucket shardflow_accounts) is watched with an
// ordered push consumer: STREAM.INFO on KV_shardflow_accounts, CONSUMER.CREATE
// and CONSUMER.DELETE on it (nats.go deletes the ordered consumer when the
// watch stops and recreates it after a gap), and flow-control replies on
// $JS.FC.KV_shardflow_accounts.>. Reads by key are direct gets
// ($JS.API.DIRECT.GET.KV_shardflow_accounts.>); only the accounts service
// may write ($KV.shardflow_accounts.>).
//
// # Placement
//
// Servers carry the tags az:<a|b|c>, cell:<n> and sync:always; the cluster
// sets unique_tag "az:", so the three replicas of a stream land in three
// zones. A cell is three servers; shard s is placed on cell s mod cells
// ([PlacementTags]), so a 6-node cluster spreads the shards over two cells.
package natsconf
