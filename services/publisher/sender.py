"""The sender: every interval, claim due billing events and post them to the billing server.

A cycle expires what grew too old, then claims batches of at most 100 due events and posts
them, and keeps going while batches come back full. Each event's outcome is its own:
accepted events are published, permanent rejections are final (with the message kept), and
temporary rejections, events missing from the answer and every event of a request that
failed as a whole go back with an exponential backoff with jitter of their own. A cycle
only claims events that were due when it started, so it never sends one event twice, and a
failed request ends the cycle: the server is not hammered while it is down.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import metadata
from typing import Protocol

import aiohttp
import orjson
import structlog
from pydantic import ValidationError

from libs.service.durations import format_duration
from services.publisher.domain import (
    INGEST_PATH,
    BillingAnswer,
    NotPublishableError,
    Outcome,
    SendCause,
    Sent,
    decide,
    first_delay,
    retry_all,
    wire_event,
)
from services.publisher.metrics import PublisherMetrics
from services.publisher.storage import BillingQueue, Claimed

log = structlog.get_logger(__name__)


def user_agent() -> str:
    """`tollgate-publisher/<version>`."""
    try:
        version = metadata.version("tollgate")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"tollgate-publisher/{version}"


def replica_name() -> str:
    """Who holds a claim: host, process and a random suffix (a restarted pid is another one)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class SendError(Exception):
    """A request that failed as a whole; `cause` is a low-cardinality label."""

    def __init__(self, cause: SendCause, message: str) -> None:
        super().__init__(message)
        self.cause: SendCause = cause
        self.message = message


class BillingClient(Protocol):
    """Posts one batch of wire events and returns the server's answer."""

    async def send(self, events: Sequence[dict[str, object]]) -> BillingAnswer:
        """Raise `SendError` when the request as a whole failed."""
        ...


class HttpBillingClient:
    """The Tallyman-compatible ingest call over aiohttp."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        license_key: str,
        deployment_id: str,
        timeout: timedelta,
    ) -> None:
        self.session = session
        self.url = base_url.rstrip("/") + INGEST_PATH
        self.timeout = aiohttp.ClientTimeout(total=timeout.total_seconds())
        self.headers = {
            "Content-Type": "application/json",
            "Coder-License-Key": license_key,
            "Coder-Deployment-ID": deployment_id,
            "User-Agent": user_agent(),
        }

    async def send(self, events: Sequence[dict[str, object]]) -> BillingAnswer:
        """POST `{"events": [...]}`; any transport problem, 4xx/5xx or bad body is a SendError."""
        body = orjson.dumps({"events": list(events)}, option=orjson.OPT_UTC_Z)
        try:
            # A redirect would turn the POST into something else: report it instead.
            async with self.session.post(
                self.url,
                data=body,
                headers=self.headers,
                timeout=self.timeout,
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as exc:
            raise SendError(
                "timeout", f"no answer from {self.url} within {self.timeout.total}s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise SendError("connect", f"cannot connect to {self.url}: {exc.os_error}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            raise SendError("transport", f"request to {self.url} failed: {detail}") from exc
        if status >= 300:
            snippet = raw[:300].decode(errors="replace").strip()
            cause: SendCause = "http_5xx" if status >= 500 else "http_4xx"
            raise SendError(cause, f"{self.url} answered {status}: {snippet}")
        try:
            return BillingAnswer.model_validate_json(raw)
        except ValidationError as exc:
            raise SendError(
                "bad_response", f"{self.url} answered {status} with an unreadable body: {exc}"
            ) from exc


@dataclass
class CycleResult:
    """What one cycle did, for logs, tests and the bench."""

    requests: int = 0
    answered: int = 0
    accepted: int = 0
    rejected: int = 0
    permanent: int = 0
    retry: int = 0
    expired: int = 0
    failed: SendError | None = None
    by_type: Counter[tuple[str, str]] = field(default_factory=Counter)


@dataclass(frozen=True)
class SenderOptions:
    """The knobs of the sender, lifted from the settings."""

    interval: timedelta
    first_delay: timedelta | None
    max_age: timedelta
    batch_size: int
    claim_timeout: timedelta
    backoff_base: timedelta
    backoff_max: timedelta
    retention: timedelta


class Sender:
    """Runs cycles against one queue; several replicas may run against the same queue."""

    def __init__(
        self,
        queue: BillingQueue,
        client: BillingClient | None,
        options: SenderOptions,
        metrics: PublisherMetrics,
        *,
        claimant: str | None = None,
        rng: random.Random | None = None,
        not_configured: str = "BILLING_URL and LICENSE_KEY are not set",
    ) -> None:
        self.queue = queue
        self.client = client
        self.options = options
        self.metrics = metrics
        self.claimant = claimant or replica_name()
        self.rng = rng or random.Random()  # noqa: S311  # jitter, not secrets
        self.not_configured = not_configured
        self.cycles = 0
        self._log = log.bind(queue=queue.queue)

    async def run_forever(self) -> None:
        """First cycle after the first delay, then one every interval, until cancelled."""
        delay = first_delay(self.options.interval, self.options.first_delay, self.rng)
        self._log.info(
            "publisher_sender_started",
            configured=self.client is not None,
            interval=format_duration(self.options.interval),
            first_cycle_in=format_duration(delay),
            claimant=self.claimant,
        )
        await asyncio.sleep(delay.total_seconds())
        while True:
            try:
                await self.run_cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database is the likely culprit; the next cycle tries again.
                self._log.warning(
                    "publish_cycle_failed",
                    cause="database",
                    error=f"{type(exc).__name__}: {exc}",
                )
            await asyncio.sleep(self.options.interval.total_seconds())

    async def run_cycle(self) -> CycleResult:
        """Expire, then send batches while they come back full; log the cycle once."""
        self.cycles += 1
        result = CycleResult()
        expired = await self.queue.expire(self.options.max_age)
        if expired:
            self._count_expired(expired, result)
        await self.queue.purge(self.options.retention)
        if self.client is None:
            status = await self.queue.status()
            self._log.info(
                f"usage events queued, not sent: {self.not_configured}",
                pending=status.pending,
                expired=result.expired,
            )
            return result
        due_by = await self.queue.now()
        while True:
            claimed = await self.queue.claim(
                due_by=due_by,
                limit=self.options.batch_size,
                claimant=self.claimant,
                hold=self.options.claim_timeout,
            )
            if not claimed:
                break
            sent = await self._send_batch(self.client, claimed, result)
            if result.failed is not None or len(claimed) < self.options.batch_size or not sent:
                break
        if result.failed is None or result.answered:
            self._log.info(
                f"published usage events accepted={result.accepted} rejected={result.rejected}",
                accepted=result.accepted,
                rejected=result.rejected,
                permanent=result.permanent,
                retry=result.retry,
                requests=result.requests,
            )
        return result

    def _count_expired(self, expired: dict[str, int], result: CycleResult) -> None:
        total = sum(expired.values())
        result.expired += total
        self.metrics.expired.inc(total)
        for event_type, n in expired.items():
            self.metrics.events.labels(event_type, "expired").inc(n)
        self._log.warning(
            "usage events expired unsent",
            count=total,
            by_type=expired,
            max_age=format_duration(self.options.max_age),
        )

    async def _send_batch(
        self, client: BillingClient, claimed: list[Claimed], result: CycleResult
    ) -> bool:
        """Send one claimed batch; False when nothing could be sent from it."""
        wire: list[dict[str, object]] = []
        sent: list[Sent] = []
        refused: list[Outcome] = []
        for row in claimed:
            try:
                wire.append(wire_event(row.id, row.event_type, row.event_data, row.created_at))
            except NotPublishableError as exc:
                refused.append(Outcome(row.id, row.event_type, "rejected", f"not sent: {exc}"))
            else:
                sent.append(Sent(row.id, row.event_type, row.attempts))
        if refused:
            # Defence in depth: a row that is not exactly a count never leaves the deployment.
            await self.queue.discard(refused, claimant=self.claimant)
            self._record(refused, result)
            self._log.error(
                "usage_events_refused_locally", count=len(refused), first=refused[0].message
            )
        if not sent:
            return bool(refused)
        result.requests += 1
        started = time.perf_counter()
        try:
            answer = await client.send(wire)
        except SendError as exc:
            self.metrics.request_seconds.observe(time.perf_counter() - started)
            await self._failed(sent, exc, result)
            return False
        self.metrics.request_seconds.observe(time.perf_counter() - started)
        result.answered += 1
        outcomes = decide(
            sent,
            answer,
            base=self.options.backoff_base,
            cap=self.options.backoff_max,
            rng=self.rng,
        )
        ended = await self.queue.settle(outcomes, claimant=self.claimant)
        self._record(outcomes, result)
        if ended:
            self._log.info(
                f"publisher recovered: the billing server answered after {ended} failed requests",
                previous_failures=ended,
            )
        retries = [o for o in outcomes if o.kind == "retry"]
        if retries:
            self._log.info(
                "usage_events_retry_later",
                count=len(retries),
                temporarily_rejected=sum(1 for o in retries if o.rejected),
                first=retries[0].message,
            )
        return True

    async def _failed(self, sent: list[Sent], exc: SendError, result: CycleResult) -> None:
        outcomes = retry_all(
            sent,
            f"{exc.cause}: {exc.message}",
            base=self.options.backoff_base,
            cap=self.options.backoff_max,
            rng=self.rng,
        )
        streak = await self.queue.fail(
            outcomes, claimant=self.claimant, cause=exc.cause, error=exc.message
        )
        result.failed = exc
        self.metrics.send_errors.labels(exc.cause).inc()
        self._record(outcomes, result)
        self._log.warning(
            f"failed to send publish request cause={exc.cause} count={len(sent)}",
            cause=exc.cause,
            error=exc.message,
            count=len(sent),
            consecutive_failures=streak,
        )

    def _record(self, outcomes: Sequence[Outcome], result: CycleResult) -> None:
        for o in outcomes:
            self.metrics.events.labels(o.event_type, o.kind).inc()
            result.by_type[(o.event_type, o.kind)] += 1
            if o.kind == "accepted":
                result.accepted += 1
            elif o.kind == "rejected":
                result.rejected += 1
                result.permanent += 1
            else:
                result.retry += 1
                if o.rejected:
                    result.rejected += 1
