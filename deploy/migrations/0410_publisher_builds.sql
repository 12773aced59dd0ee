-- Publisher: every workspace build seen, agent-managed or not, by billing id (a UUIDv5 of the
-- build event's identity: type, user and id). The first copy of a build decides whether it is
-- billable; a later copy with other content (the same id re-sent with agent_managed changed)
-- must not make it so, as reports does not count it either. About 100 bytes per build.
CREATE TABLE publisher_builds (
    queue          text        NOT NULL,
    billing_id     text        NOT NULL,
    agent_managed  boolean     NOT NULL,
    occurred_at    timestamptz NOT NULL,
    PRIMARY KEY (queue, billing_id)
);
