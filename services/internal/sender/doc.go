// Package sender is the last stage: it delivers OUTBOUND_n messages by
// channel (webhook; e-mail over SMTP) and records every delivery in Postgres
// keyed by message id, so a redelivered message is not sent twice.
//
// Webhooks are POSTed as JSON with an HMAC-SHA256 signature of the body
// (header Shardflow-Signature: sha256=<hex>, keyed by the account's secret)
// and an Idempotency-Key header equal to the message id: if the process dies
// after the receiver answered and before the delivery was recorded, the
// message is sent again with the same key, which the receiver can drop.
// Receiver 2xx: delivered. 408, 429 (honouring Retry-After) and 5xx: retried
// on the backoff schedule. Any other 4xx: dead-lettered at once.
package sender
