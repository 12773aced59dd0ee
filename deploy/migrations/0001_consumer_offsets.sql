-- Consumer positions kept beside the rows they produced, written in the same transaction.
-- `epoch` names the log the offsets point into: the embedded broker starts a new log on
-- every start, and offsets from another epoch are ignored (the consumer reads from the beginning).
CREATE TABLE consumer_offsets (
    consumer     text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    next_offset  bigint      NOT NULL CHECK (next_offset >= 0),
    epoch        text        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);
