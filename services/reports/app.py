"""Reports' composition root: the database pool, the consumer group, the limits client, the API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from libs.service.consumer import ConsumerLoop
from libs.service.openapi import OpenApi
from libs.service.portal import InMemoryRevocationStore, RevocationStore
from libs.service.runtime import Resources, background, lifecycle
from libs.service.web import (
    Probe,
    accept_portal_tokens,
    create_app,
    declare_readiness,
    install_routes,
)
from services.reports.api import LIMITS, METRICS, ROUTES, STORE
from services.reports.config import ReportsSettings
from services.reports.console.routes import CONSOLE, add_console
from services.reports.console.sessions import (
    InMemorySessionStore,
    PostgresSessionStore,
    SessionStore,
)
from services.reports.consumer import ReportsSink, build_consumer
from services.reports.limits import HttpLimitsClient, LimitsClient, NoLimits
from services.reports.metrics import ReportsMetrics
from services.reports.notifications.api import (
    NOTIFICATION_ROUTES,
    NOTIFICATIONS,
    NotificationsApi,
)
from services.reports.notifications.dispatcher import Notifier, NotifierOptions
from services.reports.notifications.domain import AddressPolicy, parse_networks
from services.reports.notifications.metrics import NotificationMetrics
from services.reports.notifications.senders import EmailSender, SmtpServer, WebhookSender
from services.reports.notifications.storage import (
    InMemoryNotificationAdmin,
    NotificationAdmin,
    PostgresNotificationStore,
)
from services.reports.portal import PORTAL_ROUTES
from services.reports.storage import PostgresReportStore, ReportStore

CONSUMER = web.AppKey("reports_consumer", ConsumerLoop)


class Runtime:
    """What the readiness checks look at: the database probe and the consumer, once started."""

    def __init__(self, database: Probe) -> None:
        self.database = database
        self.loop: ConsumerLoop | None = None
        self.sink: ReportsSink | None = None

    def consumer_ready(self) -> bool:
        """The projection has read and committed the log as it stood at start."""
        if self.loop is None or self.sink is None:
            return True
        return self.loop.caught_up.is_set() and self.sink.idle


def address_policy(settings: ReportsSettings) -> AddressPolicy:
    """Where webhooks may connect, from the settings."""
    return AddressPolicy(
        allow_private=settings.webhook_allow_private,
        allowed_networks=parse_networks(settings.webhook_allow_networks),
    )


def notifier_options(settings: ReportsSettings) -> NotifierOptions:
    """The notifier's pacing and email settings."""
    return NotifierOptions(
        poll_s=settings.notify_poll_s,
        per_target=settings.notify_per_target,
        concurrency=settings.notify_concurrency,
        claim_s=settings.notify_claim_timeout_s,
        retry_for_s=settings.notify_retry_for.total_seconds(),
        retention_s=settings.notify_retention.total_seconds(),
        backoff_base_s=settings.notify_backoff_base.total_seconds(),
        backoff_max_s=settings.notify_backoff_max.total_seconds(),
        directory_wait_s=settings.notify_directory_wait_s,
        email_from=settings.smtp_from if settings.smtp_url else None,
        admin_emails=settings.notify_admin_emails,
        console_url=settings.public_url,
    )


def _notifications_api(settings: ReportsSettings, store: NotificationAdmin) -> NotificationsApi:
    return NotificationsApi(
        store=store,
        policy=address_policy(settings),
        email_from=settings.smtp_from if settings.smtp_url else None,
        admin_emails=len(settings.notify_admin_emails),
        delivering=settings.notify_deliver,
        retry_for_s=settings.notify_retry_for.total_seconds(),
        retention_s=settings.notify_retention.total_seconds(),
    )


@asynccontextmanager
async def _notifier(
    settings: ReportsSettings, store: PostgresNotificationStore, registry: CollectorRegistry
) -> AsyncIterator[None]:
    """The notifier's dispatch and gauge tasks, with their HTTP session (when delivering)."""
    if not settings.notify_deliver:
        yield
        return
    policy = address_policy(settings)
    options = notifier_options(settings)
    email = None
    if settings.smtp_url and settings.smtp_from:
        email = EmailSender(
            SmtpServer.parse(settings.smtp_url),
            sender=settings.smtp_from,
            timeout_s=settings.notify_timeout_s,
        )
    async with WebhookSender.session_for(policy) as session:
        notifier = Notifier(
            outbox=store,
            webhooks=WebhookSender(
                session,
                policy=policy,
                timeout_s=settings.notify_timeout_s,
                retry_after_cap_s=options.backoff_max_s,
            ),
            email=email,
            options=options,
            metrics=NotificationMetrics.build(registry),
        )
        async with (
            background(notifier.run_forever(), name="notifier"),
            background(notifier.refresh_gauges_forever(), name="notifier-gauges"),
            background(notifier.prune_forever(), name="notifier-prune"),
        ):
            yield


async def _start(  # what build_app was given, passed on once
    app: web.Application,
    resources: Resources,
    settings: ReportsSettings,
    *,
    store: ReportStore | None,
    limits: LimitsClient | None,
    registry: CollectorRegistry,
    metrics: ReportsMetrics,
    runtime: Runtime,
    sessions_given: bool,
    notifications: NotificationAdmin | None,
) -> None:
    """The store, the consumer group, the notifier and the limits client.

    At the stop, in this order: the limits client closes, the log is read to its end, the
    notifier and the consumer stop, the sink closes, the producer stops, the pool closes.
    """
    if store is not None:
        app[STORE] = store
        app[NOTIFICATIONS] = _notifications_api(
            settings, notifications or InMemoryNotificationAdmin()
        )
        runtime.database.up = True
    else:
        pool = await resources.pool(settings.database_url, max_size=settings.db_pool_max)
        reports = PostgresReportStore(pool, max_session_hours=settings.max_session_hours)
        app[STORE] = reports
        outbox = PostgresNotificationStore(pool, projection=settings.consumer_group)
        app[NOTIFICATIONS] = _notifications_api(settings, notifications or outbox)
        if not sessions_given:
            app[CONSOLE].store = PostgresSessionStore(pool)
        producer = await resources.producer(
            settings.kafka_bootstrap_servers, idempotent=False, timeout_s=settings.kafka_timeout_s
        )
        loop, sink = build_consumer(
            settings, pool=pool, dlq_producer=producer, registry=registry, metrics=metrics
        )
        runtime.loop, runtime.sink = loop, sink
        app[CONSUMER] = loop
        resources.at_stop(sink.close)
        await resources.background(runtime.database.run_forever(), name="db-probe")
        await resources.background(loop.run(), name="consumer")
        await resources.enter(_notifier(settings, outbox, registry))
        # A clean stop reads the log to its end first (the embedded broker's is lost).
        resources.at_stop(loop.drain)
    if limits is not None or not settings.limits_url:
        app[LIMITS] = limits or NoLimits()
        return
    session = await resources.enter(aiohttp.ClientSession())
    app[LIMITS] = HttpLimitsClient(
        session,
        base_url=settings.limits_url,
        token=settings.limits_token,
        timeout_s=settings.limits_timeout_s,
        on_error=lambda reason: metrics.limits_errors.labels(reason).inc(),
    )


def build_app(
    settings: ReportsSettings,
    *,
    store: ReportStore | None = None,
    limits: LimitsClient | None = None,
    registry: CollectorRegistry | None = None,
    sessions: SessionStore | None = None,
    revocations: RevocationStore | None = None,
    notifications: NotificationAdmin | None = None,
) -> web.Application:
    """The reports application; real dependencies are built when none are given.

    With a `store` given, nothing connects to PostgreSQL or Kafka: the app serves that store
    (tests pass an in-memory one) and is ready at once; console sessions and portal token
    revocations are then kept in memory unless `sessions` and `revocations` are given.
    """
    registry = registry or CollectorRegistry()
    openapi = OpenApi(
        title="Tollgate reports",
        description=(
            "Projections of the usage log in PostgreSQL: Coder's Activity API, chat cost "
            "tracking, and Comet's chargeback report."
        ),
    )
    app = create_app(service="reports", settings=settings, registry=registry, openapi=openapi)
    metrics = ReportsMetrics.build(registry)
    app[METRICS] = metrics
    runtime = Runtime(Probe("database", lambda: app[STORE].ping()))  # noqa: PLW0108
    if store is not None:
        sessions = sessions or InMemorySessionStore()
        revocations = revocations or InMemoryRevocationStore()
    add_console(app, settings, sessions or InMemorySessionStore())
    sessions_given = sessions is not None

    async def start(app: web.Application, resources: Resources) -> None:
        await _start(
            app,
            resources,
            settings,
            store=store,
            limits=limits,
            registry=registry,
            metrics=metrics,
            runtime=runtime,
            sessions_given=sessions_given,
            notifications=notifications,
        )

    app.cleanup_ctx.append(lifecycle(start))
    accept_portal_tokens(app, settings, store=revocations)
    declare_readiness(
        app,
        needs={"database": runtime.database, "consumer": runtime.consumer_ready},
        reports={"database": runtime.database},
    )
    install_routes(app, (*ROUTES, *PORTAL_ROUTES, *NOTIFICATION_ROUTES))
    return app
