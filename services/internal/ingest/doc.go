// Package ingest is the HTTP edge of shardflow. It speaks Segment's HTTP
// tracking API (POST /v1/identify, /v1/track, /v1/batch), so existing
// analytics SDKs work unchanged: the account's write key as the Basic-auth
// user name, a Bearer token, or the body's writeKey.
//
// A request is answered 200 {"success":true} only after every event of it is
// stored in JetStream. A batch is validated whole before anything is
// published and is stored as one JetStream atomic batch: all or nothing.
// Errors name the field or the limit: 400 malformed or invalid (with field
// errors), 401 missing or unknown write key, 403 suspended account, 410
// deleted account, 413 over a size limit, 429 over the account's rate (with
// Retry-After), 503 when JetStream did not acknowledge (retry with the same
// messageIds: JetStream drops repeats inside its duplicate window).
//
// The account is found in the live account directory (a KV watch): no
// database query per request, and a deletion closes ingress as soon as the
// directory changes (milliseconds).
package ingest
