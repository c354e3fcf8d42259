// Command accounts runs the accounts service (DESIGN.md §3, §5): the admin
// HTTP API that creates, updates, suspends, restores and deletes accounts and
// their triggers, and the account-deletion saga, driven by the durable
// consumer "accounts" on every ACCOUNTS_<n> stream. The logic lives in
// package services/internal/accounts; this command wires it to the
// configuration, Postgres, NATS and the health endpoint. The admin address
// also serves the dead-letter API (/v1/deadletters..., package
// services/internal/dlq), with the same bearer token.
//
// Configuration is by flag or SHARDFLOW_* variable (see --help): the common
// service settings, plus
//
//	--admin-addr      SHARDFLOW_ADMIN_ADDR      admin API address (127.0.0.1:8081)
//	--admin-token     SHARDFLOW_ADMIN_TOKEN     bearer token of the admin API (required)
//	--deletion-grace  SHARDFLOW_DELETION_GRACE  wait before the saga's second purge (2s)
//
// On start-up it writes every account whose directory entry lags Postgres
// again, and reports (and re-publishes the event of) deletions left
// unfinished for over a minute.
//
// SHARDFLOW_TEST_CRASH_AFTER_STEP=<step> is FOR TESTS ONLY: the process
// exits with status 3 right after the deletion saga recorded that step
// (ingress_closed, purged, rows_deleted, verified, second_purge or deleted),
// so the integration suite can check that a restarted service resumes the
// saga. Never set it in production.
package main
