-- Spend limits: the admin configuration, per-user and per-group overrides, and snapshots of
-- the in-memory state every limits replica builds from the log.

-- One row. `version` moves on every change to it or to an override, so replicas notice any
-- change (deletes included) with one cheap read. Limits start disabled with no default.
CREATE TABLE limits_config (
    singleton            boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    enabled              boolean     NOT NULL DEFAULT false,
    period               text        NOT NULL DEFAULT 'month'
                                     CHECK (period IN ('day', 'week', 'month')),
    default_limit_micros bigint      CHECK (default_limit_micros > 0),
    version              bigint      NOT NULL DEFAULT 0,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
INSERT INTO limits_config (singleton) VALUES (true);

CREATE TABLE limits_user_overrides (
    user_id      text        PRIMARY KEY,
    limit_micros bigint      NOT NULL CHECK (limit_micros > 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE limits_group_overrides (
    group_id     text        PRIMARY KEY,
    limit_micros bigint      NOT NULL CHECK (limit_micros > 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The ledger (zlib-compressed JSON) with the next offset per partition it reached. `epoch`
-- names the log the offsets point into: a snapshot of another epoch is never loaded.
-- `next_offsets_total` orders snapshots of one log by how far they got.
CREATE TABLE limits_snapshots (
    id                 bigserial   PRIMARY KEY,
    topic              text        NOT NULL,
    epoch              text        NOT NULL,
    format             integer     NOT NULL,
    positions          jsonb       NOT NULL,
    next_offsets_total bigint      NOT NULL,
    events_applied     bigint      NOT NULL,
    state              bytea       NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX limits_snapshots_newest
    ON limits_snapshots (topic, epoch, format, next_offsets_total DESC, id DESC);
