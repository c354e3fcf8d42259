-- What the deletion saga removed from a shard's database, written in the
-- same transaction as the removal. With per-shard databases an account's
-- people, triggers and deliveries are deleted in its shard's database while
-- the deletion's audit lives in the main one: a crash between the two
-- commits would otherwise lose the counts of rows already gone. The saga
-- reads the receipt back when it resumes instead of deleting (and counting)
-- again.

-- +goose Up
CREATE TABLE deletion_receipts (
  account_id text NOT NULL,
  generation bigint NOT NULL,
  phase      text NOT NULL, -- the saga step that deleted: rows_deleted or second_purge
  rows       jsonb NOT NULL, -- table → rows deleted
  deleted_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, generation, phase)
);

-- +goose Down
DROP TABLE deletion_receipts;
