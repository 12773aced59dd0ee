"""Ingest's composition root: wires the price table, the producer and the HTTP API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from libs.service.db import create_pool
from libs.service.kafka import bounded, make_producer
from libs.service.openapi import OpenApi
from libs.service.runtime import background
from libs.service.web import (
    DEPENDENCIES_KEY,
    READINESS_KEY,
    accept_portal_tokens,
    create_app,
    install_routes,
)
from services.ingest.api import EVENT_LOG, METRICS, PRICE_STORE, PRICES, ROUTES, SETTINGS
from services.ingest.config import IngestSettings
from services.ingest.metrics import IngestMetrics
from services.ingest.prices import PriceCache
from services.ingest.producer import EventLog, KafkaEventLog
from services.ingest.storage import PostgresPriceStore, PriceStore

log = structlog.get_logger(__name__)


class Health:
    """Whether the broker and the database answered the last probe."""

    def __init__(self) -> None:
        self.broker = False
        self.database = False

    async def probe_forever(self, event_log: EventLog, store: PriceStore) -> None:
        """Ask the broker and the database every second."""
        while True:
            self.broker = await event_log.ping()
            try:
                await asyncio.wait_for(store.version(), 2)
            except Exception:
                self.database = False
            else:
                self.database = True
            await asyncio.sleep(1)


def build_app(
    settings: IngestSettings,
    *,
    event_log: EventLog | None = None,
    price_store: PriceStore | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The ingest application; real dependencies are built when none are given."""
    registry = registry or CollectorRegistry()
    openapi = OpenApi(
        title="Tollgate ingest", description="Validates, prices and logs usage events."
    )
    app = create_app(service="ingest", settings=settings, registry=registry, openapi=openapi)
    app[SETTINGS] = settings
    app[METRICS] = IngestMetrics.build(registry)
    health = Health()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = None
        producer = None
        if price_store is None or event_log is None:
            # No connection at start: a replica starting while PostgreSQL is away comes up,
            # and turns ready once it has read the price table.
            pool = await create_pool(
                settings.database_url, max_size=settings.db_pool_max, min_size=0
            )
        store = price_store or PostgresPriceStore(pool)  # type: ignore[arg-type]
        if event_log is None:
            producer = make_producer(
                settings.kafka_bootstrap_servers,
                idempotent=settings.kafka_idempotent,
                request_timeout_s=settings.produce_timeout_s,
            )
            await bounded(producer.start(), settings.kafka_timeout_s * 3, "producer start")
            log_: EventLog = KafkaEventLog(
                producer, settings.events_topic, timeout_s=settings.produce_timeout_s
            )
        else:
            log_ = event_log
        app[PRICE_STORE] = store
        app[EVENT_LOG] = log_
        cache = PriceCache(store, interval_s=settings.price_refresh_s)
        app[PRICES] = cache
        try:
            await asyncio.wait_for(cache.refresh(), settings.kafka_timeout_s)
        except Exception as exc:
            log.warning("prices_unavailable_at_start", error=f"{type(exc).__name__}: {exc}")
        async with (
            background(cache.refresh_forever(), name="prices"),
            background(health.probe_forever(log_, store), name="health"),
        ):
            yield
        if producer is not None:
            await asyncio.wait_for(producer.stop(), settings.kafka_timeout_s)
        if pool is not None:
            await pool.close()

    async def broker_ready() -> tuple[bool, str]:
        return health.broker, "broker"

    async def prices_ready() -> tuple[bool, str]:
        # Until the price table was read once, chat usage would go out unpriced and escape
        # limits; after that, the cached prices carry ingest through a database outage.
        cache = app.get(PRICES)
        return cache is not None and cache.version is not None, "prices"

    async def database_up() -> tuple[bool, str]:
        return health.database, "database"

    app.cleanup_ctx.append(resources)
    # Accepting an event needs the broker and the prices in memory, never PostgreSQL itself.
    app[READINESS_KEY].extend([broker_ready, prices_ready])
    app[DEPENDENCIES_KEY].extend([broker_ready, database_up])
    # Portal tokens are refused here with 403 (or 401 when expired, altered or revoked).
    accept_portal_tokens(app, settings)
    install_routes(app, ROUTES)
    return app
