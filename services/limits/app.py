"""Limits' composition root: wires the ledger, the log consumer, snapshots, config and API."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import structlog
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from libs.service.consumer import ConsumerLoop
from libs.service.openapi import OpenApi
from libs.service.portal import RevocationStore
from libs.service.runtime import Resources, lifecycle
from libs.service.web import accept_portal_tokens, create_app, declare_readiness, install_routes
from services.limits.admin_config import ConfigCache
from services.limits.api import ROUTES, RUNTIME, LimitsRuntime
from services.limits.config import LimitsSettings
from services.limits.consumer import Feed, LimitsSink, SnapshotStatus, Snapshotter
from services.limits.domain import Ledger, Limiter
from services.limits.metrics import LimitsMetrics, TopUsers
from services.limits.recorder import CrossingRecorder
from services.limits.storage import (
    ChatArchive,
    ConfigStore,
    CrossingStore,
    InMemoryCrossingStore,
    PostgresChatArchive,
    PostgresConfigStore,
    PostgresCrossingStore,
    PostgresSnapshotStore,
    SnapshotStore,
)

log = structlog.get_logger(__name__)

#: The name the consumer loop's metrics and logs carry.
CONSUMER_NAME = "limits"
#: Most records per fetch, and how many are decoded between turns of the event loop. Checks
#: share the loop with the log, and decoding an event takes 6-15 µs: a fetch of 5,000
#: records kept every check waiting for some 70 ms, and chunks of 64 still stalled checks
#: for up to a millisecond; the loop now turns every 16 records (folding in turns too: see
#: `APPLY_CHUNK`).
BATCH_RECORDS = 256
DECODE_CHUNK = 16
#: Seconds the last snapshot at shutdown may take (the chart's grace period covers it).
FINAL_SNAPSHOT_TIMEOUT_S = 20
#: Seconds the due notifications not yet written may take to write at shutdown.
FINAL_FLUSH_TIMEOUT_S = 5

SINK = web.AppKey("limits_sink", LimitsSink)
SNAPSHOTTER = web.AppKey("limits_snapshotter", Snapshotter)
RECORDER = web.AppKey("limits_recorder", CrossingRecorder)

FeedFactory = Callable[[LimitsSink], Feed]


def build_app(
    settings: LimitsSettings,
    *,
    config_store: ConfigStore | None = None,
    snapshot_store: SnapshotStore | None = None,
    archive: ChatArchive | None = None,
    crossing_store: CrossingStore | None = None,
    feed: FeedFactory | None = None,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
    freeze_heap: bool = False,
    revocations: RevocationStore | None = None,
) -> web.Application:
    """The limits application; real dependencies are built when none are given.

    `feed` builds what reads the log into the sink; without it, a `ConsumerLoop` over
    every partition of the events topic. `archive` is where the previous log's tail is
    recovered from after a broker epoch change; without it (and with the stores built here),
    the reports archive in the same database, unless `TOLLGATE_LIMITS_ARCHIVE_CATCHUP` is off.
    `crossing_store` records budget notifications; without it, the notifications tables of
    that database (or memory, when the other stores were given).
    `freeze_heap` (for the service's own process, never
    for tests sharing one) moves everything alive once the log is read into the garbage
    collector's permanent generation (see `_freeze_heap_when_caught_up`).
    """
    registry = registry or CollectorRegistry()
    openapi = OpenApi(
        title="Tollgate limits",
        description="Per-user spend for the current day, week and month, checked in memory.",
    )
    app = create_app(service="limits", settings=settings, registry=registry, openapi=openapi)
    metrics = LimitsMetrics.build(registry)
    dedup_window_ms = int(settings.dedup_window.total_seconds() * 1000)
    limiter = Limiter(Ledger(dedup_window_ms=dedup_window_ms))
    status = SnapshotStatus(started_at=clock())

    def ready() -> bool:
        runtime = app.get(RUNTIME)
        return runtime is not None and runtime.ready()

    _export_state(
        metrics,
        registry=registry,
        settings=settings,
        limiter=limiter,
        status=status,
        ready=ready,
        clock=clock,
    )

    wiring = _Wiring(
        settings=settings,
        limiter=limiter,
        metrics=metrics,
        status=status,
        registry=registry,
        feed=feed,
        ready=ready,
        clock=clock,
        freeze_heap=freeze_heap,
    )

    async def start(app: web.Application, resources: Resources) -> None:
        stores = await _stores(
            settings,
            resources,
            config_store=config_store,
            snapshot_store=snapshot_store,
            archive=archive,
            crossing_store=crossing_store,
        )
        await wiring.start(app, resources, stores)

    def log_read() -> bool:
        runtime = app.get(RUNTIME)
        return runtime is not None and runtime.caught_up()

    def config_loaded() -> bool:
        runtime = app.get(RUNTIME)
        return runtime is not None and runtime.configs.loaded

    def database_up() -> bool:
        # Checks never wait for PostgreSQL: an outage shows here and in the snapshot age.
        runtime = app.get(RUNTIME)
        return runtime is not None and runtime.configs.reachable

    app.cleanup_ctx.append(lifecycle(start))
    accept_portal_tokens(app, settings, store=revocations)
    declare_readiness(
        app, needs={"log": log_read, "config": config_loaded}, reports={"database": database_up}
    )
    install_routes(app, ROUTES)
    return app


@dataclass(frozen=True)
class _Wiring:
    """The long-lived parts, and how they start and stop around the stores."""

    settings: LimitsSettings
    limiter: Limiter
    metrics: LimitsMetrics
    status: SnapshotStatus
    registry: CollectorRegistry
    feed: FeedFactory | None
    ready: Callable[[], bool]
    clock: Callable[[], float]
    freeze_heap: bool = False

    async def start(self, app: web.Application, resources: Resources, stores: _Stores) -> None:
        """Load the configuration, start the consumer, refresher and snapshots.

        At the stop, in this order: the log is read to its end, due notifications are
        written, the tasks stop, the final snapshot is taken, the producer stops.
        """
        settings, limiter, metrics = self.settings, self.limiter, self.metrics
        status, clock = self.status, self.clock
        store, snapshots, archive, crossings = stores
        configs = ConfigCache(store, limiter, interval_s=settings.config_refresh_s)
        recorder: CrossingRecorder | None = None
        if settings.notifications:
            recorder = CrossingRecorder(
                limiter,
                crossings,
                metrics=metrics,
                ready=self.ready,
                clock=clock,
                log=(settings.events_topic, settings.broker_epoch),
            )
            configs.on_change = recorder.request_sweep
            app[RECORDER] = recorder
        sink = LimitsSink(
            limiter,
            snapshots,
            topic=settings.events_topic,
            epoch=settings.broker_epoch,
            dedup_window_ms=limiter.ledger.dedup_window_ms,
            metrics=metrics,
            status=status,
            clock=clock,
            archive=archive if settings.archive_catchup else None,
            on_spend=recorder.observe if recorder is not None else None,
        )
        snapshotter = Snapshotter(
            limiter,
            snapshots,
            topic=settings.events_topic,
            epoch=settings.broker_epoch,
            keep=settings.snapshots_kept,
            metrics=metrics,
            status=status,
            clock=clock,
        )
        app[SINK] = sink
        app[SNAPSHOTTER] = snapshotter
        try:
            await configs.refresh()
        except Exception as exc:
            # Not ready until it loads; the refresher keeps trying.
            log.warning("limits_config_unavailable", error=f"{type(exc).__name__}: {exc}")
        reader: Feed
        if self.feed is None:
            producer = await resources.producer(
                settings.kafka_bootstrap_servers,
                idempotent=settings.kafka_idempotent,
                timeout_s=settings.kafka_timeout_s,
            )
            reader = _consumer_loop(settings, sink, producer, self.registry)
        else:
            reader = self.feed(sink)
        app[RUNTIME] = LimitsRuntime(
            limiter=limiter,
            configs=configs,
            store=store,
            metrics=metrics,
            clock=clock,
            caught_up=reader.caught_up.is_set,
        )
        # Once the consumer has stopped, the ledger is final for this process.
        resources.at_stop(lambda: _final_snapshot(snapshotter))
        await resources.background(reader.run(), name="limits-consumer")
        await resources.background(configs.refresh_forever(), name="limits-config")
        await resources.background(
            snapshotter.run_forever(settings.snapshot_interval_s, self.ready),
            name="limits-snapshots",
        )
        await resources.background(
            _freeze_heap_when_caught_up(reader.caught_up, enabled=self.freeze_heap),
            name="limits-heap",
        )
        if recorder is not None:
            await resources.background(recorder.run_forever(), name="limits-notifications")
            resources.at_stop(lambda: _final_flush(recorder))
        # A clean stop reads the log to its end before the final snapshot.
        resources.at_stop(reader.drain)


async def _final_snapshot(snapshotter: Snapshotter) -> None:
    """The last snapshot before stopping (the chart's grace period covers its timeout)."""
    try:
        await asyncio.wait_for(snapshotter.take(), FINAL_SNAPSHOT_TIMEOUT_S)
    except Exception as exc:
        log.warning("limits_final_snapshot_failed", error=f"{type(exc).__name__}: {exc}")


async def _final_flush(recorder: CrossingRecorder) -> None:
    """Write what is due before stopping (what is not written is found again at the next start)."""
    try:
        await asyncio.wait_for(recorder.flush(), FINAL_FLUSH_TIMEOUT_S)
    except Exception as exc:
        log.warning(
            "limits_notifications_final_write_failed",
            error=f"{type(exc).__name__}: {exc}",
            pending=len(recorder.pending),
        )


class _Stores(NamedTuple):
    config: ConfigStore
    snapshots: SnapshotStore
    archive: ChatArchive | None
    crossings: CrossingStore


async def _stores(
    settings: LimitsSettings,
    resources: Resources,
    *,
    config_store: ConfigStore | None,
    snapshot_store: SnapshotStore | None,
    archive: ChatArchive | None,
    crossing_store: CrossingStore | None,
) -> _Stores:
    """The stores given, or PostgreSQL ones on a pool that closes at the stop."""
    if config_store is not None and snapshot_store is not None:
        return _Stores(
            config_store, snapshot_store, archive, crossing_store or InMemoryCrossingStore()
        )
    pool = await resources.pool(settings.database_url, max_size=settings.db_pool_max)
    return _Stores(
        config_store or PostgresConfigStore(pool),
        snapshot_store or PostgresSnapshotStore(pool),
        archive or PostgresChatArchive(pool),
        crossing_store or PostgresCrossingStore(pool),
    )


async def _freeze_heap_when_caught_up(caught_up: asyncio.Event, *, enabled: bool) -> None:
    """Once the log is read, leave what is alive then out of every later garbage collection.

    A full collection walks every container the process holds, the imported libraries first
    of all: in this process it paused the event loop, and every check waiting on it, for
    20-40 ms each time. Nothing alive at this point (modules, the restored ledger,
    connections) is garbage in a cycle, and what is freed later is still freed by reference
    counting; collections then walk only what was made since (never the ledger's id buckets,
    which are dicts of ints: see `RecentIds`).
    """
    if not enabled:
        return
    await caught_up.wait()
    gc.collect()
    gc.freeze()
    log.info("limits_heap_frozen", objects=gc.get_freeze_count())


def _consumer_loop(
    settings: LimitsSettings,
    sink: LimitsSink,
    producer: AIOKafkaProducer,
    registry: CollectorRegistry,
) -> ConsumerLoop:
    """Every partition, no consumer group: each replica holds the whole ledger."""
    return ConsumerLoop(
        name=CONSUMER_NAME,
        bootstrap=settings.kafka_bootstrap_servers,
        topic=settings.events_topic,
        dlq_topic=settings.dlq_topic,
        sink=sink,
        dlq_producer=producer,
        registry=registry,
        group_id=None,
        max_records=BATCH_RECORDS,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        timeout_s=max(10.0, settings.kafka_timeout_s * 2),
        yield_every=DECODE_CHUNK,
    )


def _export_state(
    metrics: LimitsMetrics,
    *,
    registry: CollectorRegistry,
    settings: LimitsSettings,
    limiter: Limiter,
    status: SnapshotStatus,
    ready: Callable[[], bool],
    clock: Callable[[], float],
) -> None:
    """Gauges computed at scrape time from the live state (the ledger object can be replaced)."""

    def dedup_ids() -> float:
        return limiter.ledger.dedup_ids()

    metrics.ready.set_function(lambda: 1.0 if ready() else 0.0)
    metrics.snapshot_age.set_function(lambda: status.age(clock()))
    metrics.users_tracked.set_function(lambda: limiter.users_tracked(clock()))
    metrics.dedup_ids.set_function(dedup_ids)
    if settings.top_users:
        registry.register(TopUsers(lambda: limiter.top_users(settings.top_users, clock())))
