"""The publisher's composition root: queue, consumer, sender, heartbeats and the status API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp
import asyncpg
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from libs.service.consumer import ConsumerLoop
from libs.service.openapi import OpenApi
from libs.service.runtime import Resources, lifecycle
from libs.service.web import (
    Probe,
    accept_portal_tokens,
    create_app,
    declare_readiness,
    install_routes,
)
from services.publisher.agent_time import AgentTimeHeartbeat, report_late
from services.publisher.api import AGENT_TIME, METRICS, QUEUE, ROUTES, SETTINGS
from services.publisher.config import PublisherSettings
from services.publisher.consumer import make_consumer
from services.publisher.heartbeat import SeatHeartbeat
from services.publisher.metrics import PublisherMetrics
from services.publisher.sender import BillingClient, HttpBillingClient, Sender, SenderOptions
from services.publisher.storage import BillingQueue, PostgresQueue

log = structlog.get_logger(__name__)


def sender_options(settings: PublisherSettings) -> SenderOptions:
    """The sender's knobs from the settings."""
    return SenderOptions(
        interval=settings.interval,
        first_delay=settings.first_delay,
        max_age=settings.max_age,
        batch_size=settings.batch_size,
        claim_timeout=settings.claim_timeout,
        backoff_base=settings.backoff_base,
        backoff_max=settings.backoff_max,
        retention=settings.retention,
    )


async def _http_client(
    settings: PublisherSettings, resources: Resources, deployment_id: str
) -> BillingClient | None:
    """The HTTP client to the billing server, or None (queue only) when not configured."""
    if settings.billing_url is None or settings.license_key is None:
        log.warning(
            "publisher not configured: billing events are queued, not sent",
            missing=settings.missing,
            queue=settings.queue,
        )
        return None
    session = await resources.enter(aiohttp.ClientSession())
    log.info(
        "publisher_configured",
        billing_url=settings.public_billing_url,
        deployment_id=deployment_id,
        queue=settings.queue,
    )
    return HttpBillingClient(
        session,
        base_url=settings.billing_url,
        license_key=settings.license_key.get_secret_value(),
        deployment_id=deployment_id,
        timeout=settings.request_timeout,
    )


async def _start_consumer(
    settings: PublisherSettings,
    pool: asyncpg.Pool,
    resources: Resources,
    registry: CollectorRegistry,
    *,
    agent_time: AgentTimeHeartbeat,
    metrics: PublisherMetrics,
) -> ConsumerLoop:
    """Join the consumer group; the loop says whether it has caught up and where it stands."""
    producer = await resources.producer(
        settings.kafka_bootstrap_servers,
        idempotent=settings.kafka_idempotent,
        timeout_s=settings.kafka_timeout_s,
    )
    loop = make_consumer(
        settings,
        pool,
        dlq_producer=producer,
        registry=registry,
        runtime_since=agent_time.window_start,
        on_late=lambda late: report_late(metrics, late),
    )
    await resources.background(loop.run(), name="publisher-consumer")
    # Runs first at a clean stop: read the log to its end (the embedded broker's is lost).
    resources.at_stop(loop.drain)
    return loop


def build_app(
    settings: PublisherSettings,
    *,
    queue: BillingQueue | None = None,
    client: BillingClient | None = None,
    registry: CollectorRegistry | None = None,
    consume: bool = True,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> web.Application:
    """The publisher application; real dependencies are built when none are given.

    `consume=False` leaves out the consumer group (a sender-only replica, or a test that
    fills the queue itself). A `client` replaces the HTTP client to the billing server.
    """
    registry = registry or CollectorRegistry()
    openapi = OpenApi(
        title="Tollgate publisher",
        description="Queues billable usage and reports it to the billing server.",
    )
    app = create_app(service="publisher", settings=settings, registry=registry, openapi=openapi)
    metrics = PublisherMetrics.build(registry)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    metrics.configured.set(1 if settings.configured else 0)

    async def refresh_gauges() -> None:
        metrics.observe_status(await app[QUEUE].status())

    # The gauges' refresh is also the database's probe.
    database = Probe(
        "database", refresh_gauges, every_s=settings.gauge_refresh.total_seconds(), timeout_s=5
    )

    async def start(app: web.Application, resources: Resources) -> None:
        pool = None
        if queue is None:
            pool = await resources.pool(settings.database_url, max_size=settings.db_pool_max)
            store: BillingQueue = PostgresQueue(pool, settings.queue)
        else:
            store = queue
        app[QUEUE] = store
        state = await store.open()
        database.up = True
        deployment_id = settings.deployment_id or state.deployment_id
        billing = client or await _http_client(settings, resources, deployment_id)
        agent_time = AgentTimeHeartbeat(
            store,
            metrics,
            topic=settings.events_topic,
            progress=None,
            lag=settings.agent_time_lag,
            window=settings.agent_time_window,
            check_every=settings.heartbeat_check,
            clock=clock,
        )
        app[AGENT_TIME] = agent_time
        ready: Callable[[], bool] = lambda: True  # noqa: E731  # no consumer: always
        if consume and pool is not None:
            loop = await _start_consumer(
                settings, pool, resources, registry, agent_time=agent_time, metrics=metrics
            )
            ready = loop.caught_up.is_set
            agent_time.progress = loop.progress
        sender = Sender(
            store,
            billing,
            sender_options(settings),
            metrics,
            not_configured=f"{' and '.join(settings.missing)} not set",
        )
        heartbeat = SeatHeartbeat(
            store, metrics, ready=ready, check_every=settings.heartbeat_check, clock=clock
        )
        await resources.background(database.run_forever(), name="gauges")
        await resources.background(heartbeat.run_forever(), name="heartbeat")
        await resources.background(agent_time.run_forever(), name="agent-time")
        await resources.background(sender.run_forever(), name="sender")

    app.cleanup_ctx.append(lifecycle(start))
    declare_readiness(app, needs={"database": database}, reports={"database": database})
    # Portal tokens are refused here with 403 (or 401 when expired, altered or revoked).
    accept_portal_tokens(app, settings)
    install_routes(app, ROUTES)
    return app
