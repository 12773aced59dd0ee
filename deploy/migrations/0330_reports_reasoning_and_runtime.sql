-- Chat rollups gain the reasoning tokens (already part of the output tokens) and the Agent Time
-- runtime of chat usage. Events projected before this had neither field, so 0 is exact for them.
ALTER TABLE reports_chat_totals
    ADD COLUMN reasoning_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN runtime_ms bigint NOT NULL DEFAULT 0;

ALTER TABLE reports_chat_detail
    ADD COLUMN reasoning_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN runtime_ms bigint NOT NULL DEFAULT 0;
