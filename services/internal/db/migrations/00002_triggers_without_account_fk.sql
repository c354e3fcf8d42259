-- Per-shard databases (DESIGN.md §6): triggers live in the database of the
-- account's shard, which has no accounts rows, so triggers can no longer
-- reference accounts. Nothing relied on the ON DELETE CASCADE: account rows
-- are never deleted (a deleted account keeps its row, status 'deleted'), and
-- the deletion saga deletes an account's triggers itself.

-- +goose Up
ALTER TABLE triggers DROP CONSTRAINT triggers_account_id_fkey;

-- +goose Down
-- Only valid where triggers and accounts share a database (every trigger's
-- account present), as before per-shard databases.
ALTER TABLE triggers ADD CONSTRAINT triggers_account_id_fkey
  FOREIGN KEY (account_id) REFERENCES accounts (id) ON DELETE CASCADE;
