-- Budget notifications: the webhook endpoints admins register, one row per notification that
-- became due, and the outbox of its deliveries (webhooks and emails).
--
-- Limits replicas record a crossing with INSERT ... ON CONFLICT DO NOTHING against the unique
-- key below and, in the same transaction, one webhook delivery per registered endpoint: however
-- many replicas (or replays) try, the first one wins and the others change nothing. The
-- notifier in reports renders each notification once (`payload`), adds its email deliveries,
-- and sends every delivery until it is delivered or given up.

CREATE TABLE notification_webhooks (
    id           text        PRIMARY KEY,
    url          text        NOT NULL,
    description  text        NOT NULL DEFAULT '',
    secret       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Kept after a delete so that its deliveries still name it; never sent to again.
    deleted_at   timestamptz,
    -- Set when the endpoint answered 410 Gone: it asked not to be sent anything more.
    disabled_at  timestamptz,
    disabled_reason text
);

CREATE TABLE notifications (
    id           uuid        PRIMARY KEY,
    -- Creation order: a user's warning always precedes their limit notice.
    seq          bigserial   NOT NULL UNIQUE,
    type         text        NOT NULL,
    user_id      text,
    -- The organisation whose limit applied; '' when the limit is not organisation-scoped.
    org_scope    text        NOT NULL DEFAULT '',
    period       text,
    period_start timestamptz,
    -- The facts limits decided on (amounts, source, group, window), as JSON.
    data         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- The exact webhook body (type, timestamp, data with names), rendered once by the notifier.
    payload      text,
    prepared_at  timestamptz,
    -- Test events have no user: NULLs never conflict, so each one is its own notification.
    CONSTRAINT notifications_once UNIQUE (type, user_id, org_scope, period, period_start)
);
CREATE INDEX notifications_unprepared ON notifications (seq) WHERE prepared_at IS NULL;

CREATE TABLE notification_deliveries (
    -- Sent as `webhook-id` (msg_<hex>) and in the email's Message-ID: the same on every retry.
    id              uuid        PRIMARY KEY,
    notification_id uuid        NOT NULL REFERENCES notifications (id),
    notification_seq bigint     NOT NULL,
    channel         text        NOT NULL CHECK (channel IN ('webhook', 'email')),
    webhook_id      text        REFERENCES notification_webhooks (id),
    recipient       text,
    audience        text        NOT NULL DEFAULT 'user' CHECK (audience IN ('user', 'admin')),
    -- Whose budget it is (deliveries of one user to one target go out in order).
    user_id         text,
    -- An email's whole message, rendered once, so that every attempt sends the same bytes.
    message         text,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    last_status     integer,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    claimed_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    delivered_at    timestamptz,
    CHECK ((channel = 'webhook') = (webhook_id IS NOT NULL)),
    CHECK ((channel = 'email') = (recipient IS NOT NULL))
);
CREATE UNIQUE INDEX notification_deliveries_once_per_webhook
    ON notification_deliveries (notification_id, webhook_id) WHERE channel = 'webhook';
CREATE UNIQUE INDEX notification_deliveries_once_per_recipient
    ON notification_deliveries (notification_id, recipient) WHERE channel = 'email';
CREATE INDEX notification_deliveries_due
    ON notification_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notification_deliveries_recent ON notification_deliveries (created_at DESC, id);
CREATE INDEX notification_deliveries_order
    ON notification_deliveries (webhook_id, recipient, user_id, notification_seq)
    WHERE status = 'pending';
