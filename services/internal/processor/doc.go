// Package processor is the stage between INBOUND_n and OUTBOUND_n. An
// identify upserts the person; a track evaluates the account's triggers and
// publishes one outbound message per matching trigger, with an id derived
// from the inbound message id and the trigger name, so a redelivery
// publishes the same ids and JetStream drops the repeats. The inbound
// message is acked only after its rows are committed and every outbound
// publish is acknowledged.
package processor
