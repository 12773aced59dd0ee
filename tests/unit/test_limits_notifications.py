"""Budget notifications in limits: when one is due, and that it is recorded exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from libs.events.models import Event
from libs.service.consumer import Batch, Consumed
from services.limits.app import SINK, build_app
from services.limits.config import LimitsSettings
from services.limits.consumer import LimitsSink
from services.limits.crossings import LIMIT_REACHED, WARNING, due, warning_reached
from services.limits.domain import Ledger, Limiter, LimitsConfig
from services.limits.metrics import LimitsMetrics
from services.limits.recorder import CrossingRecorder
from services.limits.storage import (
    InMemoryConfigStore,
    InMemoryCrossingStore,
    InMemorySnapshotStore,
    LogSeen,
)
from tests.support import eventually
from tests.unit.test_limits_api import ADMIN, NOW, ManualFeed, group, spend

DOLLAR = 1_000_000
AppAndStore = tuple[
    TestClient[web.Request, web.Application], InMemoryCrossingStore, list[ManualFeed]
]


def limiter_with(config: LimitsConfig, spent: dict[str, int]) -> Limiter:
    """A limiter whose ledger holds `spent` in NOW's periods."""
    limiter = Limiter(Ledger(), config)
    for user, micros in spent.items():
        limiter.ledger.add_spend(user, micros, NOW)
    return limiter


@pytest.mark.parametrize(
    ("spent", "kinds"),
    [
        (0, []),
        (849_999, []),
        (850_000, [WARNING]),
        (999_999, [WARNING]),
        (1_000_000, [WARNING, LIMIT_REACHED]),
        (5_000_000, [WARNING, LIMIT_REACHED]),
    ],
)
def test_due_follows_the_warning_share_and_the_409_rule(spent: int, kinds: list[str]) -> None:
    """At 85 % of a $1 limit a warning is due; at the limit (the check's 409) the notice too, warning first."""
    config = LimitsConfig(enabled=True, default_limit_micros=DOLLAR)
    limiter = limiter_with(config, {"u": spent})
    decision = limiter.decide("u", NOW.timestamp())
    found = due(decision, "u", 85)
    assert [c.kind for c in found] == kinds
    assert all(not decision.allowed for c in found if c.kind == LIMIT_REACHED)
    for crossing in found:
        assert crossing.facts()["spent_micros"] == spent
        assert crossing.facts()["period_start"] == "2026-11-01T00:00:00Z"
        assert crossing.facts()["period_end"] == "2026-12-01T00:00:00Z"
        assert crossing.facts()["org_id"] is None


def test_warning_share_is_exact_integer_arithmetic() -> None:
    """`spent × 100 ≥ limit × percent`, with no rounding at any size."""
    assert warning_reached(85, 100, 85)
    assert not warning_reached(84, 100, 85)
    big = 2**53 - 1
    assert warning_reached(big, big, 99)
    assert not warning_reached(big * 98 // 100, big, 99)


def test_nothing_is_due_without_a_limit_and_no_warning_when_off() -> None:
    """No limit: nothing; warnings off: only the limit notice."""
    spent = {"u": 3 * DOLLAR}
    unlimited = limiter_with(LimitsConfig(enabled=True), spent)
    assert due(unlimited.decide("u", NOW.timestamp()), "u", 85) == []
    limited = limiter_with(LimitsConfig(enabled=True, default_limit_micros=DOLLAR), spent)
    kinds = [c.kind for c in due(limited.decide("u", NOW.timestamp()), "u", None)]
    assert kinds == [LIMIT_REACHED]


def test_the_decision_names_the_source_and_group() -> None:
    """A group's limit makes the notification say `group` and name the group."""
    config = LimitsConfig(enabled=True, default_limit_micros=10 * DOLLAR, group_overrides={"g": 2})
    limiter = limiter_with(config, {"u": 2})
    limiter.ledger.set_group("g", ["u"])
    (warning, notice) = due(limiter.decide("u", NOW.timestamp()), "u", 85)
    assert (warning.source, warning.group_id, warning.limit_micros) == ("group", "g", 2)
    assert notice.threshold_percent == 100
    assert warning.threshold_percent == 85


# -- the recorder --------------------------------------------------------------------------------


@dataclass
class Recorders:
    """One limiter state seen by several replicas' recorders writing to one store."""

    store: InMemoryCrossingStore
    limiter: Limiter
    ready: list[bool]

    def recorder(self) -> CrossingRecorder:
        """A replica's recorder over the shared state."""
        return CrossingRecorder(
            self.limiter,
            self.store,
            metrics=LimitsMetrics.build(CollectorRegistry()),
            ready=lambda: self.ready[0],
            clock=NOW.timestamp,
        )


@pytest.fixture
def replicas() -> Recorders:
    """A $1 monthly default with an 85 % warning, caught up."""
    config = LimitsConfig(enabled=True, default_limit_micros=DOLLAR, warning_threshold_percent=85)
    return Recorders(InMemoryCrossingStore(), Limiter(Ledger(), config), [True])


async def test_an_organisations_group_limit_is_told_for_spend_in_that_organisation_only() -> None:
    """A group limit of organisation B is told (naming B) when spend in B reaches it; the same
    spend in organisation A, or a sweep of a user who spent only in A, tells nothing."""
    config = LimitsConfig(enabled=True, group_overrides={"eng-b": DOLLAR})
    ledger = Ledger()
    ledger.set_group("eng-b", ["grace", "heidi"], org_id="org-b")
    replicas = Recorders(InMemoryCrossingStore(), Limiter(ledger, config), [True])
    recorder = replicas.recorder()
    ledger.add_spend("heidi", 2 * DOLLAR, NOW, org_id="org-a")
    recorder.observe([("heidi", "org-a")])
    await recorder.sweep()
    await recorder.flush()
    assert replicas.store.order == []

    ledger.add_spend("grace", 2 * DOLLAR, NOW, org_id="org-b")
    recorder.observe([("grace", "org-b")])
    await recorder.flush()
    keys = replicas.store.order
    assert [key[0] for key in keys] == [WARNING, LIMIT_REACHED]
    facts = replicas.store.recorded[keys[1]]
    assert (facts.user_id, facts.org_id, facts.source, facts.group_id) == (
        "grace",
        "org-b",
        "group",
        "eng-b",
    )


async def test_50_90_110_cents_records_one_warning_then_one_notice(replicas: Recorders) -> None:
    """$0.50 → $0.90 → $1.10 records exactly one warning and one limit notice, in that order."""
    recorder = replicas.recorder()
    for cents in (50, 40, 20):
        replicas.limiter.ledger.add_spend("alice", cents * 10_000, NOW)
        recorder.observe([("alice", None)])
        await recorder.flush()
    kinds = [key[0] for key in replicas.store.order]
    assert kinds == [WARNING, LIMIT_REACHED]
    warning = replicas.store.recorded[replicas.store.order[0]]
    assert warning.spent_micros == 900_000


async def test_a_notification_is_recorded_with_how_far_the_replica_had_read_the_log(
    replicas: Recorders,
) -> None:
    """The recorder hands the store the ledger's positions in its log, as they were at the write
    (so the notifier can wait for reports to read as far); without a log it hands none."""
    replicas.limiter.ledger.positions.update({0: 41, 5: 7})
    replicas.limiter.ledger.add_spend("gus", 2 * DOLLAR, NOW)
    recorder = CrossingRecorder(
        replicas.limiter,
        replicas.store,
        metrics=LimitsMetrics.build(CollectorRegistry()),
        ready=lambda: True,
        clock=NOW.timestamp,
        log=("usage.events", "epoch-9"),
    )
    recorder.observe([("gus", None)])
    await recorder.flush()
    seen = [replicas.store.seen[key] for key in replicas.store.order]
    assert seen == [LogSeen("usage.events", "epoch-9", {0: 41, 5: 7})] * 2
    replicas.limiter.ledger.add_spend("hal", 2 * DOLLAR, NOW)
    plain = replicas.recorder()
    plain.observe([("hal", None)])
    await plain.flush()
    assert [replicas.store.seen[key] for key in replicas.store.order if key[1] == "hal"] == [
        None,
        None,
    ]


async def test_two_replicas_and_replays_record_each_notification_once(replicas: Recorders) -> None:
    """Two recorders evaluating the same user again and again write each key once."""
    first, second = replicas.recorder(), replicas.recorder()
    replicas.limiter.ledger.add_spend("bob", 2 * DOLLAR, NOW)
    for _ in range(3):
        for recorder in (first, second):
            recorder.observe([("bob", None)])
            await recorder.flush()
    assert len(replicas.store.recorded) == 2
    # Once a key is known, a recorder no longer writes it at all.
    calls = replicas.store.calls
    first.observe([("bob", None)])
    await first.flush()
    assert replicas.store.calls == calls


async def test_a_replaying_replica_decides_nothing_until_caught_up(replicas: Recorders) -> None:
    """While not caught up, usage is not evaluated; the sweep at catch-up finds what is due."""
    replicas.ready[0] = False
    recorder = replicas.recorder()
    replicas.limiter.ledger.add_spend("carol", 950_000, NOW)
    recorder.observe([("carol", None)])
    assert recorder.pending == {}
    replicas.ready[0] = True
    await recorder.sweep()
    await recorder.flush()
    assert [key[0] for key in replicas.store.order] == [WARNING]


async def test_a_replica_that_dies_before_writing_loses_nothing(replicas: Recorders) -> None:
    """Found due but never written (the process died): a new replica's sweep records it."""
    doomed = replicas.recorder()
    replicas.limiter.ledger.add_spend("dave", 3 * DOLLAR, NOW)
    doomed.observe([("dave", None)])
    assert len(doomed.pending) == 2
    del doomed
    successor = replicas.recorder()
    await successor.sweep()
    await successor.flush()
    assert len(replicas.store.recorded) == 2


async def test_a_failed_write_keeps_what_is_due_and_retries(replicas: Recorders) -> None:
    """With the database down the crossing stays pending; the next write records it once."""
    recorder = replicas.recorder()
    replicas.limiter.ledger.add_spend("erin", DOLLAR, NOW)
    recorder.observe([("erin", None)])
    replicas.store.down = True
    with pytest.raises(OSError, match="does not answer"):
        await recorder.flush()
    assert len(recorder.pending) == 2
    replicas.store.down = False
    assert await recorder.flush() == 2
    assert recorder.pending == {}


async def test_a_lower_limit_notifies_at_the_sweep_a_new_period_starts_fresh(
    replicas: Recorders,
) -> None:
    """Lowering the limit makes users already past it due at the next sweep; a new month re-arms."""
    recorder = replicas.recorder()
    replicas.limiter.ledger.add_spend("frank", 600_000, NOW)
    recorder.observe([("frank", None)])
    await recorder.flush()
    assert replicas.store.recorded == {}
    replicas.limiter.config = LimitsConfig(enabled=True, default_limit_micros=500_000)
    recorder.request_sweep()
    assert recorder.sweep_wanted
    await recorder.sweep()
    await recorder.flush()
    assert [key[0] for key in replicas.store.order] == [WARNING, LIMIT_REACHED]
    december = datetime(2026, 12, 3, tzinfo=UTC)
    replicas.limiter.ledger.add_spend("frank", 600_000, december)
    later = CrossingRecorder(
        replicas.limiter,
        replicas.store,
        metrics=LimitsMetrics.build(CollectorRegistry()),
        ready=lambda: True,
        clock=december.timestamp,
    )
    later.observe([("frank", None)])
    await later.flush()
    starts = sorted({key[4] for key in replicas.store.order})
    assert len(starts) == 2
    assert len(replicas.store.recorded) == 4


# -- through the app -----------------------------------------------------------------------------


@pytest.fixture
async def app_and_store() -> AsyncIterator[AppAndStore]:
    """A limits app on fakes whose recorder writes to an in-memory crossing store."""
    settings = LimitsSettings(
        DATABASE_URL="postgresql://unused",
        TOLLGATE_EMITTER_TOKENS="emit",
        TOLLGATE_ADMIN_TOKENS="admin",
        TOLLGATE_BROKER_EPOCH="epoch-1",
    )
    store = InMemoryCrossingStore()
    feeds: list[ManualFeed] = []

    def make_feed(sink: LimitsSink) -> ManualFeed:
        feeds.append(ManualFeed(sink))
        return feeds[-1]

    app = build_app(
        settings,
        config_store=InMemoryConfigStore(),
        snapshot_store=InMemorySnapshotStore(),
        crossing_store=store,
        feed=make_feed,
        registry=CollectorRegistry(),
        clock=NOW.timestamp,
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, store, feeds
    finally:
        await client.close()


async def test_the_app_records_what_the_log_makes_due_and_a_config_change_sweeps(
    app_and_store: AppAndStore,
) -> None:
    """Usage folded from the log records notifications; a new group limit is swept at once."""
    client, store, feeds = app_and_store
    body = {"enabled": True, "period": "month", "default_limit_micros": DOLLAR}
    resp = await client.put("/api/v1/limits/config", json=body, headers=ADMIN)
    assert resp.status == 200
    assert (await resp.json())["warning_threshold_percent"] == 85
    feeds[0].caught_up.set()
    app = client.app
    assert app is not None
    sink = app[SINK]
    events: list[Event] = [
        spend("e1", "gina", 900_000),
        group("g1", "small", ["hank"]),
        spend("e2", "hank", 300_000),
    ]
    await sink.apply(
        Batch(
            events=[Consumed(e, 0, i, int(NOW.timestamp() * 1000)) for i, e in enumerate(events)],
            positions={0: len(events)},
        )
    )

    async def kinds(user: str) -> list[str]:
        return [k[0] for k in store.order if k[1] == user]

    assert await eventually(lambda: kinds("gina")) == [WARNING]
    assert await kinds("hank") == []
    resp = await client.put(
        "/api/v1/limits/overrides/groups/small", json={"limit_micros": 300_000}, headers=ADMIN
    )
    assert resp.status == 200
    assert await eventually(lambda: kinds("hank")) == [WARNING, LIMIT_REACHED]
    await asyncio.sleep(0.05)
    assert await kinds("gina") == [WARNING]


@pytest.mark.parametrize("value", [0, 100, -1, 1.5, "85", True, 10**30])
async def test_a_bad_warning_share_is_422_naming_it(
    app_and_store: AppAndStore,
    value: object,
) -> None:
    """The warning share is a whole number from 1 to 99 (or null); anything else names the field."""
    client, _, _ = app_and_store
    body = {"enabled": True, "period": "month", "default_limit_micros": DOLLAR}
    resp = await client.put(
        "/api/v1/limits/config", json={**body, "warning_threshold_percent": value}, headers=ADMIN
    )
    assert resp.status == 422
    assert "warning_threshold_percent" in (await resp.json())["message"]


async def test_warning_share_null_turns_warnings_off_and_leaving_it_out_keeps_it(
    app_and_store: AppAndStore,
) -> None:
    """`null` is stored as off; a PUT without the field keeps what was stored."""
    client, _, _ = app_and_store
    body = {"enabled": True, "period": "week", "default_limit_micros": DOLLAR}
    resp = await client.put(
        "/api/v1/limits/config", json={**body, "warning_threshold_percent": 60}, headers=ADMIN
    )
    assert (await resp.json())["warning_threshold_percent"] == 60
    resp = await client.put("/api/v1/limits/config", json=body, headers=ADMIN)
    assert (await resp.json())["warning_threshold_percent"] == 60
    resp = await client.put(
        "/api/v1/limits/config", json={**body, "warning_threshold_percent": None}, headers=ADMIN
    )
    assert (await resp.json())["warning_threshold_percent"] is None
