"""The write side: a batch of events into the archive and the rollups, in the caller's transaction.

A batch is copied into a temporary staging table, inserted into the archive with
`ON CONFLICT (id, type, subject) DO NOTHING` (an event's identity: see
`Envelope.identity`), and every staged row whose identity was already archived is dropped
from the stage. The rollups are then computed from what is left, set-wise, one statement per
event type. So an event seen before (a replay, a retried batch, a zombie consumer after a
rebalance) changes nothing, and a batch costs a fixed handful of round trips whatever its size.
Every sum saturates at `MAX_TOTAL` (see `libs.events.bounds`), so no rollup can overflow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from libs.events.bounds import MAX_TOTAL
from libs.events.models import ActivitySessionRecorded, ChatUsageRecorded
from libs.service.consumer import Consumed
from libs.service.db import Connection

__all__ = ["ProjectionOutcome", "Projector"]

STAGE_TABLE: Final = "reports_stage"
STAGE_COLUMNS: Final = (
    "id",
    "type",
    "subject",
    "occurred_at",
    "org_id",
    "user_id",
    "log_partition",
    "log_offset",
    "data",
)

# Periods are computed with date_trunc and interval arithmetic, which follow the session's
# time zone: pin it to UTC for this transaction whatever the server's default is.
PREPARE_STAGE: Final = """
SET LOCAL timezone = 'UTC';
CREATE TEMP TABLE IF NOT EXISTS reports_stage (
    id             text COLLATE "C" NOT NULL,
    type           text        NOT NULL,
    subject        text COLLATE "C" NOT NULL,
    occurred_at    timestamptz NOT NULL,
    org_id         text,
    user_id        text,
    log_partition  integer     NOT NULL,
    log_offset     bigint      NOT NULL,
    data           jsonb       NOT NULL
) ON COMMIT DELETE ROWS;
"""

# Archive what is new (in id order, so concurrent writers lock in the same order) and keep
# only the new rows in the stage; the ids that were already archived come back.
TAKE_FRESH: Final = """
WITH fresh AS (
    INSERT INTO reports_events
        (id, type, subject, occurred_at, org_id, user_id, log_partition, log_offset, data)
    SELECT id, type, subject, occurred_at, org_id, user_id, log_partition, log_offset, data
    FROM reports_stage
    ORDER BY id, type, subject
    ON CONFLICT (id, type, subject) DO NOTHING
    RETURNING id, type, subject
)
DELETE FROM reports_stage s
WHERE NOT EXISTS (
    SELECT 1 FROM fresh f WHERE f.id = s.id AND f.type = s.type AND f.subject = s.subject
)
RETURNING s.id, s.type, s.subject
"""


def _add(table: str, *columns: str) -> str:
    """`col = LEAST(LEAST(t.col, MAX_TOTAL) + EXCLUDED.col, MAX_TOTAL)` for each column.

    The stored value is brought under the cap first, so a total written before the cap was
    enforced cannot overflow either.
    """
    return ",\n    ".join(
        f"{c} = LEAST(LEAST({table}.{c}, {MAX_TOTAL}) + EXCLUDED.{c}, {MAX_TOTAL})" for c in columns
    )


def _sum(expression: str) -> str:
    return f"LEAST(sum({expression}), {MAX_TOTAL})"


_CHAT_SUMS = ", ".join(
    (
        f"LEAST(COALESCE(sum(c.cost), 0), {MAX_TOTAL})",
        "count(*)",
        "count(c.cost)",
        _sum("c.input_tokens"),
        _sum("c.output_tokens"),
        _sum("c.cache_read_tokens"),
        _sum("c.cache_write_tokens"),
        _sum("c.reasoning_tokens"),
        _sum("c.runtime_ms"),
    )
)
_CHAT_ADDS = (
    "cost_micros",
    "messages",
    "priced_messages",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "runtime_ms",
)

# Title generation is left out here, so it is out of every cost view.
ROLLUP_CHAT: Final = f"""
WITH chat AS MATERIALIZED (
    SELECT user_id, occurred_at,
           data->>'model' AS model,
           COALESCE(data->>'provider', '') AS provider,
           COALESCE(data->>'root_chat_id', data->>'chat_id') AS root_chat_id,
           (data->>'cost_micros')::bigint AS cost,
           (data->>'input_tokens')::bigint AS input_tokens,
           (data->>'output_tokens')::bigint AS output_tokens,
           (data->>'cache_read_tokens')::bigint AS cache_read_tokens,
           (data->>'cache_write_tokens')::bigint AS cache_write_tokens,
           COALESCE((data->>'reasoning_tokens')::bigint, 0) AS reasoning_tokens,
           COALESCE((data->>'runtime_ms')::bigint, 0) AS runtime_ms
    FROM reports_stage
    WHERE type = 'chat.usage.v1' AND data->>'purpose' = 'chat'
), totals AS (
    INSERT INTO reports_chat_totals AS t
        (grain, period, user_id, cost_micros, messages, priced_messages, input_tokens,
         output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, runtime_ms)
    SELECT g.grain, date_trunc(g.unit, c.occurred_at), c.user_id, {_CHAT_SUMS}
    FROM chat c
    CROSS JOIN (VALUES ('h'::"char", 'hour'), ('d', 'day'), ('m', 'month')) AS g (grain, unit)
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (grain, period, user_id) DO UPDATE SET
    {_add("t", *_CHAT_ADDS)}
)
INSERT INTO reports_chat_detail AS t
    (user_id, grain, period, model, provider, root_chat_id, cost_micros, messages,
     priced_messages, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
     reasoning_tokens, runtime_ms)
SELECT c.user_id, g.grain, date_trunc(g.unit, c.occurred_at), c.model, c.provider,
       c.root_chat_id, {_CHAT_SUMS}
FROM chat c
CROSS JOIN (VALUES ('d'::"char", 'day')) AS g (grain, unit)
GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 1, 2, 3, 4, 5, 6
ON CONFLICT (user_id, grain, period, model, provider, root_chat_id) DO UPDATE SET
    {_add("t", *_CHAT_ADDS)}
"""  # noqa: S608  # composed from constants only

# A session is [occurred_at, occurred_at + duration_ms). It is cut at every day, ISO week and
# month boundary; each piece adds its overlap (µs) to its period, and the period holding the
# start adds the session's count. Every piece is added under its category and under '*'.
ROLLUP_ACTIVITY_TEMPLATE: Final = """
WITH s AS MATERIALIZED (
    SELECT user_id, COALESCE(org_id, '') AS org_id, data->>'category' AS category,
           occurred_at AS started_at,
           occurred_at + LEAST((data->>'duration_ms')::bigint, {max_ms})
               * interval '1 millisecond' AS ended_at,
           (data->>'count')::bigint AS sessions
    FROM reports_stage
    WHERE type = 'activity.session.v1'
), pieces AS (
    SELECT g.grain, p.period, s.user_id, s.org_id, s.category,
           (extract(epoch FROM LEAST(s.ended_at, p.period + g.step)
                               - GREATEST(s.started_at, p.period)) * 1000000)::bigint
               AS duration_us,
           CASE WHEN p.period = date_trunc(g.unit, s.started_at) THEN s.sessions ELSE 0 END
               AS sessions,
           s.started_at
    FROM s
    CROSS JOIN (VALUES ('d'::"char", 'day', interval '1 day'),
                       ('w', 'week', interval '1 week'),
                       ('m', 'month', interval '1 month')) AS g (grain, unit, step)
    CROSS JOIN LATERAL generate_series(
        date_trunc(g.unit, s.started_at),
        date_trunc(g.unit, GREATEST(s.started_at, s.ended_at - interval '1 microsecond')),
        g.step) AS p (period)
)
INSERT INTO reports_activity AS a
    (grain, category, period, org_id, user_id, duration_us, sessions, first_start)
SELECT pieces.grain, c.category, pieces.period, pieces.org_id, pieces.user_id,
       LEAST(sum(pieces.duration_us), {max_total}), LEAST(sum(pieces.sessions), {max_total}),
       min(pieces.started_at)
FROM pieces
CROSS JOIN LATERAL (VALUES (pieces.category), ('*')) AS c (category)
GROUP BY 1, 2, 3, 4, 5
ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (grain, category, period, org_id, user_id) DO UPDATE SET
    {adds},
    first_start = LEAST(a.first_start, EXCLUDED.first_start)
"""

ROLLUP_API_USAGE: Final = f"""
INSERT INTO reports_api_usage AS u (month, user_id, client, calls, last_at)
SELECT date_trunc('month', occurred_at), user_id, data->>'client',
       {_sum("(data->>'count')::bigint")}, max(occurred_at)
FROM reports_stage
WHERE type = 'api.usage.v1'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
ON CONFLICT (month, user_id, client) DO UPDATE SET
    {_add("u", "calls")},
    last_at = GREATEST(u.last_at, EXCLUDED.last_at)
"""  # noqa: S608  # composed from constants only

ROLLUP_BUILDS: Final = f"""
INSERT INTO reports_builds AS b (month, user_id, builds, agent_builds)
SELECT date_trunc('month', occurred_at), user_id, count(*),
       count(*) FILTER (WHERE (data->>'agent_managed')::boolean)
FROM reports_stage
WHERE type = 'workspace.build.v1'
GROUP BY 1, 2
ORDER BY 1, 2
ON CONFLICT (month, user_id) DO UPDATE SET
    {_add("b", "builds", "agent_builds")}
"""  # noqa: S608  # composed from constants only

# Gauges and directory state: the newest event (occurred_at, then log position) wins, both
# within the batch (DISTINCT ON) and against what is stored (the WHERE of the upsert).
ROLLUP_STORAGE: Final = """
INSERT INTO reports_storage AS s
    (month, project_id, size_mb, experiment_count, user_id, occurred_at, log_partition,
     log_offset)
SELECT DISTINCT ON (1, 2)
       date_trunc('month', occurred_at), data->>'project_id', (data->>'size_mb')::float8,
       (data->>'experiment_count')::bigint, user_id, occurred_at, log_partition, log_offset
FROM reports_stage
WHERE type = 'storage.sample.v1'
ORDER BY 1, 2, occurred_at DESC, log_partition DESC, log_offset DESC
ON CONFLICT (month, project_id) DO UPDATE SET
    size_mb = EXCLUDED.size_mb,
    experiment_count = EXCLUDED.experiment_count,
    user_id = EXCLUDED.user_id,
    occurred_at = EXCLUDED.occurred_at,
    log_partition = EXCLUDED.log_partition,
    log_offset = EXCLUDED.log_offset
WHERE (s.occurred_at, s.log_partition, s.log_offset)
    < (EXCLUDED.occurred_at, EXCLUDED.log_partition, EXCLUDED.log_offset)
"""

ROLLUP_USERS: Final = """
INSERT INTO reports_users AS d
    (user_id, org_id, username, name, email, roles, avatar_hash, created_at, suspended,
     licensed, occurred_at, log_partition, log_offset)
SELECT DISTINCT ON (user_id)
       user_id, org_id, data->>'username', data->>'name', data->>'email',
       ARRAY(SELECT jsonb_array_elements_text(data->'roles')), data->>'avatar_hash',
       (data->>'created_at')::timestamptz, (data->>'suspended')::boolean,
       (data->>'licensed')::boolean, occurred_at, log_partition, log_offset
FROM reports_stage
WHERE type = 'directory.user.v1'
ORDER BY user_id, occurred_at DESC, log_partition DESC, log_offset DESC
ON CONFLICT (user_id) DO UPDATE SET
    org_id = EXCLUDED.org_id,
    username = EXCLUDED.username,
    name = EXCLUDED.name,
    email = EXCLUDED.email,
    roles = EXCLUDED.roles,
    avatar_hash = EXCLUDED.avatar_hash,
    created_at = EXCLUDED.created_at,
    suspended = EXCLUDED.suspended,
    licensed = EXCLUDED.licensed,
    occurred_at = EXCLUDED.occurred_at,
    log_partition = EXCLUDED.log_partition,
    log_offset = EXCLUDED.log_offset
WHERE (d.occurred_at, d.log_partition, d.log_offset)
    < (EXCLUDED.occurred_at, EXCLUDED.log_partition, EXCLUDED.log_offset)
"""

ROLLUP_GROUPS: Final = """
INSERT INTO reports_groups AS d
    (group_id, org_id, name, member_ids, occurred_at, log_partition, log_offset)
SELECT DISTINCT ON (data->>'group_id')
       data->>'group_id', org_id, data->>'name',
       ARRAY(SELECT jsonb_array_elements_text(data->'member_ids')),
       occurred_at, log_partition, log_offset
FROM reports_stage
WHERE type = 'directory.group.v1'
ORDER BY data->>'group_id', occurred_at DESC, log_partition DESC, log_offset DESC
ON CONFLICT (group_id) DO UPDATE SET
    org_id = EXCLUDED.org_id,
    name = EXCLUDED.name,
    member_ids = EXCLUDED.member_ids,
    occurred_at = EXCLUDED.occurred_at,
    log_partition = EXCLUDED.log_partition,
    log_offset = EXCLUDED.log_offset
WHERE (d.occurred_at, d.log_partition, d.log_offset)
    < (EXCLUDED.occurred_at, EXCLUDED.log_partition, EXCLUDED.log_offset)
"""

ROLLUP_TEAMS: Final = """
INSERT INTO reports_teams AS d
    (team_id, org_id, name, member_ids, occurred_at, log_partition, log_offset)
SELECT DISTINCT ON (data->>'team_id')
       data->>'team_id', org_id, data->>'name',
       ARRAY(SELECT jsonb_array_elements_text(data->'member_ids')),
       occurred_at, log_partition, log_offset
FROM reports_stage
WHERE type = 'directory.team.v1'
ORDER BY data->>'team_id', occurred_at DESC, log_partition DESC, log_offset DESC
ON CONFLICT (team_id) DO UPDATE SET
    org_id = EXCLUDED.org_id,
    name = EXCLUDED.name,
    member_ids = EXCLUDED.member_ids,
    occurred_at = EXCLUDED.occurred_at,
    log_partition = EXCLUDED.log_partition,
    log_offset = EXCLUDED.log_offset
WHERE (d.occurred_at, d.log_partition, d.log_offset)
    < (EXCLUDED.occurred_at, EXCLUDED.log_partition, EXCLUDED.log_offset)
"""

ROLLUP_PROJECTS: Final = """
INSERT INTO reports_projects AS d
    (project_id, org_id, team_id, name, occurred_at, log_partition, log_offset)
SELECT DISTINCT ON (data->>'project_id')
       data->>'project_id', org_id, data->>'team_id', data->>'name',
       occurred_at, log_partition, log_offset
FROM reports_stage
WHERE type = 'directory.project.v1'
ORDER BY data->>'project_id', occurred_at DESC, log_partition DESC, log_offset DESC
ON CONFLICT (project_id) DO UPDATE SET
    org_id = EXCLUDED.org_id,
    team_id = EXCLUDED.team_id,
    name = EXCLUDED.name,
    occurred_at = EXCLUDED.occurred_at,
    log_partition = EXCLUDED.log_partition,
    log_offset = EXCLUDED.log_offset
WHERE (d.occurred_at, d.log_partition, d.log_offset)
    < (EXCLUDED.occurred_at, EXCLUDED.log_partition, EXCLUDED.log_offset)
"""


@dataclass(slots=True)
class ProjectionOutcome:
    """What one batch did: new events by type, ids seen before, chat cost added, lag input."""

    fresh: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    cost_by_model: Counter[str] = field(default_factory=Counter)
    clamped_sessions: int = 0
    newest_log_ms: int | None = None

    @property
    def fresh_total(self) -> int:
        """New events in the batch."""
        return sum(self.fresh.values())


class Projector:
    """Projects batches of consumed events inside a transaction the caller owns."""

    def __init__(self, *, max_session_hours: int = 744) -> None:
        self.max_session_ms = int(max_session_hours) * 3_600_000
        # Statement per type, in one fixed order so that concurrent writers lock alike.
        self._rollups: tuple[tuple[str, str], ...] = (
            ("directory.user.v1", ROLLUP_USERS),
            ("directory.group.v1", ROLLUP_GROUPS),
            ("directory.team.v1", ROLLUP_TEAMS),
            ("directory.project.v1", ROLLUP_PROJECTS),
            ("chat.usage.v1", ROLLUP_CHAT),
            (
                "activity.session.v1",
                ROLLUP_ACTIVITY_TEMPLATE.format(
                    max_ms=self.max_session_ms,
                    max_total=MAX_TOTAL,
                    adds=_add("a", "duration_us", "sessions"),
                ),
            ),
            ("api.usage.v1", ROLLUP_API_USAGE),
            ("workspace.build.v1", ROLLUP_BUILDS),
            ("storage.sample.v1", ROLLUP_STORAGE),
        )

    async def project(self, conn: Connection, events: Sequence[Consumed]) -> ProjectionOutcome:
        """Archive new events and add them to the rollups; ids seen before change nothing."""
        outcome = ProjectionOutcome()
        if not events:
            return outcome
        records: list[tuple[object, ...]] = []
        staged: dict[tuple[str, str, str], Consumed] = {}
        for item in events:
            event = item.event
            if outcome.newest_log_ms is None or item.timestamp_ms > outcome.newest_log_ms:
                outcome.newest_log_ms = item.timestamp_ms
            subject = event.partition_key
            key: tuple[str, str, str] = (event.id, event.type, subject)
            if key in staged:
                outcome.duplicates[event.type] += 1
                continue
            staged[key] = item
            records.append(
                (
                    event.id,
                    event.type,
                    subject,
                    event.occurred_at,
                    event.org_id,
                    event.user_id,
                    item.partition,
                    item.offset,
                    event.data.model_dump_json(),
                )
            )
        await conn.execute(PREPARE_STAGE)
        await conn.copy_records_to_table(STAGE_TABLE, records=records, columns=STAGE_COLUMNS)
        seen_before = {(row[0], row[1], row[2]) for row in await conn.fetch(TAKE_FRESH)}
        types: set[str] = set()
        for key, item in staged.items():
            event = item.event
            if key in seen_before:
                outcome.duplicates[event.type] += 1
                continue
            outcome.fresh[event.type] += 1
            types.add(event.type)
            if isinstance(event, ChatUsageRecorded):
                data = event.data
                if data.purpose == "chat" and data.cost_micros:
                    outcome.cost_by_model[data.model] += data.cost_micros
            elif (
                isinstance(event, ActivitySessionRecorded)
                and event.data.duration_ms > self.max_session_ms
            ):
                outcome.clamped_sessions += 1
        script = ";\n".join(sql for kind, sql in self._rollups if kind in types)
        if script:
            await conn.execute(script)
        return outcome
