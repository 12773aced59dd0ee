"""The billing queue (`BillingQueue`): the in-memory queue and PostgreSQL behave alike.

Claims, outcomes, the failure streak, expiry and retention, seat heartbeats, builds and Agent
Time, each written once and run over both; `write` is what the consumer does with a batch
(`write_projection` in its transaction, `apply_projection` in memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.publisher.domain import (
    DC_MANAGED_AGENTS,
    HB_AGENT_RUNTIME,
    HB_AI_SEATS,
    AgentRuntime,
    BillingEvent,
    LateRuntime,
    Outcome,
    Projection,
    SeatState,
    agent_time_id,
    heartbeat_id,
)
from services.publisher.storage import (
    BillingQueue,
    InMemoryQueue,
    PostgresQueue,
    write_projection,
)
from tests.support import unique

HOLD = timedelta(seconds=30)
HOUR = datetime(2026, 11, 2, 8, tzinfo=UTC)

Write = Callable[[Projection, datetime | None], Awaitable[list[LateRuntime]]]


@dataclass
class Harness:
    """A queue of the test's own, and how a consumed batch's projection reaches it."""

    queue: BillingQueue
    write: Write

    async def due_now(self) -> datetime:
        """A cutoff by which every row not held is due."""
        return await self.queue.now()

    async def claim(self, claimant: str, *, limit: int = 100, hold: timedelta = HOLD) -> list[str]:
        """Claim what is due now; the ids claimed."""
        claimed = await self.queue.claim(
            due_by=await self.due_now(), limit=limit, claimant=claimant, hold=hold
        )
        return [c.id for c in claimed]


@pytest.fixture
async def harness(pool: asyncpg.Pool | None) -> Harness:
    """An opened queue named for this test alone."""
    name = unique("q")
    if pool is None:
        memory = InMemoryQueue(name)

        async def write_memory(
            projection: Projection, runtime_since: datetime | None
        ) -> list[LateRuntime]:
            return memory.apply_projection(projection, runtime_since=runtime_since)

        await memory.open()
        return Harness(memory, write_memory)
    db = pool
    postgres = PostgresQueue(db, name)

    async def write_postgres(
        projection: Projection, runtime_since: datetime | None
    ) -> list[LateRuntime]:
        async with db.acquire() as conn, conn.transaction():
            return await write_projection(conn, name, projection, runtime_since=runtime_since)

    await postgres.open()
    return Harness(postgres, write_postgres)


def events(n: int, *, created: datetime | None = None) -> list[BillingEvent]:
    """`n` agent-managed build events, created at `created` (now by default)."""
    at = created or datetime.now(UTC)
    return [BillingEvent(unique("e"), DC_MANAGED_AGENTS, 1, at) for _ in range(n)]


def accepted(event_id: str) -> Outcome:
    """The billing server took the event."""
    return Outcome(event_id, DC_MANAGED_AGENTS, "accepted")


def retry(event_id: str, message: str = "later", delay: timedelta = timedelta(0)) -> Outcome:
    """The event is to be sent again after `delay`."""
    return Outcome(event_id, DC_MANAGED_AGENTS, "retry", message, delay)


# -- rows and claims ---------------------------------------------------------------------------


async def test_an_id_already_queued_is_neither_added_nor_reset(harness: Harness) -> None:
    """Enqueueing a replayed id adds nothing and leaves its claim and attempts as they were."""
    queue = harness.queue
    batch = events(3)
    assert await queue.enqueue(batch) == 3
    held = await harness.claim("a", limit=1)
    assert await queue.enqueue(batch) == 0
    assert await queue.enqueue([]) == 0
    assert (await queue.status()).pending == 3
    rest = await harness.claim("b")
    assert sorted(held + rest) == sorted(e.id for e in batch)
    assert set(held).isdisjoint(rest)


async def test_a_claim_takes_due_rows_up_to_its_limit_and_holds_them(harness: Harness) -> None:
    """Claimed rows come back oldest first with their data; others claim only what is left."""
    queue = harness.queue
    now = datetime.now(UTC)
    batch = [
        BillingEvent(unique("e"), DC_MANAGED_AGENTS, 1, now - timedelta(minutes=m))
        for m in (1, 3, 2)
    ]
    await queue.enqueue(batch)
    claimed = await queue.claim(due_by=await queue.now(), limit=2, claimant="a", hold=HOLD)
    assert len(claimed) == 2
    assert [c.created_at for c in claimed] == sorted(c.created_at for c in claimed)
    assert {(c.event_type, c.attempts) for c in claimed} == {(DC_MANAGED_AGENTS, 1)}
    assert all(c.event_data == {"count": 1} for c in claimed)
    assert await harness.claim("b") == sorted({e.id for e in batch} - {c.id for c in claimed})
    assert await harness.claim("c") == []
    status = await queue.status()
    assert (status.pending, status.due) == (3, 0)


async def test_a_claim_that_runs_out_makes_its_rows_due_again(harness: Harness) -> None:
    """Rows held by a replica that never answers are due again once the claim runs out."""
    (event,) = events(1)
    await harness.queue.enqueue([event])
    assert await harness.claim("dead", hold=timedelta(milliseconds=200)) == [event.id]
    assert await harness.claim("b") == []
    await asyncio.sleep(0.3)
    again = await harness.queue.claim(
        due_by=await harness.queue.now(), limit=10, claimant="b", hold=HOLD
    )
    assert [(c.id, c.attempts) for c in again] == [(event.id, 2)]


async def test_only_the_holder_releases_a_row_for_retry_but_any_final_outcome_lands(
    harness: Harness,
) -> None:
    """A late retry from a former holder is ignored; its final answer is recorded."""
    queue = harness.queue
    (event,) = events(1)
    await queue.enqueue([event])
    await harness.claim("a", hold=timedelta(0))
    assert await harness.claim("b") == [event.id]
    await queue.settle([retry(event.id, "late")], claimant="a")
    assert await harness.claim("c") == []
    await queue.settle([accepted(event.id)], claimant="a")
    status = await queue.status()
    assert (status.pending, status.health.published_total) == (0, 1)
    await queue.settle([retry(event.id)], claimant="b")
    assert (await queue.status()).pending == 0


async def test_a_retry_waits_for_its_delay(harness: Harness) -> None:
    """A row sent back with a delay is pending but not due until the delay passes."""
    queue = harness.queue
    (event,) = events(1)
    await queue.enqueue([event])
    await harness.claim("a")
    await queue.settle([retry(event.id, "429", timedelta(hours=1))], claimant="a")
    status = await queue.status()
    assert (status.pending, status.due) == (1, 0)
    assert await harness.claim("a") == []
    later = await queue.claim(
        due_by=await queue.now() + timedelta(hours=2), limit=5, claimant="a", hold=HOLD
    )
    assert [(c.id, c.attempts) for c in later] == [(event.id, 2)]


# -- health ------------------------------------------------------------------------------------


async def test_failures_make_a_streak_that_a_success_ends(harness: Harness) -> None:
    """Each failed attempt adds to the streak; a success returns the streak it ended."""
    queue = harness.queue
    (event,) = events(1)
    await queue.enqueue([event])
    for n in (1, 2, 3):
        await harness.claim("a", hold=timedelta(0))
        streak = await queue.fail(
            [retry(event.id, "x")], claimant="a", cause="http_5xx", error="503 from billing"
        )
        assert streak == n
    health = (await queue.status()).health
    assert (health.consecutive_failures, health.last_error_cause, health.last_error) == (
        3,
        "http_5xx",
        "503 from billing",
    )
    assert health.failing_since is not None
    assert health.last_error_at is not None
    await harness.claim("b", hold=timedelta(0))
    assert await queue.settle([accepted(event.id)], claimant="b") == 3
    after = (await queue.status()).health
    assert (after.consecutive_failures, after.failing_since, after.last_error) == (
        0,
        None,
        "503 from billing",
    )
    assert after.last_success_at is not None
    assert after.published_total == 1


async def test_a_long_error_is_kept_to_its_first_2000_characters(harness: Harness) -> None:
    """A failure's error text is stored cut to 2000 characters, whatever the server sent."""
    queue = harness.queue
    await queue.fail([], claimant="a", cause="http_5xx", error="e" * 5000)
    assert (await queue.status()).health.last_error == "e" * 2000


async def test_discarded_outcomes_count_but_leave_the_streak(harness: Harness) -> None:
    """Outcomes decided locally add to the totals without ending or extending a streak."""
    queue = harness.queue
    first, second = events(2)
    await queue.enqueue([first, second])
    await queue.fail([], claimant="a", cause="timeout", error="slow")
    await harness.claim("a")
    await queue.discard(
        [accepted(first.id), Outcome(second.id, DC_MANAGED_AGENTS, "rejected", "bad")],
        claimant="a",
    )
    health = (await queue.status()).health
    assert (health.published_total, health.rejected_total, health.consecutive_failures) == (
        1,
        1,
        1,
    )


async def test_old_pending_rows_expire_once_and_are_counted(harness: Harness) -> None:
    """Pending rows older than the maximum age expire by type, once; a held one waits."""
    queue = harness.queue
    old = events(3, created=datetime.now(UTC) - timedelta(days=31))
    await queue.enqueue(old)
    await queue.enqueue([BillingEvent(unique("e"), HB_AI_SEATS, 2, datetime.now(UTC))])
    held = await harness.claim("a", limit=1)
    assert await queue.expire(timedelta(days=30)) == {DC_MANAGED_AGENTS: 2}
    assert await queue.expire(timedelta(days=30)) == {}
    status = await queue.status()
    assert (status.pending, status.health.expired_total) == (2, 2)
    await queue.settle([accepted(held[0])], claimant="a")
    assert (await queue.status()).health.published_total == 1


async def test_retention_deletes_only_final_rows_older_than_it(harness: Harness) -> None:
    """Purging removes finished rows past the retention and never a pending one."""
    queue = harness.queue
    done, waiting = events(2)
    await queue.enqueue([done, waiting])
    await harness.claim("a", limit=1)
    await queue.settle([accepted(done.id)], claimant="a")
    assert await queue.purge(timedelta(days=90)) == 0
    await asyncio.sleep(0.01)
    assert await queue.purge(timedelta(0)) == 1
    assert (await queue.status()).pending == 1
    assert await harness.claim("b") == [waiting.id]


# -- seats and builds --------------------------------------------------------------------------


async def test_one_seat_heartbeat_per_bucket_counting_every_active_ai_user(
    harness: Harness,
) -> None:
    """The bucket's heartbeat counts AI users who are active now; a bucket is queued once."""
    now = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    seats = {
        "licensed": SeatState("licensed", licensed=True, suspended=False, as_of=now),
        "unlicensed": SeatState("unlicensed", licensed=False, suspended=False, as_of=now),
        "suspended": SeatState("suspended", licensed=True, suspended=True, as_of=now),
    }
    users = dict.fromkeys(("licensed", "unlicensed", "suspended", "never-in-directory"), now) | {
        "last-year-only": now - timedelta(days=400)
    }
    await harness.write(Projection(seats=seats, ai_users=users), None)
    queue = harness.queue
    assert await queue.enqueue_heartbeat(now) == 3
    assert await queue.enqueue_heartbeat(now + timedelta(hours=1)) is None
    assert await queue.enqueue_heartbeat(now + timedelta(hours=3)) == 3
    claimed = await queue.claim(due_by=await queue.now(), limit=10, claimant="a", hold=HOLD)
    assert [(c.id, c.event_data, c.created_at) for c in claimed] == [
        (heartbeat_id(HOUR), {"count": 3}, HOUR),
        (heartbeat_id(HOUR + timedelta(hours=4)), {"count": 3}, HOUR + timedelta(hours=4)),
    ]


async def test_an_older_directory_fact_never_undoes_a_newer_one(harness: Harness) -> None:
    """Seat facts apply newest first whatever order the batches bring them in."""
    now = datetime(2026, 11, 2, 9, tzinfo=UTC)
    newer = SeatState("u", licensed=True, suspended=True, as_of=now + timedelta(hours=1))
    older = SeatState("u", licensed=True, suspended=False, as_of=now)
    await harness.write(Projection(seats={"u": newer}, ai_users={"u": now}), None)
    await harness.write(Projection(seats={"u": older}), None)
    assert await harness.queue.enqueue_heartbeat(now) == 0


async def test_the_first_copy_of_a_build_decides_whether_it_is_billed(harness: Harness) -> None:
    """A build first seen as not agent-managed is never billed; an agent-managed one once."""
    at = datetime(2026, 11, 2, 9, tzinfo=UTC)
    plain, managed = unique("build"), unique("build")
    await harness.write(Projection(builds={plain: (False, at)}), None)
    billed = [BillingEvent(b, DC_MANAGED_AGENTS, 1, at) for b in (plain, managed)]
    builds = {plain: (True, at), managed: (True, at)}
    await harness.write(Projection(billing=billed, builds=builds), None)
    await harness.write(Projection(billing=billed[1:], builds={managed: (True, at)}), None)
    assert await harness.claim("a") == [managed]


# -- Agent Time --------------------------------------------------------------------------------


def runtime(hour: datetime, *ms: int) -> dict[str, AgentRuntime]:
    """Chat runtime of one hour, one event per figure."""
    return {unique("chat"): AgentRuntime(hour, m) for m in ms}


async def test_an_hours_runtime_is_summed_once_and_what_comes_later_is_late(
    harness: Harness,
) -> None:
    """The hour is queued with its sum once; runtime arriving after that is returned as late."""
    queue = harness.queue
    first = runtime(HOUR, 1_000, 2_500)
    assert await harness.write(Projection(runtime=first), None) == []
    assert await harness.write(Projection(runtime=first), None) == []
    assert await queue.enqueue_agent_hour(HOUR + timedelta(minutes=20)) == 3_500
    assert await queue.enqueue_agent_hour(HOUR) is None
    late = await harness.write(Projection(runtime=runtime(HOUR, 40, 60)), None)
    assert late == [LateRuntime(HOUR, 2, 100)]
    assert await queue.agent_hours(HOUR) == [HOUR]
    report = await queue.agent_time_report(HOUR - timedelta(hours=1))
    assert [(r.hour, r.id, r.status, r.reported_ms, r.counted_ms) for r in report] == [
        (HOUR, agent_time_id(HOUR), "pending", 3_500, 3_600)
    ]


async def test_agent_time_reports_hours_counted_but_not_yet_sent(harness: Harness) -> None:
    """An hour with runtime and no heartbeat is reported as counted, not sent; an empty hour sends 0."""
    queue = harness.queue
    later = HOUR + timedelta(hours=1)
    await harness.write(Projection(runtime=runtime(later, 700)), None)
    assert await queue.enqueue_agent_hour(HOUR) == 0
    report = await queue.agent_time_report(HOUR)
    assert [(r.hour, r.id, r.status, r.reported_ms, r.counted_ms) for r in report] == [
        (HOUR, agent_time_id(HOUR), "pending", 0, 0),
        (later, agent_time_id(later), None, None, 700),
    ]
    assert await queue.agent_hours(later) == []


async def test_runtime_before_the_horizon_is_not_kept_and_old_runtime_is_pruned(
    harness: Harness,
) -> None:
    """`runtime_since` drops older hours on the way in; pruning deletes hours before a time."""
    queue = harness.queue
    before, after = HOUR - timedelta(hours=1), HOUR + timedelta(hours=1)
    await harness.write(Projection(runtime=runtime(before, 5) | runtime(HOUR, 7)), HOUR)
    await harness.write(Projection(runtime=runtime(after, 9)), None)
    counted = {r.hour: r.counted_ms for r in await queue.agent_time_report(before)}
    assert counted == {HOUR: 7, after: 9}
    assert await queue.prune_agent_runtime(after) == 1
    counted = {r.hour: r.counted_ms for r in await queue.agent_time_report(before)}
    assert counted == {after: 9}


async def test_log_progress_never_moves_back(harness: Harness) -> None:
    """Each partition keeps the latest time it was caught up at, and the partition count."""
    queue = harness.queue
    topic = unique("topic")
    t0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
    await queue.record_progress(topic, 2, [0, 1], t0)
    await queue.record_progress(topic, 3, [0], t0 - timedelta(minutes=5))
    await queue.record_progress(topic, 3, [1], t0 + timedelta(minutes=5))
    await queue.record_progress(topic, 3, [], t0 + timedelta(hours=1))
    assert sorted(await queue.log_progress(topic)) == [
        (0, 3, t0),
        (1, 3, t0 + timedelta(minutes=5)),
    ]
    assert await queue.log_progress(unique("topic")) == []


async def test_a_seat_heartbeat_is_no_agent_hour(harness: Harness) -> None:
    """Seat heartbeats and Agent Time heartbeats of one start time are told apart by type."""
    queue = harness.queue
    assert await queue.enqueue_heartbeat(HOUR) == 0
    assert await queue.agent_hours(HOUR) == []
    assert await queue.enqueue_agent_hour(HOUR) == 0
    assert await queue.agent_hours(HOUR) == [HOUR]
    claimed = await queue.claim(due_by=await queue.now(), limit=5, claimant="a", hold=HOLD)
    assert sorted(c.event_type for c in claimed) == sorted([HB_AGENT_RUNTIME, HB_AI_SEATS])
