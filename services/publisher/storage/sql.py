"""The billing queue's SQL, as named statements (`postgres` runs them)."""

from __future__ import annotations

from services.publisher.domain import (
    HB_AGENT_RUNTIME,
)

# -- SQL -----------------------------------------------------------------------------------

ENSURE_STATE = """
INSERT INTO publisher_state (queue, deployment_id) VALUES ($1, $2)
ON CONFLICT (queue) DO NOTHING
"""

SELECT_STATE = "SELECT * FROM publisher_state WHERE queue = $1"

ENQUEUE = """
INSERT INTO publisher_events (queue, id, event_type, event_data, created_at)
SELECT $1, r.id, r.event_type, r.event_data::jsonb, r.created_at
FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[])
     AS r(id, event_type, event_data, created_at)
ON CONFLICT (queue, id) DO NOTHING
"""

# Every build's first copy, by billing id (its identity): what it was decides for good.
REMEMBER_BUILDS = """
INSERT INTO publisher_builds (queue, billing_id, agent_managed, occurred_at)
SELECT $1, r.billing_id, r.agent_managed, r.occurred_at
FROM unnest($2::text[], $3::bool[], $4::timestamptz[]) AS r(billing_id, agent_managed, occurred_at)
ORDER BY r.billing_id
ON CONFLICT (queue, billing_id) DO NOTHING
RETURNING billing_id
"""

DB_NOW = "SELECT now()"

CLAIM = """
WITH due AS (
    SELECT id FROM publisher_events
    WHERE queue = $1 AND status = 'pending' AND next_attempt_at <= $2
    ORDER BY next_attempt_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE publisher_events e
SET claimed_by = $4,
    claimed_until = now() + $5::interval,
    next_attempt_at = now() + $5::interval,
    attempts = e.attempts + 1
FROM due
WHERE e.queue = $1 AND e.id = due.id
RETURNING e.id, e.event_type, e.event_data::text AS event_data, e.created_at, e.attempts
"""

# Final outcomes are facts and land whoever holds the claim; a retry only releases a claim
# that is still this replica's, so it never makes due a row another replica is sending.
APPLY_OUTCOMES = """
UPDATE publisher_events e
SET status = r.status,
    next_attempt_at = CASE WHEN r.status = 'pending'
                           THEN now() + r.delay_s * interval '1 second'
                           ELSE e.next_attempt_at END,
    last_error = CASE WHEN r.status = 'published' THEN e.last_error ELSE r.message END,
    finished_at = CASE WHEN r.status = 'pending' THEN NULL ELSE now() END,
    claimed_by = NULL,
    claimed_until = NULL
FROM unnest($2::text[], $3::text[], $4::text[], $5::float8[]) AS r(id, status, message, delay_s)
WHERE e.queue = $1 AND e.id = r.id AND e.status = 'pending'
  AND (r.status <> 'pending' OR e.claimed_by = $6)
RETURNING r.status
"""

RECORD_SUCCESS = """
UPDATE publisher_state s
SET consecutive_failures = 0,
    failing_since = NULL,
    last_success_at = now(),
    last_attempt_at = now(),
    published_total = s.published_total + $2,
    rejected_total = s.rejected_total + $3,
    updated_at = now()
FROM (SELECT consecutive_failures FROM publisher_state WHERE queue = $1 FOR UPDATE) AS before
WHERE s.queue = $1
RETURNING before.consecutive_failures
"""

RECORD_FAILURE = """
UPDATE publisher_state
SET consecutive_failures = consecutive_failures + 1,
    failing_since = COALESCE(failing_since, now()),
    last_error = $2,
    last_error_cause = $3,
    last_error_at = now(),
    last_attempt_at = now(),
    updated_at = now()
WHERE queue = $1
RETURNING consecutive_failures
"""

ADD_TOTALS = """
UPDATE publisher_state
SET published_total = published_total + $2,
    rejected_total = rejected_total + $3,
    expired_total = expired_total + $4,
    updated_at = now()
WHERE queue = $1
"""

# A row still held by a live claim is left for its answer; an expired claim is fair game.
EXPIRE = """
WITH expired AS (
    UPDATE publisher_events
    SET status = 'expired', finished_at = now(), claimed_by = NULL, claimed_until = NULL
    WHERE queue = $1 AND status = 'pending' AND created_at < now() - $2::interval
      AND (claimed_until IS NULL OR claimed_until < now())
    RETURNING event_type
)
SELECT event_type, count(*) AS n FROM expired GROUP BY event_type
"""

PURGE = """
DELETE FROM publisher_events
WHERE ctid IN (
    SELECT ctid FROM publisher_events
    WHERE queue = $1 AND status <> 'pending' AND finished_at < now() - $2::interval
    LIMIT 10000
)
"""

# Seats as Coder's GetActiveAISeatCount counts them: every user who ever used AI chat and is
# active now (licensed and not suspended, per the directory). A chat user the directory never
# described counts with the directory's defaults (licensed, not suspended). At most one
# heartbeat per bucket: its start is the row's created_at, whatever form its id has.
ENQUEUE_HEARTBEAT = """
INSERT INTO publisher_events (queue, id, event_type, event_data, created_at)
SELECT $1, $2, $3, jsonb_build_object('count', seats.n), $4
FROM (
    SELECT count(*) AS n
    FROM publisher_ai_seats s
    LEFT JOIN publisher_users u ON u.queue = s.queue AND u.user_id = s.user_id
    WHERE s.queue = $1
      AND COALESCE(u.licensed, true) AND NOT COALESCE(u.suspended, false)
) AS seats
WHERE NOT EXISTS (
    SELECT 1 FROM publisher_events WHERE queue = $1 AND event_type = $3 AND created_at = $4
)
ON CONFLICT DO NOTHING
RETURNING (event_data ->> 'count')::bigint
"""

STATUS = """
SELECT count(*) AS pending,
       count(*) FILTER (WHERE next_attempt_at <= now()) AS due,
       min(created_at) AS oldest,
       now() AS now
FROM publisher_events
WHERE queue = $1 AND status = 'pending'
"""

UPSERT_SEATS = """
INSERT INTO publisher_users (queue, user_id, licensed, suspended, as_of)
SELECT $1, r.user_id, r.licensed, r.suspended, r.as_of
FROM unnest($2::text[], $3::bool[], $4::bool[], $5::timestamptz[])
     AS r(user_id, licensed, suspended, as_of)
ON CONFLICT (queue, user_id) DO UPDATE
SET licensed = EXCLUDED.licensed, suspended = EXCLUDED.suspended, as_of = EXCLUDED.as_of
WHERE publisher_users.as_of <= EXCLUDED.as_of
"""

INSERT_AI_SEATS = """
INSERT INTO publisher_ai_seats (queue, user_id, first_used_at)
SELECT $1, r.user_id, r.first_used_at
FROM unnest($2::text[], $3::timestamptz[]) AS r(user_id, first_used_at)
ON CONFLICT (queue, user_id) DO UPDATE
SET first_used_at = EXCLUDED.first_used_at
WHERE EXCLUDED.first_used_at < publisher_ai_seats.first_used_at
"""

# -- Agent Time ----------------------------------------------------------------------------

# Storing runtime takes the lock shared (batches never wait for each other); sealing an hour
# takes it exclusively. Whichever comes second sees what the first committed.
LOCK_RUNTIME_SHARED = (
    "SELECT pg_advisory_xact_lock_shared(hashtext('tollgate.agent_time'), hashtext($1))"
)
LOCK_RUNTIME_EXCLUSIVE = (
    "SELECT pg_advisory_xact_lock(hashtext('tollgate.agent_time'), hashtext($1))"
)

# New runtime rows (an id already stored adds nothing); the ones whose hour was already
# reported come back, summed per hour: they arrived late and are not sent.
INSERT_RUNTIME = f"""
WITH fresh AS (
    INSERT INTO publisher_agent_runtime (queue, event_id, hour, runtime_ms)
    SELECT $1, r.event_id, r.hour, r.runtime_ms
    FROM unnest($2::text[], $3::timestamptz[], $4::bigint[]) AS r(event_id, hour, runtime_ms)
    WHERE r.hour >= $5
    ON CONFLICT (queue, event_id) DO NOTHING
    RETURNING hour, runtime_ms
)
SELECT f.hour, count(*) AS events, sum(f.runtime_ms)::bigint AS runtime_ms
FROM fresh f
WHERE EXISTS (
    SELECT 1 FROM publisher_events e
    WHERE e.queue = $1 AND e.event_type = '{HB_AGENT_RUNTIME}' AND e.created_at = f.hour
)
GROUP BY f.hour
ORDER BY f.hour
"""  # noqa: S608  # composed from constants only

RECORD_PROGRESS = """
INSERT INTO publisher_log_progress AS t (queue, topic, partition, partitions, caught_up_at)
SELECT $1, $2, p, $4, $5 FROM unnest($3::int[]) AS p
ON CONFLICT (queue, topic, partition) DO UPDATE
SET partitions = EXCLUDED.partitions,
    caught_up_at = GREATEST(t.caught_up_at, EXCLUDED.caught_up_at)
"""

SELECT_PROGRESS = """
SELECT partition, partitions, caught_up_at FROM publisher_log_progress
WHERE queue = $1 AND topic = $2
"""

SELECT_AGENT_HOURS = """
SELECT created_at FROM publisher_events
WHERE queue = $1 AND event_type = $2 AND created_at >= $3
"""

AGENT_HOUR_QUEUED = """
SELECT EXISTS (
    SELECT 1 FROM publisher_events WHERE queue = $1 AND event_type = $2 AND created_at = $3
)
"""

SUM_AGENT_HOUR = """
SELECT COALESCE(sum(runtime_ms), 0) FROM publisher_agent_runtime WHERE queue = $1 AND hour = $2
"""

INSERT_AGENT_HOUR = """
INSERT INTO publisher_events (queue, id, event_type, event_data, created_at)
VALUES ($1, $2, $3, $4::jsonb, $5)
ON CONFLICT DO NOTHING
RETURNING true
"""

PRUNE_RUNTIME = """
DELETE FROM publisher_agent_runtime
WHERE ctid IN (
    SELECT ctid FROM publisher_agent_runtime WHERE queue = $1 AND hour < $2 LIMIT 10000
)
"""

AGENT_TIME_REPORT = f"""
WITH counted AS (
    SELECT hour, sum(runtime_ms) AS runtime_ms
    FROM publisher_agent_runtime
    WHERE queue = $1 AND hour >= $2
    GROUP BY hour
), reported AS (
    SELECT created_at AS hour, id, status, (event_data ->> 'runtime_ms')::bigint AS runtime_ms
    FROM publisher_events
    WHERE queue = $1 AND event_type = '{HB_AGENT_RUNTIME}' AND created_at >= $2
)
SELECT COALESCE(r.hour, c.hour) AS hour, r.id, r.status, r.runtime_ms AS reported,
       COALESCE(c.runtime_ms, 0) AS counted
FROM reported r
FULL JOIN counted c ON c.hour = r.hour
ORDER BY 1
"""  # noqa: S608  # composed from constants only

EXPORT_PENDING = """
SELECT id, event_type, event_data::text AS event_data, created_at
FROM publisher_events
WHERE queue = $1 AND status = 'pending' AND created_at >= $2
ORDER BY created_at, id
"""

# Receipts may arrive for rows this publisher expired meanwhile: the server has them, so
# they are published after all.
RECEIPT_PUBLISHED = """
UPDATE publisher_events
SET status = 'published', finished_at = now(), claimed_by = NULL, claimed_until = NULL
WHERE queue = $1 AND id = ANY($2::text[]) AND status IN ('pending', 'expired')
RETURNING id
"""

RECEIPT_REJECTED = """
UPDATE publisher_events e
SET status = 'rejected', finished_at = now(), last_error = r.message,
    claimed_by = NULL, claimed_until = NULL
FROM unnest($2::text[], $3::text[]) AS r(id, message)
WHERE e.queue = $1 AND e.id = r.id AND e.status IN ('pending', 'expired')
RETURNING e.id
"""

KNOWN_IDS = "SELECT id FROM publisher_events WHERE queue = $1 AND id = ANY($2::text[])"

RETRY_NOW = """
UPDATE publisher_events SET next_attempt_at = now()
WHERE queue = $1 AND status = 'pending' AND next_attempt_at > now()
  AND (claimed_until IS NULL OR claimed_until < now())
"""
