"""The limits stores (configuration, snapshots, crossings): the fakes and PostgreSQL behave alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from libs.events.pricing import ModelPrice
from services.ingest.storage import PostgresPriceStore
from services.limits.crossings import Crossing, Kind
from services.limits.storage import (
    KEEP,
    ConfigStore,
    CrossingStore,
    InMemoryConfigStore,
    InMemoryCrossingStore,
    InMemorySnapshotStore,
    PostgresConfigStore,
    PostgresCrossingStore,
    PostgresSnapshotStore,
    Snapshot,
    SnapshotStore,
)
from services.reports.notifications.storage import PostgresNotificationStore
from tests.support import unique

# -- configuration -----------------------------------------------------------------------------


@pytest.fixture
async def config(pool: asyncpg.Pool | None) -> AsyncIterator[ConfigStore]:
    """The configuration store; the shared row's settings are put back afterwards."""
    store: ConfigStore = InMemoryConfigStore() if pool is None else PostgresConfigStore(pool)
    before = await store.load()
    try:
        yield store
    finally:
        await store.put_config(
            enabled=before.enabled,
            period=before.period,
            default_limit_micros=before.default_limit_micros,
            warning_threshold_percent=before.warning_threshold_percent,
        )


@pytest.fixture
def price_model(pool: asyncpg.Pool | None, config: ConfigStore) -> Callable[[str], Awaitable[None]]:
    """Give a model an input price in the table `priced_models` reads (ingest's, in PostgreSQL)."""

    async def put(model: str) -> None:
        if pool is None:
            assert isinstance(config, InMemoryConfigStore)
            config.priced.add(model)
        else:
            await PostgresPriceStore(pool).put(
                model, ModelPrice(input_price_per_million=Decimal(1))
            )

    return put


async def test_overrides_are_kept_per_subject_and_replaced(config: ConfigStore) -> None:
    """A user's and a group's limit live apart; setting one again replaces its amount."""
    user, group = unique("u"), unique("g")
    await config.put_override("user", user, 5_000_000)
    await config.put_override("group", group, 7_000_000)
    replaced = await config.put_override("user", user, 6_000_000)
    stored = await config.load()
    users = {o.subject_id: o for o in stored.user_overrides}
    groups = {o.subject_id: o.limit_micros for o in stored.group_overrides}
    assert users[user] == replaced
    assert replaced.limit_micros == 6_000_000
    assert groups[group] == 7_000_000
    assert group not in users
    assert user not in groups


async def test_overrides_load_in_order_of_their_ids(config: ConfigStore) -> None:
    """Overrides come back sorted by subject id, whatever order they were set in."""
    prefix = unique("order")
    ids = [f"{prefix}-c", f"{prefix}-a", f"{prefix}-b"]
    for i, subject_id in enumerate(ids):
        await config.put_override("user", subject_id, 1_000 + i)
    stored = [o.subject_id for o in (await config.load()).user_overrides]
    assert [s for s in stored if s.startswith(prefix)] == sorted(ids)


async def test_every_change_moves_the_version_and_a_missing_delete_does_not(
    config: ConfigStore,
) -> None:
    """Setting and deleting move the version; deleting what is not there changes nothing."""
    user = unique("u")
    v0 = await config.version()
    await config.put_override("user", user, 1_000)
    v1 = await config.version()
    assert v1 > v0
    assert (await config.load()).version == v1
    assert await config.delete_override("user", user) is True
    v2 = await config.version()
    assert v2 > v1
    assert await config.delete_override("user", user) is False
    assert await config.delete_override("group", unique("g")) is False
    assert await config.version() == v2
    assert user not in {o.subject_id for o in (await config.load()).user_overrides}


async def test_put_config_replaces_the_settings_and_keeps_the_warning_unless_given(
    config: ConfigStore,
) -> None:
    """`KEEP` leaves the warning share as stored; a number or None replaces it."""
    await config.put_config(
        enabled=True, period="week", default_limit_micros=9_000, warning_threshold_percent=70
    )
    v1 = await config.version()
    await config.put_config(
        enabled=False, period="day", default_limit_micros=None, warning_threshold_percent=KEEP
    )
    stored = await config.load()
    assert stored.version > v1
    assert (
        stored.enabled,
        stored.period,
        stored.default_limit_micros,
        stored.warning_threshold_percent,
    ) == (False, "day", None, 70)
    await config.put_config(
        enabled=True, period="month", default_limit_micros=1, warning_threshold_percent=None
    )
    assert (await config.load()).warning_threshold_percent is None


async def test_priced_models_are_the_ones_with_a_price(
    config: ConfigStore, price_model: Callable[[str], Awaitable[None]]
) -> None:
    """A model counts as priced once the price table gives it a price, and not before."""
    model = unique("model")
    assert model not in await config.priced_models()
    await price_model(model)
    assert model in await config.priced_models()


# -- snapshots ---------------------------------------------------------------------------------


@pytest.fixture
def snapshots(pool: asyncpg.Pool | None) -> SnapshotStore:
    """The snapshot store under test."""
    return InMemorySnapshotStore() if pool is None else PostgresSnapshotStore(pool)


def snap(topic: str, epoch: str, positions: dict[int, int], fmt: int = 3) -> Snapshot:
    """A snapshot whose state names its positions, so a loaded one shows which it was."""
    return Snapshot(
        topic=topic,
        epoch=epoch,
        format=fmt,
        positions=positions,
        events_applied=sum(positions.values()),
        state=repr(sorted(positions.items())).encode(),
    )


async def test_the_furthest_snapshot_of_the_log_is_the_latest(snapshots: SnapshotStore) -> None:
    """`latest` is the one that got furthest (summed positions), not the last saved."""
    topic = unique("topic")
    await snapshots.save(snap(topic, "e1", {0: 10, 1: 10}), keep=5)
    furthest = await snapshots.save(snap(topic, "e1", {0: 30, 1: 5}), keep=5)
    await snapshots.save(snap(topic, "e1", {0: 12, 1: 12}), keep=5)
    latest = await snapshots.latest(topic=topic, epoch="e1", format=3)
    assert latest is not None
    assert (latest.id, latest.positions, latest.state) == (
        furthest.id,
        {0: 30, 1: 5},
        furthest.state,
    )
    assert latest.created_at is not None
    assert await snapshots.latest(topic=topic, epoch="e1", format=2) is None
    assert await snapshots.latest(topic=topic, epoch="e2", format=3) is None


async def test_a_tie_goes_to_the_one_saved_last(snapshots: SnapshotStore) -> None:
    """Two snapshots at the same summed position: the later one is the latest."""
    topic = unique("topic")
    await snapshots.save(snap(topic, "e1", {0: 4, 1: 6}), keep=5)
    second = await snapshots.save(snap(topic, "e1", {0: 6, 1: 4}), keep=5)
    latest = await snapshots.latest(topic=topic, epoch="e1", format=3)
    assert latest is not None
    assert latest.id == second.id


async def test_saving_keeps_the_furthest_few_of_its_log_and_drops_other_epochs(
    snapshots: SnapshotStore,
) -> None:
    """Only the `keep` furthest of the saved log stay; other epochs' snapshots of the topic go."""
    topic, other_topic = unique("topic"), unique("topic")
    await snapshots.save(snap(topic, "old", {0: 99}), keep=5)
    await snapshots.save(snap(other_topic, "old", {0: 1}), keep=5)
    for n in (5, 1, 3):
        await snapshots.save(snap(topic, "new", {0: n}), keep=2)
    assert await snapshots.newest_of_another_epoch(topic=topic, epoch="new", formats=(3,)) is None
    latest = await snapshots.latest(topic=topic, epoch="new", format=3)
    assert latest is not None
    assert latest.positions == {0: 5}
    kept = await snapshots.newest_of_another_epoch(topic=other_topic, epoch="new", formats=(3,))
    assert kept is not None
    assert kept.positions == {0: 1}
    await snapshots.save(snap(topic, "new", {0: 9}), keep=1)
    latest = await snapshots.latest(topic=topic, epoch="new", format=3)
    assert latest is not None
    assert latest.positions == {0: 9}


async def test_the_newest_snapshot_of_another_epoch_is_the_last_taken(
    snapshots: SnapshotStore,
) -> None:
    """Of other epochs' snapshots in a readable format, the most recently taken one comes back."""
    topic = unique("topic")
    await snapshots.save(snap(topic, "a", {0: 50}), keep=5)
    await snapshots.save(snap(topic, "b", {0: 2}, fmt=2), keep=5)
    found = await snapshots.newest_of_another_epoch(topic=topic, epoch="c", formats=(2, 3))
    assert found is not None
    assert (found.epoch, found.format, found.positions) == ("b", 2, {0: 2})
    only_three = await snapshots.newest_of_another_epoch(topic=topic, epoch="c", formats=(3,))
    assert only_three is None
    assert await snapshots.newest_of_another_epoch(topic=topic, epoch="b", formats=(2,)) is None


# -- crossings ---------------------------------------------------------------------------------


@dataclass
class Crossings:
    """A crossing store, and how many active webhook endpoints its notifications go to."""

    store: CrossingStore
    endpoints: Callable[[int], Awaitable[None]]


@pytest.fixture
async def crossings(own_pool: asyncpg.Pool | None) -> AsyncIterator[Crossings]:
    """The crossing store under test; in PostgreSQL, on a database of its own."""
    if own_pool is None:
        memory = InMemoryCrossingStore(webhooks=0)

        async def set_memory(n: int) -> None:
            memory.webhooks = n

        yield Crossings(memory, set_memory)
        return
    admin = PostgresNotificationStore(own_pool)

    async def set_endpoints(n: int) -> None:
        hooks = await admin.webhooks()
        for hook in hooks[n:]:
            await admin.delete_webhook(hook.id)
        for i in range(len(hooks), n):
            await admin.add_webhook(f"https://hooks-{i}.example.com/", "contract")

    await set_endpoints(0)
    try:
        yield Crossings(PostgresCrossingStore(own_pool), set_endpoints)
    finally:
        await set_endpoints(0)


def crossing(user_id: str, kind: Kind = "budget.warning", org_id: str | None = None) -> Crossing:
    """A crossing of this month's limit by `user_id`."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return Crossing(
        kind=kind,
        user_id=user_id,
        org_id=org_id,
        period="month",
        period_start=start,
        period_end=start + timedelta(days=30),
        threshold_percent=85 if kind == "budget.warning" else 100,
        limit_micros=10_000_000,
        spent_micros=9_000_000,
        source="default",
        group_id=None,
    )


async def test_a_crossing_is_recorded_once(crossings: Crossings) -> None:
    """The first call records a crossing; the same key again, however it was decided, does not."""
    user = unique("u")
    first = await crossings.store.record([crossing(user)])
    assert [r.crossing.key for r in first] == [crossing(user).key]
    again = replace(crossing(user), spent_micros=9_500_000, threshold_percent=90)
    assert await crossings.store.record([again]) == []


async def test_only_the_new_crossings_of_a_batch_are_returned_in_order(
    crossings: Crossings,
) -> None:
    """A batch with one recorded and two new crossings returns the new two, in the batch's order."""
    user = unique("u")
    await crossings.store.record([crossing(user)])
    batch = [
        crossing(user, "budget.limit_reached"),
        crossing(user),
        crossing(user, org_id="acme"),
    ]
    recorded = await crossings.store.record(batch)
    assert [r.crossing for r in recorded] == [batch[0], batch[2]]
    assert len({r.notification_id for r in recorded}) == 2
    assert await crossings.store.record([]) == []


async def test_each_new_crossing_gets_a_delivery_per_active_endpoint(crossings: Crossings) -> None:
    """A recorded crossing is queued for every webhook endpoint there is when it is recorded."""
    await crossings.endpoints(2)
    recorded = await crossings.store.record([crossing(unique("u")), crossing(unique("u"))])
    assert [r.webhooks for r in recorded] == [2, 2]
    await crossings.endpoints(1)
    (one,) = await crossings.store.record([crossing(unique("u"))])
    assert one.webhooks == 1
    await crossings.endpoints(0)
    (none,) = await crossings.store.record([crossing(unique("u"))])
    assert none.webhooks == 0
