"""Ingest's composition root: wires the price table, the producer and the HTTP API."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from libs.service.openapi import OpenApi
from libs.service.runtime import Resources, lifecycle
from libs.service.web import (
    Probe,
    accept_portal_tokens,
    create_app,
    declare_readiness,
    install_routes,
)
from services.ingest.api import EVENT_LOG, METRICS, PRICE_STORE, PRICES, ROUTES, SETTINGS
from services.ingest.config import IngestSettings
from services.ingest.metrics import IngestMetrics
from services.ingest.prices import PriceCache
from services.ingest.producer import EventLog, KafkaEventLog
from services.ingest.storage import PostgresPriceStore, PriceStore

log = structlog.get_logger(__name__)


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
    # Looked up when asked: the log and the store exist once the app has started.
    broker = Probe("broker", lambda: app[EVENT_LOG].ping())  # noqa: PLW0108
    database = Probe("database", lambda: app[PRICE_STORE].version())  # noqa: PLW0108

    async def start(app: web.Application, resources: Resources) -> None:
        store = price_store
        if store is None:
            # No connection at start: a replica starting while PostgreSQL is away comes up,
            # and turns ready once it has read the price table.
            pool = await resources.pool(
                settings.database_url, max_size=settings.db_pool_max, min_size=0
            )
            store = PostgresPriceStore(pool)
        events = event_log
        if events is None:
            producer = await resources.producer(
                settings.kafka_bootstrap_servers,
                idempotent=settings.kafka_idempotent,
                timeout_s=settings.kafka_timeout_s,
                request_timeout_s=settings.produce_timeout_s,
            )
            events = KafkaEventLog(
                producer, settings.events_topic, timeout_s=settings.produce_timeout_s
            )
        app[PRICE_STORE] = store
        app[EVENT_LOG] = events
        cache = PriceCache(store, interval_s=settings.price_refresh_s)
        app[PRICES] = cache
        try:
            await asyncio.wait_for(cache.refresh(), settings.kafka_timeout_s)
        except Exception as exc:
            log.warning("prices_unavailable_at_start", error=f"{type(exc).__name__}: {exc}")
        await resources.background(cache.refresh_forever(), name="prices")
        await resources.background(broker.run_forever(), name="broker-probe")
        await resources.background(database.run_forever(), name="database-probe")

    def prices_loaded() -> bool:
        # Until the price table was read once, chat usage would go out unpriced and escape
        # limits; after that, the cached prices carry ingest through a database outage.
        cache = app.get(PRICES)
        return cache is not None and cache.loaded

    app.cleanup_ctx.append(lifecycle(start))
    # Accepting an event needs the broker and the prices in memory, never PostgreSQL itself.
    declare_readiness(
        app,
        needs={"broker": broker, "prices": prices_loaded},
        reports={"broker": broker, "database": database},
    )
    # Portal tokens are refused here with 403 (or 401 when expired, altered or revoked).
    accept_portal_tokens(app, settings)
    install_routes(app, ROUTES)
    return app
