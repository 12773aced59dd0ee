"""The publisher's composition root: queue, consumer, sender, heartbeats and the status API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from libs.service.consumer import ConsumerLoop
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
    settings: PublisherSettings, stack: AsyncExitStack, deployment_id: str
) -> BillingClient | None:
    """The HTTP client to the billing server, or None (queue only) when not configured."""
    if settings.billing_url is None or settings.license_key is None:
        log.warning(
            "publisher not configured: billing events are queued, not sent",
            missing=settings.missing,
            queue=settings.queue,
        )
        return None
    session = await stack.enter_async_context(aiohttp.ClientSession())
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
    stack: AsyncExitStack,
    registry: CollectorRegistry,
    *,
    agent_time: AgentTimeHeartbeat,
    metrics: PublisherMetrics,
) -> ConsumerLoop:
    """Join the consumer group; the loop says whether it has caught up and where it stands."""
    producer = make_producer(settings.kafka_bootstrap_servers, idempotent=settings.kafka_idempotent)
    await bounded(producer.start(), settings.kafka_timeout_s * 3, "producer start")
    stack.push_async_callback(lambda: asyncio.wait_for(producer.stop(), settings.kafka_timeout_s))
    loop = make_consumer(
        settings,
        pool,
        dlq_producer=producer,
        registry=registry,
        runtime_since=agent_time.window_start,
        on_late=lambda late: report_late(metrics, late),
    )
    await stack.enter_async_context(background(loop.run(), name="publisher-consumer"))
    # Runs first at a clean stop: read the log to its end (the embedded broker's is lost).
    stack.push_async_callback(loop.drain)
    return loop


class Health:
    """Whether the database answered the last probe."""

    def __init__(self) -> None:
        self.database = False


async def _refresh_gauges(
    store: BillingQueue, metrics: PublisherMetrics, health: Health, every: timedelta
) -> None:
    """Refresh the gauges from the queue, and note whether the database answers, until cancelled."""
    while True:
        try:
            # Not `wait_for`: on Python 3.11 it can swallow the cancellation that stops this
            # loop when the status arrives at the same moment, and shutting down would then
            # wait for this task for ever.
            async with asyncio.timeout(5):
                status = await store.status()
            metrics.observe_status(status)
        except Exception:
            health.database = False
        else:
            health.database = True
        await asyncio.sleep(every.total_seconds())


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
    health = Health()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            pool = None
            if queue is None:
                pool = await create_pool(settings.database_url, max_size=settings.db_pool_max)
                stack.push_async_callback(pool.close)
                store: BillingQueue = PostgresQueue(pool, settings.queue)
            else:
                store = queue
            app[QUEUE] = store
            state = await store.open()
            health.database = True
            deployment_id = settings.deployment_id or state.deployment_id
            billing = client or await _http_client(settings, stack, deployment_id)
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
                    settings, pool, stack, registry, agent_time=agent_time, metrics=metrics
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

            await stack.enter_async_context(
                background(
                    _refresh_gauges(store, metrics, health, settings.gauge_refresh), name="gauges"
                )
            )
            await stack.enter_async_context(background(heartbeat.run_forever(), name="heartbeat"))
            await stack.enter_async_context(background(agent_time.run_forever(), name="agent-time"))
            await stack.enter_async_context(background(sender.run_forever(), name="sender"))
            yield

    async def database_ready() -> tuple[bool, str]:
        return health.database, "database"

    app.cleanup_ctx.append(resources)
    app[READINESS_KEY].append(database_ready)
    app[DEPENDENCIES_KEY].append(database_ready)
    # Portal tokens are refused here with 403 (or 401 when expired, altered or revoked).
    accept_portal_tokens(app, settings)
    install_routes(app, ROUTES)
    return app
