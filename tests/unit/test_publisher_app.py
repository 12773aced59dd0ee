"""The publisher's settings, status API, seats heartbeat and Agent Time on fakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from structlog.testing import capture_logs

from libs.events.models import MAX_INT
from libs.service.consumer import Progress
from services.publisher.agent_time import AgentTimeHeartbeat
from services.publisher.api import ROUTES
from services.publisher.app import build_app
from services.publisher.config import PublisherSettings
from services.publisher.domain import (
    DC_MANAGED_AGENTS,
    HB_AGENT_RUNTIME,
    AgentRuntime,
    BillingAnswer,
    BillingEvent,
    LateRuntime,
    Projection,
    SeatState,
)
from services.publisher.heartbeat import SeatHeartbeat
from services.publisher.metrics import PublisherMetrics
from services.publisher.storage import InMemoryQueue
from tests.contracts import failures, walk

ADMIN = {"Authorization": "Bearer admin"}
EMITTER = {"Authorization": "Bearer emit"}
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def settings(**extra: Any) -> PublisherSettings:
    """Settings that need no real database."""
    return PublisherSettings.model_validate(
        {
            "DATABASE_URL": "postgresql://unused",
            "TOLLGATE_EMITTER_TOKENS": "emit",
            "TOLLGATE_ADMIN_TOKENS": "admin",
            "PUBLISH_INTERVAL": "50ms",
            "PUBLISH_FIRST_DELAY": "0s",
            "PUBLISH_BACKOFF_BASE": "10ms",
            "PUBLISH_BACKOFF_MAX": "20ms",
            "TOLLGATE_PUBLISHER_HEARTBEAT_CHECK": "20ms",
            **extra,
        }
    )


def test_defaults_match_the_reference_behaviour() -> None:
    """17-minute interval, random first delay, 30-day maximum age, batches of 100, port 8084."""
    s = settings(PUBLISH_INTERVAL="17m", PUBLISH_FIRST_DELAY="")
    assert (s.interval, s.first_delay, s.max_age) == (
        timedelta(minutes=17),
        None,
        timedelta(days=30),
    )
    assert (s.batch_size, s.port, s.group, s.queue) == (100, 8084, "publisher", "default")
    assert not s.configured
    assert s.missing == ["BILLING_URL", "LICENSE_KEY"]


def test_billing_url_is_validated_and_shown_without_credentials() -> None:
    """A non-HTTP URL is refused; status shows the URL without any user:password."""
    s = settings(BILLING_URL="https://user:secret@billing.example:8443/", LICENSE_KEY="k")
    assert s.configured
    assert s.billing_url == "https://user:secret@billing.example:8443"
    assert s.public_billing_url == "https://billing.example:8443"
    with pytest.raises(ValidationError, match="BILLING_URL must be an http"):
        settings(BILLING_URL="billing.example")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"PUBLISH_INTERVAL": "0s"}, "positive duration"),
        ({"PUBLISH_INTERVAL": "soon"}, "17m"),
        ({"PUBLISH_BATCH_SIZE": "101"}, "100"),
        ({"PUBLISH_TIMEOUT": "1m", "PUBLISH_CLAIM_TIMEOUT": "90s"}, "at least twice"),
        ({"PUBLISH_MAX_AGE": "100d"}, "RETENTION"),
        ({"PUBLISH_BACKOFF_BASE": "1h", "PUBLISH_BACKOFF_MAX": "1m"}, "BACKOFF_MAX"),
        ({"TOLLGATE_PUBLISHER_AGENT_TIME_WINDOW": "30m"}, "at least 1h"),
        ({"TOLLGATE_PUBLISHER_AGENT_TIME_WINDOW": "30d"}, "expire unsent"),
        ({"TOLLGATE_PUBLISHER_AGENT_TIME_LAG": "-1s"}, "invalid duration"),
        (
            {
                "TOLLGATE_PUBLISHER_AGENT_TIME_LAG": "2h",
                "TOLLGATE_PUBLISHER_AGENT_TIME_WINDOW": "2h",
            },
            "would ever close",
        ),
    ],
)
def test_incoherent_settings_are_refused_at_start(extra: dict[str, str], message: str) -> None:
    """Settings that would double-send, lose replays or never send are errors naming the variable."""
    with pytest.raises(ValidationError, match=message):
        settings(**extra)


class Accepting:
    """A billing server that accepts everything."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, events: Any) -> BillingAnswer:
        """Accept every event."""
        ids = [str(e["id"]) for e in events]
        self.sent += ids
        return BillingAnswer.model_validate({"accepted_events": [{"id": i} for i in ids]})


@pytest.fixture
async def client() -> AsyncIterator[
    tuple[TestClient[web.Request, web.Application], InMemoryQueue, Accepting]
]:
    """The app on an in-memory queue and an accepting server."""
    queue = InMemoryQueue()
    await queue.enqueue([BillingEvent("b1", DC_MANAGED_AGENTS, 1, datetime.now(UTC))])
    server = Accepting()
    app = build_app(
        settings(BILLING_URL="http://billing.example", LICENSE_KEY="k", DEPLOYMENT_ID="dep"),
        queue=queue,
        client=server,
        registry=CollectorRegistry(),
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client, queue, server


async def test_status_reports_the_queue_and_health_to_admins_only(
    client: tuple[TestClient[web.Request, web.Application], InMemoryQueue, Accepting],
) -> None:
    """Admins see pending counts and health; emitters are refused."""
    http, queue, server = client
    forbidden = await http.get("/api/v1/publisher/status", headers=EMITTER)
    assert forbidden.status == 403
    for _ in range(100):
        if "b1" in server.sent:
            break
        await asyncio.sleep(0.02)
    body = await (await http.get("/api/v1/publisher/status", headers=ADMIN)).json()
    assert body["configured"] is True
    assert body["deployment_id"] == "dep"
    assert body["billing_url"] == "http://billing.example"
    assert body["interval"] == "50ms"
    assert body["consecutive_failures"] == 0
    assert body["last_success_at"] is not None
    assert body["message"] == "ok"
    assert {"pending", "oldest_pending_age_seconds", "expired", "last_error"} <= set(body)
    spec = await (await http.get("/openapi.json")).json()
    assert "/api/v1/publisher/status" in spec["paths"]
    assert queue.health.published_total >= 1


async def test_heartbeat_counts_seats_once_per_bucket_and_waits_for_the_consumer() -> None:
    """Nothing is queued before the consumer caught up; then one heartbeat per bucket."""
    now = [NOW]
    queue = InMemoryQueue(clock=lambda: now[0])
    queue.apply_projection(
        Projection(
            seats={
                "a": SeatState("a", licensed=True, suspended=False, as_of=NOW),
                "b": SeatState("b", licensed=True, suspended=True, as_of=NOW),
            },
            ai_users={"a": NOW, "b": NOW, "c": NOW - timedelta(days=400)},
        )
    )
    caught_up = [False]
    heartbeat = SeatHeartbeat(
        queue,
        PublisherMetrics.build(CollectorRegistry()),
        ready=lambda: caught_up[0],
        check_every=timedelta(seconds=1),
        clock=lambda: now[0],
    )
    assert await heartbeat.tick() is None
    caught_up[0] = True
    assert await heartbeat.tick() == 2
    assert await heartbeat.tick() is None
    now[0] = NOW + timedelta(hours=4)
    assert await heartbeat.tick() == 2
    ids = sorted(i for i in queue.rows if i.startswith("hb_ai_seats_v1:"))
    assert ids == ["hb_ai_seats_v1:2026-11-02_08:00:00", "hb_ai_seats_v1:2026-11-02_12:00:00"]
    assert queue.rows[ids[0]].event.created_at == datetime(2026, 11, 2, 8, tzinfo=UTC)


async def test_a_restarted_replica_does_not_queue_the_bucket_again() -> None:
    """A second heartbeat (another replica, a restart) in the same bucket adds nothing."""
    queue = InMemoryQueue(clock=lambda: NOW)
    metrics = PublisherMetrics.build(CollectorRegistry())
    beats = [
        SeatHeartbeat(
            queue, metrics, ready=lambda: True, check_every=timedelta(1), clock=lambda: NOW
        )
        for _ in range(3)
    ]
    counts = [await b.tick() for b in beats]
    assert counts == [0, None, None]


HOUR = timedelta(hours=1)
DAY_START = datetime(2026, 11, 2, tzinfo=UTC)


def agent_time(
    queue: InMemoryQueue, now: list[datetime], progress: Progress | None = None
) -> AgentTimeHeartbeat:
    """An Agent Time heartbeat over a one-day window and a 5-minute lag on a movable clock."""
    return AgentTimeHeartbeat(
        queue,
        PublisherMetrics.build(CollectorRegistry()),
        topic="usage.events",
        progress=None if progress is None else (lambda: progress),
        lag=timedelta(minutes=5),
        window=timedelta(days=1),
        check_every=timedelta(seconds=1),
        clock=lambda: now[0],
    )


def runtime(queue: InMemoryQueue, event_id: str, hour: datetime, ms: int) -> list[LateRuntime]:
    """One chat usage event's runtime, as the consumer stores it."""
    return queue.apply_projection(Projection(runtime={event_id: AgentRuntime(hour, ms)}))


async def test_agent_time_waits_for_every_partition_then_fills_each_closed_hour_once() -> None:
    """No hour closes before every partition was read; then each closed hour is queued once."""
    now = [DAY_START + timedelta(days=1, minutes=4)]
    queue = InMemoryQueue(clock=lambda: now[0])
    runtime(queue, "e1", DAY_START + 9 * HOUR, 1_000)
    runtime(queue, "e2", DAY_START + 9 * HOUR, 2_500)
    runtime(queue, "e3", DAY_START + 23 * HOUR, 7)
    half = agent_time(queue, now, Progress(partitions=2, behind={0: 0}))
    assert (await half.tick()).queued == {}
    both = agent_time(queue, now, Progress(partitions=2, behind={0: 0, 1: 0}))
    done = await both.tick()
    # 23:00 ended at midnight and closes at 00:05; the day's other 23 hours are closed.
    assert sorted(done.queued) == [DAY_START + h * HOUR for h in range(23)]
    assert done.queued[DAY_START + 9 * HOUR] == 3_500
    assert sum(done.queued.values()) == 3_500
    now[0] += timedelta(minutes=2)
    restarted = agent_time(queue, now, Progress(partitions=2, behind={0: 0, 1: 0}))
    assert (await restarted.tick()).queued == {DAY_START + 23 * HOUR: 7}
    ids = sorted(r.event.id for r in queue.rows.values() if r.event.event_type == HB_AGENT_RUNTIME)
    assert len(ids) == len(set(ids)) == 24
    assert ids[0] == "hb_agent_runtime_v1:2026-11-02_00:00:00"
    assert (await restarted.tick()).queued == {}


async def test_a_partition_that_lags_keeps_its_hours_open() -> None:
    """A partition read to its end long ago holds back every hour after that time."""
    now = [DAY_START + timedelta(days=1, minutes=10)]
    queue = InMemoryQueue(clock=lambda: now[0])
    await queue.record_progress("usage.events", 2, [1], DAY_START + 3 * HOUR + timedelta(minutes=6))
    current = agent_time(queue, now, Progress(partitions=2, behind={0: 0, 1: 12}))
    assert sorted((await current.tick()).queued) == [DAY_START + h * HOUR for h in range(3)]


async def test_one_bad_hour_is_skipped_and_logged_while_the_others_are_queued() -> None:
    """An hour whose sum overflows is left out (and retried later); later hours go on."""
    now = [DAY_START + timedelta(days=1, minutes=10)]
    queue = InMemoryQueue(clock=lambda: now[0])
    runtime(queue, "big-1", DAY_START + 5 * HOUR, MAX_INT)
    runtime(queue, "big-2", DAY_START + 5 * HOUR, 1)
    runtime(queue, "fine", DAY_START + 6 * HOUR, 40)
    heartbeat = agent_time(queue, now, Progress(partitions=1, behind={0: 0}))
    with capture_logs() as logs:
        done = await heartbeat.tick()
        again = await heartbeat.tick()
    assert done.skipped == again.skipped == [DAY_START + 5 * HOUR]
    assert len(done.queued) == 23
    assert done.queued[DAY_START + 6 * HOUR] == 40
    skipped = [entry for entry in logs if entry["event"] == "agent_time_hour_skipped"]
    assert len(skipped) == 1
    assert skipped[0]["id"] == "hb_agent_runtime_v1:2026-11-02_05:00:00"


async def test_runtime_arriving_after_its_hour_was_queued_is_reported_late_not_sent() -> None:
    """A late runtime changes nothing queued; it shows as late, and a replayed id is not late."""
    now = [DAY_START + timedelta(days=1, minutes=10)]
    queue = InMemoryQueue(clock=lambda: now[0])
    runtime(queue, "early", DAY_START + 8 * HOUR, 100)
    heartbeat = agent_time(queue, now, Progress(partitions=1, behind={0: 0}))
    await heartbeat.tick()
    assert runtime(queue, "late", DAY_START + 8 * HOUR, 30) == [
        LateRuntime(DAY_START + 8 * HOUR, 1, 30)
    ]
    assert runtime(queue, "early", DAY_START + 8 * HOUR, 100) == []
    [hour] = [h for h in await queue.agent_time_report(DAY_START) if h.hour == DAY_START + 8 * HOUR]
    assert (hour.reported_ms, hour.counted_ms, hour.late_ms) == (100, 130, 30)


def test_the_default_agent_time_window_fits_a_shorter_maximum_age() -> None:
    """Unset, the window shrinks to fit PUBLISH_MAX_AGE; set too long, it is an error."""
    assert settings().agent_time_window == timedelta(days=7)
    assert settings(PUBLISH_MAX_AGE="2d").agent_time_window == timedelta(days=2) - HOUR
    with pytest.raises(ValidationError, match="AGENT_TIME_WINDOW"):
        settings(PUBLISH_MAX_AGE="2d", TOLLGATE_PUBLISHER_AGENT_TIME_WINDOW="7d")


async def test_every_route_answers_the_model_its_table_declares(
    client: tuple[TestClient[web.Request, web.Application], InMemoryQueue, Accepting],
) -> None:
    """Each route of the publisher's table, called once, succeeds with the body it declares."""
    http, _, _ = client
    answers = await walk(http, ROUTES, headers=ADMIN)
    assert failures(answers) == []
    assert len(answers) == len(ROUTES)
