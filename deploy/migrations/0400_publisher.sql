-- The publisher's durable billing queue, its health, and the seat facts its heartbeat counts.
-- Every table is keyed by `queue` (TOLLGATE_PUBLISHER_QUEUE, normally 'default') so that two
-- publishers sharing one database never see each other's rows.

-- One row per billing event, from enqueue to a final status. A replica claims due rows by
-- moving `next_attempt_at` past its claim timeout (`claimed_until`), so a crashed replica's
-- claims come back by themselves; `attempts` drives the per-event backoff.
CREATE TABLE publisher_events (
    queue            text        NOT NULL,
    id               text        NOT NULL,
    event_type       text        NOT NULL,
    event_data       jsonb       NOT NULL,
    created_at       timestamptz NOT NULL,
    enqueued_at      timestamptz NOT NULL DEFAULT now(),
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'published', 'rejected', 'expired')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    claimed_by       text,
    claimed_until    timestamptz,
    last_error       text,
    finished_at      timestamptz,
    PRIMARY KEY (queue, id)
);

-- The sender's claim scan and the pending count read only pending rows.
CREATE INDEX publisher_events_due
    ON publisher_events (queue, next_attempt_at) WHERE status = 'pending';
CREATE INDEX publisher_events_pending_created
    ON publisher_events (queue, created_at) WHERE status = 'pending';
-- Retention deletes final rows by age.
CREATE INDEX publisher_events_finished
    ON publisher_events (queue, finished_at) WHERE status <> 'pending';

-- Health that survives restarts and is shared by every replica of a queue.
CREATE TABLE publisher_state (
    queue                 text        PRIMARY KEY,
    deployment_id         text        NOT NULL,
    consecutive_failures  integer     NOT NULL DEFAULT 0,
    failing_since         timestamptz,
    last_error            text,
    last_error_cause      text,
    last_error_at         timestamptz,
    last_success_at       timestamptz,
    last_attempt_at       timestamptz,
    published_total       bigint      NOT NULL DEFAULT 0,
    rejected_total        bigint      NOT NULL DEFAULT 0,
    expired_total         bigint      NOT NULL DEFAULT 0,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- The latest licence state of each user the directory described (the newest event wins).
CREATE TABLE publisher_users (
    queue      text        NOT NULL,
    user_id    text        NOT NULL,
    licensed   boolean     NOT NULL,
    suspended  boolean     NOT NULL,
    as_of      timestamptz NOT NULL,
    PRIMARY KEY (queue, user_id)
);

-- Who used AI chat (not title generation) in which UTC month; kept for two months.
CREATE TABLE publisher_ai_chat_users (
    queue          text        NOT NULL,
    month          date        NOT NULL,
    user_id        text        NOT NULL,
    first_used_at  timestamptz NOT NULL,
    PRIMARY KEY (queue, month, user_id)
);
