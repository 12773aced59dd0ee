"""The notifier: renders recorded notifications and delivers the outbox until done.

Every reports replica runs one. Each pass:

1. *Prepare*: notifications limits recorded are rendered once (the webhook body, with the
   username and group name from reports' directory), and their emails are added to the
   outbox (to the user, and the admin version to every owner and user admin, and to
   `TOLLGATE_NOTIFY_ADMIN_EMAILS`). One transaction per batch, rows locked with
   `SKIP LOCKED`, so replicas never render one notification twice. A notification waits (up
   to `TOLLGATE_NOTIFY_DIRECTORY_WAIT`) for its user's entry and for reports' projection to
   have read the log as far as limits had when it recorded it: the directory it is rendered
   from then holds every fact limits had seen, an owner added a moment before included.
2. *Dispatch*: due deliveries are claimed *per target* (each webhook endpoint, and email)
   with `FOR UPDATE SKIP LOCKED` and a claim that expires (a replica that dies mid-send
   gives its claims back after `TOLLGATE_NOTIFY_CLAIM_TIMEOUT`). At most
   `TOLLGATE_NOTIFY_PER_TARGET` attempts per target run at once, so an endpoint that hangs
   holds a few slots of its own and never delays another endpoint or the emails.
3. Each attempt is recorded: delivered, retried after an exponential backoff with jitter
   (or the receiver's `Retry-After`), or failed once the delivery has been retried for
   `TOLLGATE_NOTIFY_RETRY_FOR` (24 hours by default). A receiver that answered 2xx but whose
   answer was lost gets the delivery again with the same `webhook-id`: deliveries are at
   least once, and the id is what a receiver deduplicates by.
4. *Prune*: notifications older than `TOLLGATE_NOTIFY_RETENTION` (90 days) whose deliveries
   are all settled are deleted with their deliveries, at start and hourly. The retention is
   never below 62 days: a notification outlives its period (a month at most), so its unique
   key keeps a replay of that period from recording it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from services.reports.notifications.domain import (
    BUDGET_TYPES,
    CHANNELS,
    EmailContext,
    EmailDraft,
    backoff_s,
    recipients,
    render_email,
    webhook_body,
    webhook_data,
)
from services.reports.notifications.metrics import NotificationMetrics
from services.reports.notifications.senders import Attempt, EmailSender, WebhookSender
from services.reports.notifications.storage import (
    EMAIL_TARGET,
    Claimed,
    Directory,
    Outbox,
    Prepared,
    Settlement,
    Unprepared,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class NotifierOptions:
    """How the notifier paces itself (from `ReportsSettings`)."""

    poll_s: float = 1.0
    prepare_batch: int = 100
    per_target: int = 4
    concurrency: int = 32
    claim_s: float = 60.0
    retry_for_s: float = 24 * 3600.0
    backoff_base_s: float = 10.0
    backoff_max_s: float = 3600.0
    directory_wait_s: float = 30.0
    gauge_refresh_s: float = 5.0
    #: Settled notifications older than this are forgotten (see `prune_forever`).
    retention_s: float = 90 * 86400.0
    prune_every_s: float = 3600.0
    prune_batch: int = 1000
    email_from: str | None = None
    admin_emails: tuple[str, ...] = ()
    console_url: str | None = None


def replica_name() -> str:
    """Who holds a claim: host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Notifier:
    """Prepares and delivers; one per replica."""

    outbox: Outbox
    webhooks: WebhookSender
    email: EmailSender | None
    options: NotifierOptions
    metrics: NotificationMetrics
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time
    claimant: str = field(default_factory=replica_name)
    in_flight: dict[str, int] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    # -- preparing -----------------------------------------------------------------------------

    def prepare_one(self, note: Unprepared, directory: Directory) -> Prepared:
        """The webhook body of a notification and, with email configured, its emails."""
        if note.type not in BUDGET_TYPES:
            return Prepared(webhook_body(note.type, note.created_at, note.data))
        user = directory.user
        data = webhook_data(
            note.data,
            username=user.username if user is not None else None,
            group_name=directory.group_name,
        )
        payload = webhook_body(note.type, note.created_at, data)
        if self.email is None or self.options.email_from is None:
            return Prepared(payload)
        context = EmailContext(
            kind=note.type,
            facts=note.data,
            user=user,
            group_name=directory.group_name,
            console_url=self.options.console_url,
        )
        now = datetime.now(UTC)
        emails = []
        for recipient, audience in recipients(user, directory.admins, self.options.admin_emails):
            delivery_id = uuid.uuid4()
            emails.append(
                EmailDraft(
                    delivery_id,
                    recipient,
                    audience,
                    render_email(
                        context,
                        audience=audience,
                        recipient=recipient,
                        sender=self.options.email_from,
                        delivery_id=delivery_id,
                        now=now,
                    ),
                )
            )
        return Prepared(payload, emails)

    async def prepare(self) -> int:
        """Render every notification waiting for it; returns how many were."""
        total = 0
        while True:
            count = await self.outbox.prepare(
                limit=self.options.prepare_batch,
                directory_wait_s=self.options.directory_wait_s,
                admins_wanted=self.email is not None,
                preparer=self.prepare_one,
            )
            if count.webhooks:
                self.metrics.due.labels("webhook").inc(count.webhooks)
            if count.emails:
                self.metrics.due.labels("email").inc(count.emails)
            total += count.notifications
            if count.notifications < self.options.prepare_batch:
                return total

    # -- dispatching ---------------------------------------------------------------------------

    async def dispatch(self) -> int:
        """Claim what is due for every target with room, and start sending it."""
        started = 0
        options = self.options
        for target in await self.outbox.due_targets():
            if target == EMAIL_TARGET and self.email is None:
                continue
            room = min(
                options.per_target - self.in_flight.get(target, 0),
                options.concurrency - sum(self.in_flight.values()),
            )
            if room <= 0:
                continue
            claimed = await self.outbox.claim(
                target, limit=room, claimant=self.claimant, claim_s=options.claim_s
            )
            for item in claimed:
                self.in_flight[target] = self.in_flight.get(target, 0) + 1
                task = asyncio.create_task(self._deliver(target, item), name=f"notify-{item.id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                started += 1
        return started

    async def _deliver(self, target: str, item: Claimed) -> None:
        try:
            await self.deliver(item)
        except Exception as exc:
            # The claim runs out and another pass tries again.
            log.warning(
                "notification_delivery_error",
                delivery_id=str(item.id),
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self.in_flight[target] -= 1
            if not self.in_flight[target]:
                del self.in_flight[target]
            self._wake.set()

    async def attempt(self, item: Claimed) -> Attempt:
        """Send one claimed delivery once."""
        if item.channel == "webhook":
            if item.url is None or item.secret is None or item.payload is None:
                return Attempt(delivered=False, cause="invalid", error="nothing to send")
            return await self.webhooks.send(
                url=item.url,
                secret=item.secret,
                delivery_id=item.id,
                body=item.payload,
                previous_secret=item.previous_secret,
            )
        if self.email is None or item.recipient is None or item.message is None:
            return Attempt(delivered=False, cause="invalid", error="email is not configured")
        return await self.email.send(recipient=item.recipient, message=item.message)

    async def deliver(self, item: Claimed) -> None:
        """Attempt a delivery and record how it went."""
        channel = item.channel
        started = time.perf_counter()
        outcome = await self.attempt(item)
        self.metrics.attempt_seconds.labels(channel).observe(time.perf_counter() - started)
        options = self.options
        delay = backoff_s(
            item.attempts + 1,
            base_s=options.backoff_base_s,
            cap_s=options.backoff_max_s,
            rng=self.rng,
        )
        if outcome.retry_after_s is not None:
            delay = max(delay, outcome.retry_after_s)
        if outcome.gone and item.webhook_id is not None:
            # Disabled before this attempt is recorded, so that nothing else of the endpoint's
            # can be claimed in between.
            failed = await self.outbox.disable_webhook(
                item.webhook_id, outcome.error or "410 Gone", sparing=item.id
            )
            self.metrics.failed.labels(channel).inc(failed)
            log.warning("notification_webhook_disabled", webhook_id=item.webhook_id, failed=failed)
        status = await self.outbox.settle(
            item,
            Settlement(
                delivered=outcome.delivered,
                error=outcome.error,
                http_status=outcome.http_status,
                final=outcome.final,
                retry_in_s=delay,
            ),
            claimant=self.claimant,
            retry_for_s=options.retry_for_s,
        )
        if status is None:
            log.info("notification_claim_lost", delivery_id=str(item.id))
            return
        result = "retry" if status == "pending" else status
        self.metrics.attempts.labels(channel, result).inc()
        if outcome.cause is not None:
            self.metrics.errors.labels(channel, outcome.cause).inc()
        if status == "delivered":
            self.metrics.delivered.labels(channel).inc()
        elif status == "failed":
            self.metrics.failed.labels(channel).inc()
        log.log(
            20 if outcome.delivered else 30,
            "notification_attempt",
            delivery_id=str(item.id),
            channel=channel,
            webhook_id=item.webhook_id,
            attempt=item.attempts + 1,
            status=status,
            cause=outcome.cause,
            error=outcome.error,
            retry_in_s=round(delay, 3) if status == "pending" else None,
        )

    # -- running -------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """One prepare and dispatch pass; returns how many sends it started."""
        await self.prepare()
        return await self.dispatch()

    async def run_forever(self) -> None:
        """Pass after pass: at once after a send ends, else every `poll_s`."""
        failing = False
        try:
            while True:
                self._wake.clear()
                try:
                    await self.run_once()
                except Exception as exc:
                    if not failing:
                        log.warning(
                            "notifications_pass_failed", error=f"{type(exc).__name__}: {exc}"
                        )
                    failing = True
                else:
                    if failing:
                        log.info("notifications_pass_recovered")
                    failing = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.options.poll_s)
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def prune(self) -> int:
        """Forget every notification past the retention whose deliveries are all settled."""
        total = 0
        while True:
            count = await self.outbox.prune(
                older_than_s=self.options.retention_s, limit=self.options.prune_batch
            )
            total += count
            if count < self.options.prune_batch:
                break
        if total:
            self.metrics.pruned.inc(total)
            log.info("notifications_pruned", notifications=total)
        return total

    async def prune_forever(self) -> None:
        """Prune at start and then every `prune_every_s`; a failed pass waits for the next."""
        while True:
            try:
                await self.prune()
            except Exception as exc:
                log.warning("notifications_prune_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.options.prune_every_s)

    async def refresh_gauges_forever(self) -> None:
        """Pending count and oldest pending age per channel, from the shared outbox."""
        while True:
            with contextlib.suppress(Exception):
                pending = await self.outbox.pending()
                now = datetime.now(UTC)
                for channel in CHANNELS:
                    stats = pending.get(channel)
                    count = stats.count if stats is not None else 0
                    oldest = stats.oldest_created_at if stats is not None else None
                    self.metrics.pending.labels(channel).set(count)
                    self.metrics.oldest_pending_age.labels(channel).set(
                        max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0
                    )
            await asyncio.sleep(self.options.gauge_refresh_s)
