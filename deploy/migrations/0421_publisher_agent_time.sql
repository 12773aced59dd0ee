-- Agent Time: the runtime of chat usage, summed per UTC hour into `hb_agent_runtime_v1`.

-- One row per chat usage event that carried runtime_ms, keyed by its event id, so a replay of
-- the log or a resent event adds nothing. `hour` is the UTC hour of occurred_at. Rows of hours
-- older than the reporting window are deleted: those hours are never reported any more.
CREATE TABLE publisher_agent_runtime (
    queue       text        NOT NULL,
    event_id    text        NOT NULL,
    hour        timestamptz NOT NULL,
    runtime_ms  bigint      NOT NULL CHECK (runtime_ms >= 0),
    PRIMARY KEY (queue, event_id)
);
-- An hour is summed from the index alone.
CREATE INDEX publisher_agent_runtime_hour
    ON publisher_agent_runtime (queue, hour) INCLUDE (runtime_ms);

-- Until when each partition of the log has been read to its end, by any replica of the
-- consumer group: an hour is closed only once every partition has been read past its end
-- plus the lag, so a replica that lags behind (or died with its partitions) holds it open.
CREATE TABLE publisher_log_progress (
    queue         text        NOT NULL,
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    partitions    integer     NOT NULL,
    caught_up_at  timestamptz NOT NULL,
    PRIMARY KEY (queue, topic, partition)
);
