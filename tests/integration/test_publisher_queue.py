"""The billing queue in the real PostgreSQL: claims, expiry, health, heartbeats and the tools."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest

from services.publisher import tools
from services.publisher.domain import (
    DC_MANAGED_AGENTS,
    HB_AI_SEATS,
    BillingEvent,
    Outcome,
    Projection,
    SeatState,
    heartbeat_id,
)
from services.publisher.storage import PostgresQueue, write_projection
from tests.support import ROOT, Infra, unique

pytestmark = pytest.mark.integration

HOLD = timedelta(seconds=30)


async def fresh(
    db: asyncpg.Pool, n: int = 0, *, created: datetime | None = None
) -> tuple[PostgresQueue, list[BillingEvent]]:
    """A queue of this test's own, with n events in it."""
    queue = PostgresQueue(db, unique("q"))
    await queue.open()
    at = created or datetime.now(UTC)
    events = [BillingEvent(unique("e"), DC_MANAGED_AGENTS, 1, at) for _ in range(n)]
    assert await queue.enqueue(events) == n
    return queue, events


async def test_enqueue_ignores_ids_already_queued(db: asyncpg.Pool) -> None:
    """Re-enqueueing an id (a replay) neither duplicates nor resets it."""
    queue, events = await fresh(db, 3)
    assert await queue.enqueue(events) == 0
    assert (await queue.status()).pending == 3


async def test_concurrent_claims_never_hand_out_the_same_row(db: asyncpg.Pool) -> None:
    """Replicas claiming at once get disjoint rows covering the whole queue."""
    queue, events = await fresh(db, 500)
    due_by = await queue.now()
    replicas = [PostgresQueue(db, queue.queue) for _ in range(4)]
    claims = await asyncio.gather(
        *(
            r.claim(due_by=due_by, limit=100, claimant=f"r{i}", hold=HOLD)
            for i in range(3)
            for r in replicas
        )
    )
    ids = [c.id for claim in claims for c in claim]
    assert len(ids) == len(set(ids))
    assert set(ids) <= {e.id for e in events}
    assert len(ids) == 500


async def test_a_crashed_replicas_claim_comes_back_after_the_claim_timeout(
    db: asyncpg.Pool,
) -> None:
    """Rows held by a replica that never answers are due again once the claim runs out."""
    queue, _ = await fresh(db, 5)
    held = await queue.claim(
        due_by=await queue.now(), limit=10, claimant="dead", hold=timedelta(milliseconds=300)
    )
    assert len(held) == 5
    assert await queue.claim(due_by=await queue.now(), limit=10, claimant="b", hold=HOLD) == []
    await asyncio.sleep(0.4)
    again = await queue.claim(due_by=await queue.now(), limit=10, claimant="b", hold=HOLD)
    assert {c.id for c in again} == {c.id for c in held}
    assert {c.attempts for c in again} == {2}


async def test_a_late_retry_does_not_release_another_replicas_claim(db: asyncpg.Pool) -> None:
    """Only the holder's retry moves a row; a final outcome lands whoever holds it."""
    queue, (event,) = await fresh(db, 1)
    await queue.claim(due_by=await queue.now(), limit=1, claimant="a", hold=timedelta(0))
    await queue.claim(due_by=await queue.now(), limit=1, claimant="b", hold=HOLD)
    await queue.settle([Outcome(event.id, DC_MANAGED_AGENTS, "retry", "late")], claimant="a")
    assert await queue.claim(due_by=await queue.now(), limit=1, claimant="c", hold=HOLD) == []
    await queue.settle([Outcome(event.id, DC_MANAGED_AGENTS, "accepted")], claimant="a")
    status = await queue.status()
    assert (status.pending, status.health.published_total) == (0, 1)


async def test_health_survives_a_restart_and_a_success_ends_the_streak(db: asyncpg.Pool) -> None:
    """The failure streak and last error live in PostgreSQL, not in the process."""
    queue, (event,) = await fresh(db, 1)
    first = await queue.open()
    for _ in range(3):
        claimed = await queue.claim(due_by=await queue.now(), limit=1, claimant="a", hold=HOLD)
        outcome = Outcome(claimed[0].id, DC_MANAGED_AGENTS, "retry", "x")
        await queue.fail([outcome], claimant="a", cause="http_5xx", error="503 from billing")
    restarted = PostgresQueue(db, queue.queue)
    health = await restarted.open()
    assert health.deployment_id == first.deployment_id
    assert (health.consecutive_failures, health.last_error_cause) == (3, "http_5xx")
    assert health.failing_since is not None
    await restarted.claim(due_by=datetime.now(UTC) + HOLD, limit=1, claimant="b", hold=HOLD)
    ended = await restarted.settle([Outcome(event.id, DC_MANAGED_AGENTS, "accepted")], claimant="b")
    assert ended == 3
    after = (await restarted.status()).health
    assert (after.consecutive_failures, after.failing_since, after.last_error) == (
        0,
        None,
        "503 from billing",
    )
    assert after.last_success_at is not None


async def test_old_events_expire_and_are_counted_durably(db: asyncpg.Pool) -> None:
    """Pending events older than the maximum age expire; the total is kept in the health row."""
    queue, _ = await fresh(db, 3, created=datetime.now(UTC) - timedelta(days=31))
    await queue.enqueue([BillingEvent(unique("e"), HB_AI_SEATS, 2, datetime.now(UTC))])
    assert await queue.expire(timedelta(days=30)) == {DC_MANAGED_AGENTS: 3}
    assert await queue.expire(timedelta(days=30)) == {}
    status = await queue.status()
    assert (status.pending, status.health.expired_total) == (1, 3)


async def test_retention_deletes_only_old_final_rows(db: asyncpg.Pool) -> None:
    """Purging keeps pending rows whatever their age."""
    queue, _ = await fresh(db, 2, created=datetime.now(UTC) - timedelta(days=100))
    await queue.expire(timedelta(days=30))
    await db.execute(
        "UPDATE publisher_events SET finished_at = now() - interval '91 days' WHERE queue = $1",
        queue.queue,
    )
    await queue.enqueue([BillingEvent(unique("e"), DC_MANAGED_AGENTS, 1, datetime.now(UTC))])
    assert await queue.purge(timedelta(days=90)) == 2
    assert (await queue.status()).pending == 1


async def test_one_heartbeat_per_bucket_counting_every_active_ai_user(db: asyncpg.Pool) -> None:
    """Replicas racing on a bucket queue one heartbeat counting every active user who used AI."""
    queue, _ = await fresh(db)
    now = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    seats = {
        "licensed": SeatState("licensed", licensed=True, suspended=False, as_of=now),
        "unlicensed": SeatState("unlicensed", licensed=False, suspended=False, as_of=now),
        "suspended": SeatState("suspended", licensed=True, suspended=True, as_of=now),
    }
    users = {
        "licensed": now,
        "unlicensed": now,
        "suspended": now,
        "never-in-directory": now,
        # A seat, once taken, stays taken (Coder's ai_seat_state is never aged out).
        "last-year-only": now - timedelta(days=400),
    }
    async with db.acquire() as conn:
        await write_projection(conn, queue.queue, Projection(seats=seats, ai_users=users))
    replicas = [PostgresQueue(db, queue.queue) for _ in range(5)]
    counts = await asyncio.gather(*(r.enqueue_heartbeat(now) for r in replicas))
    assert sorted(counts, key=str) == [3, None, None, None, None]
    row = await db.fetchrow(
        "SELECT event_data::text, created_at FROM publisher_events WHERE queue = $1 AND id = $2",
        queue.queue,
        "hb_ai_seats_v1:2026-11-02_08:00:00",
    )
    assert row is not None
    assert orjson.loads(row["event_data"]) == {"count": 3}
    assert row["created_at"] == datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    assert await queue.enqueue_heartbeat(now + timedelta(hours=1)) is None
    assert await queue.enqueue_heartbeat(now + timedelta(hours=3)) == 3


async def test_a_bucket_queued_under_the_old_id_form_is_not_queued_again(db: asyncpg.Pool) -> None:
    """A heartbeat a previous release queued as `...T08:00:00Z` keeps the bucket taken."""
    queue, _ = await fresh(db)
    bucket = datetime(2026, 11, 2, 8, tzinfo=UTC)
    await queue.enqueue(
        [BillingEvent(f"{HB_AI_SEATS}:2026-11-02T08:00:00Z", HB_AI_SEATS, 4, bucket)]
    )
    assert await queue.enqueue_heartbeat(bucket + timedelta(minutes=30)) is None
    assert await queue.enqueue_heartbeat(bucket + timedelta(hours=4)) == 0
    ids = {
        r["id"]
        for r in await db.fetch("SELECT id FROM publisher_events WHERE queue = $1", queue.queue)
    }
    assert ids == {f"{HB_AI_SEATS}:2026-11-02T08:00:00Z", heartbeat_id(bucket + timedelta(hours=4))}


async def test_directory_updates_apply_newest_first_whatever_the_batch_order(
    db: asyncpg.Pool,
) -> None:
    """An older directory event arriving later does not undo a newer one."""
    queue, _ = await fresh(db)
    t0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    newer = SeatState("u", licensed=True, suspended=True, as_of=t0 + timedelta(hours=1))
    older = SeatState("u", licensed=True, suspended=False, as_of=t0)
    async with db.acquire() as conn:
        await write_projection(conn, queue.queue, Projection(seats={"u": newer}))
        await write_projection(conn, queue.queue, Projection(seats={"u": older}))
    suspended = await db.fetchval(
        "SELECT suspended FROM publisher_users WHERE queue = $1 AND user_id = 'u'", queue.queue
    )
    assert suspended is True


def test_export_writes_pending_ndjson_and_receipts_mark_them_published(
    infra: Infra,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An air-gapped round trip: export what is pending, import the server's answer."""
    name = unique("q")
    monkeypatch.setenv("DATABASE_URL", infra.database_url)
    monkeypatch.setenv("TOLLGATE_PUBLISHER_QUEUE", name)
    old = datetime(2026, 10, 1, tzinfo=UTC)
    new = datetime.now(UTC)
    events = [
        BillingEvent(f"{name}-{i}", DC_MANAGED_AGENTS, 1, old if i == 0 else new) for i in range(4)
    ]

    async def seed() -> None:
        pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=2)
        assert pool is not None
        try:
            queue = PostgresQueue(pool, name)
            await queue.open()
            await queue.enqueue(events)
        finally:
            await pool.close()

    asyncio.run(seed())
    out = tmp_path / "pending.ndjson"
    since = (new - timedelta(days=1)).date().isoformat()
    assert tools.main(["export", "--since", since, "--out", str(out)]) == 0
    lines = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == [e.id for e in events[1:]]
    assert set(lines[0]) == {"id", "event_type", "event_data", "created_at"}
    assert lines[0]["event_data"] == {"count": 1}
    assert "exported 3 pending billing event(s)" in capsys.readouterr().err

    answer = tmp_path / "answer.json"
    answer.write_text(
        orjson.dumps(
            {
                "accepted_events": [{"id": events[1].id}, {"id": events[2].id}],
                "rejected_events": [
                    {"id": events[3].id, "message": "duplicate license", "permanent": True},
                    {"id": "somebody-else", "message": "?", "permanent": False},
                ],
            }
        ).decode()
    )
    assert tools.main(["import-receipts", str(answer)]) == 0
    assert "published 2, rejected 1, already final 0, unknown ids 0" in capsys.readouterr().out

    ids = tmp_path / "ids.ndjson"
    ids.write_text(f'# manual upload\n"{events[0].id}"\n{{"id": "{events[1].id}"}}\nnot-queued\n')
    assert tools.main(["import-receipts", str(ids)]) == 0
    assert "published 1, rejected 0, already final 1, unknown ids 1" in capsys.readouterr().out
    assert tools.main(["export", "--out", str(out)]) == 0
    assert out.read_text() == ""
    assert tools.main(["status"]) == 0
    status = orjson.loads(capsys.readouterr().out)
    assert (status["pending"], status["published"], status["rejected"]) == (0, 3, 1)


async def test_the_tools_find_the_embedded_database_of_make_run_without_a_url(
    infra: Infra, db: asyncpg.Pool
) -> None:
    """`tollgate publisher status` with only the state directory uses the database running in it, and leaves that database running."""
    queue, _ = await fresh(db, 2)
    env = {k: v for k, v in infra.env().items() if k != "DATABASE_URL"}
    env["TOLLGATE_STATE_DIR"] = str(infra.postgres.data_dir.parent)
    env["TOLLGATE_PUBLISHER_QUEUE"] = queue.queue
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "libs.service.cli", "publisher", "status"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert orjson.loads(done.stdout)["pending"] == 2
    err = done.stderr.decode()
    assert f"using the embedded database in {infra.postgres.data_dir}" in err
    # The tool only joined the running server: a new connection still gets in.
    conn = await asyncpg.connect(infra.database_url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_unreadable_receipts_are_an_error_that_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A receipt file with a broken line changes nothing and says where it broke."""
    bad = tmp_path / "bad.ndjson"
    bad.write_text('"ok-id"\n{"no_id": 1}\n')
    assert tools.main(["import-receipts", str(bad)]) == 1
    assert "line 2" in capsys.readouterr().err


async def test_retry_now_makes_backed_off_events_due_but_leaves_held_ones(db: asyncpg.Pool) -> None:
    """After an outage's cause is fixed, `retry-now` brings backed-off events forward at once."""
    queue, events = await fresh(db, 2)
    claimed = await queue.claim(due_by=await queue.now(), limit=2, claimant="a", hold=HOLD)
    backed_off = Outcome(claimed[0].id, DC_MANAGED_AGENTS, "retry", "x", timedelta(hours=1))
    await queue.fail([backed_off], claimant="a", cause="connect", error="refused")
    assert (await queue.status()).due == 0
    assert await queue.retry_now() == 1
    again = await queue.claim(due_by=await queue.now(), limit=2, claimant="b", hold=HOLD)
    assert [c.id for c in again] == [claimed[0].id]
    assert {e.id for e in events} == {c.id for c in claimed}
