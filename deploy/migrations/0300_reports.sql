-- Reports: the event archive, the rollups the APIs read, and directory state.
--
-- Every table here is written only by the reports projection, one batch per transaction
-- together with the consumer offsets (consumer_offsets), so a batch's rows and its position in
-- the log land together or not at all. Rollups are applied only for events whose id was new to
-- the archive, which makes replays and duplicate ids no-ops.
--
-- Rollups are kept at several grains so a query over any range reads few rows: `h` (hour),
-- `d` (day), `w` (ISO week, Monday start), `m` (calendar month). Periods are UTC. What a range
-- cuts off a rollup's finest period is read from the archive (see the indexes below).

-- Every event once, keyed by its id (the deduplication key). "C" collation: ids are compared
-- byte-wise, which is what a key needs and is faster than a locale's rules.
CREATE TABLE reports_events (
    id             text COLLATE "C" PRIMARY KEY,
    type           text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    org_id         text,
    user_id        text,
    log_partition  integer     NOT NULL,
    log_offset     bigint      NOT NULL,
    data           jsonb       NOT NULL,
    projected_at   timestamptz NOT NULL DEFAULT now()
);
-- A range whose start or end falls inside a rollup period reads that ragged edge from the
-- archive: chat usage by time (all users) and by user and time, sessions by user and start.
CREATE INDEX reports_events_chat_time ON reports_events (occurred_at)
    WHERE type = 'chat.usage.v1';
CREATE INDEX reports_events_chat_user_time ON reports_events (user_id, occurred_at)
    WHERE type = 'chat.usage.v1';
CREATE INDEX reports_events_session_user_time ON reports_events (user_id, occurred_at)
    WHERE type = 'activity.session.v1';

-- Chat spend per user (title generation excluded) at grains h, d and m: the cost list reads
-- whole days and months here and only the edge hours of a range.
CREATE TABLE reports_chat_totals (
    grain               "char"      NOT NULL,
    period              timestamptz NOT NULL,
    user_id             text        NOT NULL,
    cost_micros         bigint      NOT NULL,
    messages            bigint      NOT NULL,
    priced_messages     bigint      NOT NULL,
    input_tokens        bigint      NOT NULL,
    output_tokens       bigint      NOT NULL,
    cache_read_tokens   bigint      NOT NULL,
    cache_write_tokens  bigint      NOT NULL,
    PRIMARY KEY (grain, period, user_id)
) WITH (fillfactor = 90);

-- Chat spend per user, model and root chat per day: a user's detail view, and the distinct
-- chat count of the users on one page of the cost list.
CREATE TABLE reports_chat_detail (
    user_id             text        NOT NULL,
    grain               "char"      NOT NULL,
    period              timestamptz NOT NULL,
    model               text        NOT NULL,
    provider            text        NOT NULL,  -- '' when the event named none
    root_chat_id        text        NOT NULL,
    cost_micros         bigint      NOT NULL,
    messages            bigint      NOT NULL,
    priced_messages     bigint      NOT NULL,
    input_tokens        bigint      NOT NULL,
    output_tokens       bigint      NOT NULL,
    cache_read_tokens   bigint      NOT NULL,
    cache_write_tokens  bigint      NOT NULL,
    PRIMARY KEY (user_id, grain, period, model, provider, root_chat_id)
) WITH (fillfactor = 90);

-- Activity per user, org and category at grains d, w and m. A session is
-- [occurred_at, occurred_at + duration_ms): each period gets the part of the session that
-- overlaps it (microseconds), and the period holding the session's start gets its count.
-- Category '*' holds the sum over every category, so `category=any` reads as few rows as one.
-- `first_start` is the earliest start of the sessions in the row: where to begin reading the
-- archive for the part of a day that a range cuts off.
CREATE TABLE reports_activity (
    grain        "char"      NOT NULL,
    category     text        NOT NULL,
    period       timestamptz NOT NULL,
    org_id       text        NOT NULL,  -- '' when the event had none
    user_id      text        NOT NULL,
    duration_us  bigint      NOT NULL,
    sessions     bigint      NOT NULL,
    first_start  timestamptz NOT NULL,
    PRIMARY KEY (grain, category, period, org_id, user_id)
) WITH (fillfactor = 90);

-- UI and SDK calls per user and month, with the time of the last call (chargeback).
CREATE TABLE reports_api_usage (
    month    timestamptz NOT NULL,
    user_id  text        NOT NULL,
    client   text        NOT NULL,
    calls    bigint      NOT NULL,
    last_at  timestamptz NOT NULL,
    PRIMARY KEY (month, user_id, client)
) WITH (fillfactor = 90);

-- Workspace builds per user and month; agent-managed ones are counted apart (chargeback).
CREATE TABLE reports_builds (
    month         timestamptz NOT NULL,
    user_id       text        NOT NULL,
    builds        bigint      NOT NULL,
    agent_builds  bigint      NOT NULL,
    PRIMARY KEY (month, user_id)
) WITH (fillfactor = 90);

-- The latest storage sample of each project in each month (a gauge: the latest sample wins, by
-- occurred_at, ties broken by log position).
CREATE TABLE reports_storage (
    month             timestamptz NOT NULL,
    project_id        text        NOT NULL,
    size_mb           double precision NOT NULL,
    experiment_count  bigint      NOT NULL,
    user_id           text,
    occurred_at       timestamptz NOT NULL,
    log_partition     integer     NOT NULL,
    log_offset        bigint      NOT NULL,
    PRIMARY KEY (month, project_id)
);

-- Directory state: the latest event per subject wins (by occurred_at, then log position).
CREATE TABLE reports_users (
    user_id        text PRIMARY KEY,
    org_id         text,
    username       text        NOT NULL,
    name           text        NOT NULL,
    email          text        NOT NULL,
    roles          text[]      NOT NULL,
    avatar_hash    text,
    created_at     timestamptz NOT NULL,
    suspended      boolean     NOT NULL,
    licensed       boolean     NOT NULL,
    occurred_at    timestamptz NOT NULL,
    log_partition  integer     NOT NULL,
    log_offset     bigint      NOT NULL
);

CREATE TABLE reports_groups (
    group_id       text PRIMARY KEY,
    org_id         text,
    name           text        NOT NULL,
    member_ids     text[]      NOT NULL,
    occurred_at    timestamptz NOT NULL,
    log_partition  integer     NOT NULL,
    log_offset     bigint      NOT NULL
);

CREATE TABLE reports_teams (
    team_id        text PRIMARY KEY,
    org_id         text,
    name           text        NOT NULL,
    member_ids     text[]      NOT NULL,
    occurred_at    timestamptz NOT NULL,
    log_partition  integer     NOT NULL,
    log_offset     bigint      NOT NULL
);

CREATE TABLE reports_projects (
    project_id     text PRIMARY KEY,
    org_id         text,
    team_id        text        NOT NULL,
    name           text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    log_partition  integer     NOT NULL,
    log_offset     bigint      NOT NULL
);
CREATE INDEX reports_projects_team ON reports_projects (team_id);
