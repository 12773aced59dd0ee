-- Heartbeat ids as Coder writes them, and AI seats counted as Coder's GetActiveAISeatCount does.

-- At most one heartbeat per type and bucket, whatever form its id takes: a replica that still
-- writes the old id form (`hb_ai_seats_v1:2026-11-02T08:00:00Z`) during a rolling upgrade and
-- one that writes the new form (`hb_ai_seats_v1:2026-11-02_08:00:00`) cannot both queue one.
-- The bucket start is the row's created_at.
CREATE UNIQUE INDEX publisher_events_one_heartbeat_per_bucket
    ON publisher_events (queue, event_type, created_at)
    WHERE event_type IN ('hb_ai_seats_v1', 'hb_agent_runtime_v1');

-- A seats heartbeat queued in the old form and never sent yet takes the new form. One that was
-- sent at least once keeps its id: the billing server may already hold it, and resending the
-- same id is what lets it deduplicate. Sent, rejected and expired rows keep theirs as history.
UPDATE publisher_events
SET id = 'hb_ai_seats_v1:' || to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"_"HH24:MI:SS')
WHERE event_type = 'hb_ai_seats_v1'
  AND status = 'pending'
  AND attempts = 0
  AND id LIKE 'hb\_ai\_seats\_v1:____-__-__T__:__:__Z';

-- Who holds an AI seat: every user who ever used AI chat (title generation excluded), from the
-- first use on, as Coder's ai_seat_state. The heartbeat counts those who are active now.
CREATE TABLE publisher_ai_seats (
    queue          text        NOT NULL,
    user_id        text        NOT NULL,
    first_used_at  timestamptz NOT NULL,
    PRIMARY KEY (queue, user_id)
);

INSERT INTO publisher_ai_seats (queue, user_id, first_used_at)
SELECT queue, user_id, min(first_used_at)
FROM publisher_ai_chat_users
GROUP BY queue, user_id;

-- publisher_ai_chat_users (AI chat users per month) is no longer read. It stays until a later
-- release so that replicas of the previous release keep writing while an upgrade rolls out.
COMMENT ON TABLE publisher_ai_chat_users IS 'unused since 0420; kept for rolling upgrades';
