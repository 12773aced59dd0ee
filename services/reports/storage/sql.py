"""The read side's SQL, as named statements over the rollups and the archive."""

from __future__ import annotations

from typing import Final

from libs.events.bounds import MAX_TOTAL

# Activity is summed bucket by bucket, in two statements. The first reads what the rollups
# cannot give, the parts of days that bucket edges cut off, from the archive: the day's rollup
# rows say which users had a session there and how early the earliest began; their sessions
# are clipped exactly as the projection clips them ($5: the longest session counted, in ms).
# The second reads each bucket's rollup spans, adds the first one's rows for that bucket, sums
# per user (which also merges a user active in several orgs), and writes the result; no sort
# or hash spans more than one bucket. `OFFSET 0` keeps the planner from flattening a LATERAL
# into a join that it would answer with a sequential scan.
_SESSION_END = (
    "e.occurred_at + LEAST((e.data->>'duration_ms')::bigint, $5) * interval '1 millisecond'"
)
SELECT_ACTIVITY_EDGES: Final = f"""
SELECT r.bucket, e.user_id,
       LEAST(sum(GREATEST(0, extract(epoch FROM LEAST({_SESSION_END}, r.hi)
                                          - GREATEST(e.occurred_at, r.lo)) * 1000000)),
             {MAX_TOTAL})::bigint AS duration_us,
       LEAST(sum(CASE WHEN e.occurred_at >= r.lo THEN (e.data->>'count')::bigint ELSE 0 END),
             {MAX_TOTAL})::bigint AS sessions
FROM unnest($1::int4[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[])
     AS r (bucket, day, lo, hi)
CROSS JOIN LATERAL (
    SELECT h.user_id, h.org_id, h.first_start
    FROM reports_activity h
    WHERE h.grain = 'd' AND h.category = $6 AND h.period = r.day
      AND ($7::text IS NULL OR h.org_id = $7)
    OFFSET 0
) AS h
CROSS JOIN LATERAL (
    SELECT e.user_id, e.occurred_at, e.data
    FROM reports_events e
    WHERE e.type = 'activity.session.v1' AND e.user_id = h.user_id
      AND e.occurred_at >= h.first_start AND e.occurred_at < r.hi
      AND COALESCE(e.org_id, '') = h.org_id
      AND ($6 = '*' OR e.data->>'category' = $6)
    OFFSET 0
) AS e
WHERE e.occurred_at >= r.lo OR {_SESSION_END} > r.lo
GROUP BY r.bucket, e.user_id
"""  # noqa: S608  # composed from constants only

# $1-$3 rollup spans (grain, lo, hi) and $7-$8 each bucket's slice of them; $4-$6 the edges'
# (user, µs, sessions) and $9-$10 each bucket's slice of those; $11 category, $12 org or NULL.
_ACTIVITY_BUCKETS = "unnest($7::int4[], $8::int4[], $9::int4[], $10::int4[]) WITH ORDINALITY"
_ROLLUP_ROWS = """
        SELECT a.user_id, a.duration_us, a.sessions
        FROM unnest(($1::text[])[b.first:b.last], ($2::timestamptz[])[b.first:b.last],
                    ($3::timestamptz[])[b.first:b.last]) AS r (grain, lo, hi)
        CROSS JOIN LATERAL (
            SELECT a.user_id, a.duration_us, a.sessions
            FROM reports_activity a
            WHERE a.grain = r.grain::"char" AND a.category = $11
              AND a.period >= r.lo AND a.period < r.hi
              AND ($12::text IS NULL OR a.org_id = $12)
            OFFSET 0
        ) AS a"""
_BUCKET_USERS: Final = f"""
    SELECT p.user_id, LEAST(sum(p.duration_us), {MAX_TOTAL})::bigint AS duration_us,
           LEAST(sum(p.sessions), {MAX_TOTAL})::bigint AS sessions
    FROM (
        {_ROLLUP_ROWS}
        UNION ALL
        SELECT x.user_id, x.duration_us, x.sessions
        FROM unnest(($4::text[])[b.x_first:b.x_last], ($5::int8[])[b.x_first:b.x_last],
                    ($6::int8[])[b.x_first:b.x_last]) AS x (user_id, duration_us, sessions)
    ) AS p
    GROUP BY p.user_id
"""  # noqa: S608  # composed from constants only

# Each bucket's users, longest first (then by id, byte-wise), as parallel columns.
SELECT_ACTIVITY: Final = f"""
SELECT (b.n - 1)::int4 AS bucket, f.user_ids, f.durations, f.counts
FROM {_ACTIVITY_BUCKETS} AS b (first, last, x_first, x_last, n)
CROSS JOIN LATERAL (
    SELECT array_agg(u.user_id ORDER BY u.duration_us DESC, u.user_id COLLATE "C") AS user_ids,
           array_agg(u.duration_us ORDER BY u.duration_us DESC, u.user_id COLLATE "C")
               AS durations,
           array_agg(u.sessions ORDER BY u.duration_us DESC, u.user_id COLLATE "C") AS counts
    FROM ({_BUCKET_USERS}) AS u
    WHERE u.duration_us <> 0 OR u.sessions <> 0
) AS f
WHERE f.user_ids IS NOT NULL
"""  # noqa: S608  # composed from constants only

# The Activity response's big parts, written by PostgreSQL as JSON text, exactly as
# `domain.activity_body` writes them from `SELECT_ACTIVITY` and the profiles: each bucket's
# `user_activity` items, and, in the row with bucket -1, the members of the `users` map. That
# row comes from the plan's extra last bucket, the whole range: a user's totals are the sums
# of their bucket figures (the rollups of every grain add up to the same microseconds), read
# from as few rollup rows as cover the range. So fifty thousand entries never become Python
# objects. Durations are never negative, so `/` is the floor division the body uses.
# A bucket that is one rollup period is read as it is stored, without summing per user, unless
# the range's months ($14-$15) hold activity of several orgs and no org was asked for ($13:
# which buckets are one period).
_ITEM = """concat('{"user_id":', to_json(u.user_id), ',"duration":', u.duration_us / 1000,
                      ',"count":', u.sessions, '}')"""
_ITEMS = f"""string_agg({_ITEM}, ',' ORDER BY u.duration_us DESC, u.user_id COLLATE "C")"""
SELECT_ACTIVITY_JSON: Final = f"""
WITH orgs AS (
    SELECT CASE WHEN $12::text IS NULL THEN (
               SELECT min(a.org_id) IS DISTINCT FROM max(a.org_id)
               FROM reports_activity a
               WHERE a.grain = 'm' AND a.category = $11 AND a.period >= $14 AND a.period < $15
           ) ELSE false END AS several
)
SELECT (b.n - 1)::int4 AS bucket, f.items
FROM unnest($7::int4[], $8::int4[], $9::int4[], $10::int4[], $13::bool[]) WITH ORDINALITY
     AS b (first, last, x_first, x_last, single, n)
CROSS JOIN orgs AS o
CROSS JOIN LATERAL (
    SELECT CASE WHEN b.single AND NOT o.several
        THEN (SELECT {_ITEMS} FROM ({_ROLLUP_ROWS}) AS u
              WHERE u.duration_us <> 0 OR u.sessions <> 0)
        ELSE (SELECT {_ITEMS} FROM ({_BUCKET_USERS}) AS u
              WHERE u.duration_us <> 0 OR u.sessions <> 0)
    END AS items
    OFFSET 0
) AS f
WHERE b.n < cardinality($7::int4[]) AND f.items IS NOT NULL
UNION ALL
SELECT -1, f.items
FROM unnest($7::int4[], $8::int4[], $9::int4[], $10::int4[]) WITH ORDINALITY
     AS b (first, last, x_first, x_last, n)
CROSS JOIN LATERAL (
    SELECT string_agg(
               concat(to_json(u.user_id), ':{{"id":', to_json(u.user_id),
                      ',"name":', to_json(COALESCE(d.name, '')),
                      ',"username":', to_json(COALESCE(d.username, '')),
                      ',"roles":', COALESCE(to_json(d.roles)::text, '[]'),
                      ',"avatar_hash":', COALESCE(to_json(d.avatar_hash)::text, 'null'),
                      ',"total_count":', u.sessions,
                      ',"total_duration":', u.duration_us / 1000, '}}'),
               ',' ORDER BY u.user_id COLLATE "C") AS items
    FROM ({_BUCKET_USERS}) AS u
    LEFT JOIN reports_users d ON d.user_id = u.user_id
    WHERE u.duration_us <> 0 OR u.sessions <> 0
) AS f
WHERE b.n = cardinality($7::int4[]) AND f.items IS NOT NULL
"""  # noqa: S608  # composed from constants only

# Sorts and hashes of one bucket's users fit in memory with room to spare.
ACTIVITY_WORK_MEM: Final = "SET LOCAL work_mem = '64MB'"
# For the per-bucket statements: the rows of a rollup period lie on a few hundred heap pages,
# which a bitmap scan reads once each and in order (from disk, with read-ahead) where an index
# scan visits a page once per row; and the planner, which cannot know a bucket holds about
# one row per user, would sort each bucket by user to sum it rather than hash it. Measured on
# a year by week over 10 million events: 87 ms without these settings, 68 ms with them. The
# edges' statement runs before them: it looks up a few rows per user, where an index scan is
# the right tool.
ACTIVITY_PLANNER: Final = "SET LOCAL enable_indexscan = off; SET LOCAL enable_sort = off"

SELECT_PROFILES: Final = """
SELECT u.user_id, u.username, u.name, u.email, u.roles, u.avatar_hash, u.created_at,
       u.suspended, u.licensed
FROM reports_users u
WHERE u.user_id = ANY($1::text[])
"""

SELECT_ALL_PROFILES: Final = """
SELECT u.user_id, u.username, u.name, u.email, u.roles, u.avatar_hash, u.created_at,
       u.suspended, u.licensed
FROM reports_users u
"""

# Chat usage of what a range cuts off the rollups' finest periods, straight from the archive:
# every user's (parts of hours, for the cost list), or some users' (parts of days, $6).
_EXACT_CHAT = """
    FROM unnest($4::timestamptz[], $5::timestamptz[]) AS x (lo, hi)
    CROSS JOIN LATERAL (
        SELECT e.user_id, e.data
        FROM reports_events e
        WHERE e.type = 'chat.usage.v1' AND e.occurred_at >= x.lo AND e.occurred_at < x.hi
          AND e.data->>'purpose' = 'chat'
        OFFSET 0
    ) AS e"""

_EXACT_USERS_CHAT = """
    FROM unnest($4::timestamptz[], $5::timestamptz[]) AS x (lo, hi)
    CROSS JOIN unnest($6::text[]) AS u (user_id)
    CROSS JOIN LATERAL (
        SELECT e.user_id, e.data
        FROM reports_events e
        WHERE e.type = 'chat.usage.v1' AND e.user_id = u.user_id
          AND e.occurred_at >= x.lo AND e.occurred_at < x.hi
          AND e.data->>'purpose' = 'chat'
        OFFSET 0
    ) AS e"""

_EXACT_SUMS = """(e.data->>'cost_micros')::bigint, 1,
           (e.data->>'cost_micros' IS NOT NULL)::int, (e.data->>'input_tokens')::bigint,
           (e.data->>'output_tokens')::bigint, (e.data->>'cache_read_tokens')::bigint,
           (e.data->>'cache_write_tokens')::bigint,
           COALESCE((e.data->>'reasoning_tokens')::bigint, 0),
           COALESCE((e.data->>'runtime_ms')::bigint, 0)"""

_ROLLUP_SUMS = """t.cost_micros, t.messages, t.priced_messages, t.input_tokens,
           t.output_tokens, t.cache_read_tokens, t.cache_write_tokens, t.reasoning_tokens,
           t.runtime_ms"""

# Sums saturate at MAX_TOTAL like every total (see libs.events.bounds): never a bigint overflow.
_SUMS = f"""LEAST(COALESCE(sum(cost_micros), 0), {MAX_TOTAL})::bigint AS cost_micros,
       LEAST(sum(messages), {MAX_TOTAL})::bigint AS messages,
       LEAST(sum(priced_messages), {MAX_TOTAL})::bigint AS priced_messages,
       LEAST(sum(input_tokens), {MAX_TOTAL})::bigint AS input_tokens,
       LEAST(sum(output_tokens), {MAX_TOTAL})::bigint AS output_tokens,
       LEAST(sum(cache_read_tokens), {MAX_TOTAL})::bigint AS cache_read_tokens,
       LEAST(sum(cache_write_tokens), {MAX_TOTAL})::bigint AS cache_write_tokens,
       LEAST(sum(reasoning_tokens), {MAX_TOTAL})::bigint AS reasoning_tokens,
       LEAST(sum(runtime_ms), {MAX_TOTAL})::bigint AS runtime_ms"""

_TOTALS_SPANS = """
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS r (grain, lo, hi)
    CROSS JOIN LATERAL (
        SELECT t.*
        FROM reports_chat_totals t
        WHERE t.grain = r.grain::"char" AND t.period >= r.lo AND t.period < r.hi
        OFFSET 0
    ) AS t"""

SELECT_COST_USERS: Final = f"""
WITH parts (user_id, cost_micros, messages, priced_messages, input_tokens, output_tokens,
            cache_read_tokens, cache_write_tokens, reasoning_tokens, runtime_ms) AS (
    SELECT t.user_id, {_ROLLUP_SUMS}{_TOTALS_SPANS}
    UNION ALL
    SELECT e.user_id, {_EXACT_SUMS}{_EXACT_CHAT}
), totals AS (
    SELECT user_id, {_SUMS}
    FROM parts
    GROUP BY user_id
)
SELECT totals.*, u.username, u.name, u.email, u.roles, u.avatar_hash, u.created_at,
       u.suspended, u.licensed, count(*) OVER () AS matched
FROM totals
LEFT JOIN reports_users u ON u.user_id = totals.user_id
WHERE $6::text IS NULL OR u.username ILIKE $6 OR u.name ILIKE $6 OR totals.user_id = $7
ORDER BY totals.cost_micros DESC, u.username ASC NULLS LAST, totals.user_id ASC
LIMIT $8 OFFSET $9
"""  # noqa: S608  # composed from constants only
SELECT_COST_USERS_ASCENDING: Final = SELECT_COST_USERS.replace(
    "ORDER BY totals.cost_micros DESC", "ORDER BY totals.cost_micros ASC"
)

SELECT_DIRECTORY_USERS: Final = """
SELECT u.user_id, u.username, u.name, u.email, u.roles, u.avatar_hash, u.created_at,
       u.suspended, u.licensed, count(*) OVER () AS matched
FROM reports_users u
WHERE $1::text IS NULL OR u.username ILIKE $1 OR u.name ILIKE $1 OR u.user_id = $2
ORDER BY u.username, u.user_id
LIMIT $3 OFFSET $4
"""

SELECT_DIRECTORY_GROUPS: Final = """
SELECT group_id, name, org_id,
       (SELECT count(DISTINCT m) FROM unnest(member_ids) AS m)::int AS members
FROM reports_groups
ORDER BY name, group_id
"""

_DETAIL_SPANS = """
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS r (grain, lo, hi)
    CROSS JOIN unnest($6::text[]) AS u (user_id)
    CROSS JOIN LATERAL (
        SELECT t.*
        FROM reports_chat_detail t
        WHERE t.user_id = u.user_id AND t.grain = r.grain::"char"
          AND t.period >= r.lo AND t.period < r.hi
        OFFSET 0
    ) AS t"""

SELECT_CHAT_COUNTS: Final = f"""
SELECT user_id, count(DISTINCT root_chat_id) AS chats
FROM (
    SELECT t.user_id, t.root_chat_id{_DETAIL_SPANS}
    UNION ALL
    SELECT e.user_id, COALESCE(e.data->>'root_chat_id', e.data->>'chat_id'){_EXACT_USERS_CHAT}
) AS parts
GROUP BY user_id
"""  # noqa: S608  # composed from constants only

SELECT_COST_DETAIL: Final = f"""
WITH parts (model, provider, root_chat_id, cost_micros, messages, priced_messages,
            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
            reasoning_tokens, runtime_ms) AS (
    SELECT t.model, t.provider, t.root_chat_id, {_ROLLUP_SUMS}{_DETAIL_SPANS}
    UNION ALL
    SELECT e.data->>'model', COALESCE(e.data->>'provider', ''),
           COALESCE(e.data->>'root_chat_id', e.data->>'chat_id'), {_EXACT_SUMS}{_EXACT_USERS_CHAT}
)
SELECT model, provider, root_chat_id, {_SUMS}
FROM parts
GROUP BY model, provider, root_chat_id
"""  # noqa: S608  # composed from constants only

SELECT_USER_KNOWN: Final = """
SELECT EXISTS (SELECT 1 FROM reports_users WHERE user_id = $1)
    OR EXISTS (SELECT 1 FROM reports_chat_detail WHERE user_id = $1)
"""

SELECT_TEAMS: Final = "SELECT team_id, name, member_ids FROM reports_teams"

SELECT_PROJECTS: Final = """
SELECT p.project_id, p.team_id, p.name, s.size_mb, s.experiment_count, s.user_id
FROM reports_projects p
LEFT JOIN reports_storage s ON s.project_id = p.project_id AND s.month = $1
"""

SELECT_MONTH_API_USAGE: Final = """
SELECT user_id, client, calls, last_at FROM reports_api_usage WHERE month = $1
"""

SELECT_MONTH_BUILDS: Final = """
SELECT user_id, builds, agent_builds FROM reports_builds WHERE month = $1
"""

SELECT_MONTH_COSTS: Final = """
SELECT user_id, cost_micros FROM reports_chat_totals WHERE grain = 'm' AND period = $1
"""
