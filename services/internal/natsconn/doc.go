// Package natsconn opens the NATS connection of a shardflow service with the
// behaviour every service needs:
//
//   - it never gives up reconnecting (MaxReconnects(-1), 250 ms between
//     attempts to the same server), also when the server is not up yet at
//     start (RetryOnFailedConnect); [Connect] itself waits until the first
//     connection is made or its context ends, and then fails with an error
//     naming the URL and the last connection error;
//   - disconnects are logged at warn, reconnects at info, the close at info;
//   - every asynchronous error is logged. A permissions violation (a publish
//     or subscribe the server's permissions refuse) is logged at error level
//     and reported to Config.OnPermissionViolation: the server answers such a
//     publish with an -ERR the publisher never sees (a JetStream publish
//     just times out), so this handler is the only place it shows. Services
//     count it in shardflow_nats_permission_violations_total.
//
// One exception to never giving up: when the server refuses the credentials
// twice in a row, nats.go closes the connection for good (its default, kept
// so that Connect fails fast on bad credentials). A service's readiness check
// should therefore report nc.Status() != nats.CONNECTED.
//
// Least-privilege deployments set Config.InboxPrefix so request replies
// (including JetStream API replies) arrive on a subject the user's
// permissions can allow per service, e.g. "_INBOX_ingest".
package natsconn
