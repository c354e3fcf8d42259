-- Initial schema (DESIGN.md §6): account directory, triggers, people,
-- deliveries, dead-letter index and the account-deletion audit.

-- +goose Up
CREATE TABLE accounts (
  id                 text PRIMARY KEY,
  shard              int NOT NULL,
  status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'deleting', 'deleted')),
  generation         bigint NOT NULL DEFAULT 1,
  write_key          text NOT NULL UNIQUE,
  secret             text NOT NULL,
  rate_limit_per_sec int NOT NULL DEFAULT 0,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE triggers (
  account_id text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  name       text NOT NULL,
  event      text NOT NULL,
  channel    text NOT NULL CHECK (channel IN ('webhook', 'email')),
  url        text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, name)
);
CREATE INDEX triggers_event ON triggers (account_id, event);

CREATE TABLE people (
  account_id      text NOT NULL,
  user_id         text NOT NULL,
  traits          jsonb NOT NULL DEFAULT '{}',
  last_message_id text,
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, user_id)
);

CREATE TABLE deliveries (
  message_id       text PRIMARY KEY,
  account_id       text NOT NULL,
  shard            int NOT NULL,
  channel          text NOT NULL,
  url              text NOT NULL,
  status           text NOT NULL CHECK (status IN ('sending', 'delivered')),
  status_code      int,
  attempts         int NOT NULL DEFAULT 1,
  first_attempt_at timestamptz NOT NULL DEFAULT now(),
  delivered_at     timestamptz
);
CREATE INDEX deliveries_account ON deliveries (account_id);

CREATE TABLE dead_letters (
  id               text PRIMARY KEY, -- <originStream>:<originSeq>
  shard            int NOT NULL,
  account_id       text NOT NULL,
  stage            text NOT NULL,
  error_class      text NOT NULL,
  error            text NOT NULL,
  attempts         int NOT NULL,
  original_subject text NOT NULL,
  headers          jsonb NOT NULL DEFAULT '{}',
  payload          bytea NOT NULL,
  trace_id         text NOT NULL DEFAULT '',
  first_failure    timestamptz NOT NULL,
  last_failure     timestamptz NOT NULL,
  dl_stream        text NOT NULL,
  dl_seq           bigint NOT NULL,
  created_at       timestamptz NOT NULL DEFAULT now(),
  replayed_at      timestamptz,
  replay_count     int NOT NULL DEFAULT 0,
  dropped_at       timestamptz
);
CREATE INDEX dead_letters_filter ON dead_letters (shard, account_id, stage, error_class, created_at);

CREATE TABLE account_deletions (
  account_id  text NOT NULL,
  generation  bigint NOT NULL,
  started_at  timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  step        text NOT NULL DEFAULT 'started',
  audit       jsonb NOT NULL DEFAULT '{}',
  PRIMARY KEY (account_id, generation)
);

CREATE TABLE account_tombstones (
  account_id text NOT NULL,
  generation bigint NOT NULL,
  deleted_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, generation)
);

-- +goose Down
DROP TABLE account_tombstones;
DROP TABLE account_deletions;
DROP TABLE dead_letters;
DROP TABLE deliveries;
DROP TABLE people;
DROP TABLE triggers;
DROP TABLE accounts;
