"""Getting simulated events into the system: through ingest's HTTP API, or straight to Kafka.

Both senders keep going through outages: a batch that could not be delivered is sent
again with the very same event ids until it is acknowledged or a deadline passes, so an
outage can delay events but never lose them, and a resend can never double-count
(every consumer deduplicates by id). A token bucket caps the rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from libs.events.client import EmitError, EmitResult, Rejection, TollgateClient
from libs.events.codec import encode
from libs.events.models import ChatUsageRecorded, Envelope
from libs.events.pricing import ModelPrice, price_event
from libs.service.kafka import BrokerUnavailableError, bounded, make_producer

__all__ = [
    "DEFAULT_BATCH",
    "IngestSender",
    "KafkaSender",
    "RateLimiter",
    "SendReport",
    "chunked",
    "register_prices",
]

log = structlog.get_logger(__name__)

#: Events per request: half of what ingest takes, so a retried batch stays quick to resend.
DEFAULT_BATCH: Final = 500
_PRICING_PATH: Final = "/api/v1/pricing/models"
# Ingest replicas reload prices within a second of a change.
_PRICE_PROPAGATION_S: Final = 1.2

#: Sends one batch to ingest: `TollgateClient.emit`, or a fake in tests.
Emit = Callable[[Sequence[Envelope]], Awaitable[EmitResult]]


@dataclass(slots=True)
class SendReport:
    """What a sender did: events offered, accepted, refused, and how often it had to resend."""

    offered: int = 0
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    batches: int = 0
    resent_batches: int = 0
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Accepted events per second over the whole send."""
        return self.accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0


class RateLimiter:
    """A token bucket: `acquire(n)` waits until `n` more events fit under `per_second`."""

    def __init__(
        self,
        per_second: float | None,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_second is not None and per_second <= 0:
            raise ValueError("the rate must be positive")
        self.per_second = per_second
        self.burst = burst if burst is not None else (per_second or 0.0)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()

    async def acquire(self, n: int) -> None:
        """Wait until `n` events may go (a request larger than the burst waits for its share)."""
        if self.per_second is None:
            return
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_second)
        self._last = now
        self._tokens -= n
        if self._tokens < 0:
            await self._sleep(-self._tokens / self.per_second)


def chunked(events: Iterable[Envelope], size: int) -> Iterator[list[Envelope]]:
    """Consecutive lists of at most `size` events."""
    chunk: list[Envelope] = []
    for event in events:
        chunk.append(event)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _is_transient(status: int | None) -> bool:
    return status is None or status >= 500 or status in {408, 425, 429}


async def register_prices(
    ingest_url: str,
    admin_token: str,
    prices: dict[str, ModelPrice],
    *,
    session: aiohttp.ClientSession | None = None,
    timeout_s: float = 10.0,
) -> list[str]:
    """Make ingest's price table hold `prices`; return the models whose price had to change.

    When anything changed, wait until every ingest replica has reloaded the table, so
    no event sent afterwards is priced with an older price.
    """
    own = session is None
    http = session or aiohttp.ClientSession()
    headers = {"Authorization": f"Bearer {admin_token}"}
    base = ingest_url.rstrip("/") + _PRICING_PATH
    changed: list[str] = []
    try:
        async with asyncio.timeout(timeout_s):
            async with http.get(base, headers=headers) as response:
                if response.status != 200:
                    raise RuntimeError(
                        f"ingest answered {response.status} listing prices: "
                        f"{(await response.text())[:200]}"
                    )
                listed = orjson.loads(await response.read())["models"]
            current = {
                row["model"]: ModelPrice.model_validate(
                    {k: v for k, v in row.items() if k not in {"model", "updated_at"}}
                )
                for row in listed
            }
            for model, price in sorted(prices.items()):
                if current.get(model) == price:
                    continue
                async with http.put(
                    f"{base}/{model}", data=orjson.dumps(price.as_json()), headers=headers
                ) as response:
                    if response.status != 200:
                        raise RuntimeError(
                            f"ingest answered {response.status} pricing {model}: "
                            f"{(await response.text())[:200]}"
                        )
                changed.append(model)
    finally:
        if own:
            await http.close()
    if changed:
        await asyncio.sleep(_PRICE_PROPAGATION_S)
    return changed


class IngestSender:
    """Sends events through `POST /api/v1/events` with `TollgateClient.emit`."""

    def __init__(
        self,
        *,
        ingest_url: str,
        token: str,
        batch_size: int = DEFAULT_BATCH,
        rate: float | None = None,
        concurrency: int = 2,
        give_up_after_s: float = 600.0,
        request_timeout_s: float = 15.0,
        on_sent: Callable[[int], None] | None = None,
        emit: Emit | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.emit = emit
        self.sleep = sleep
        self.ingest_url = ingest_url
        self.token = token
        self.batch_size = batch_size
        self.limiter = RateLimiter(rate, burst=max(float(batch_size), (rate or 0) / 10))
        self.concurrency = concurrency
        self.give_up_after_s = give_up_after_s
        self.request_timeout_s = request_timeout_s
        self.on_sent = on_sent

    async def send(self, events: Iterable[Envelope]) -> SendReport:
        """Send every event; raise `EmitError` if a batch is refused as a whole or times out."""
        report = SendReport()
        started = time.monotonic()
        queue: asyncio.Queue[list[Envelope] | None] = asyncio.Queue(self.concurrency * 2)
        async with TollgateClient(
            ingest_url=self.ingest_url,
            limits_url=None,
            token=self.token,
            registry=CollectorRegistry(),
            emit_timeout=self.request_timeout_s,
            max_attempts=2,
            batch_size=self.batch_size,
        ) as client:
            emit = self.emit or client.emit

            async def worker() -> None:
                while (batch := await queue.get()) is not None:
                    await self._deliver(emit, batch, report)

            workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
            try:
                for batch in chunked(events, self.batch_size):
                    report.offered += len(batch)
                    await self.limiter.acquire(len(batch))
                    await _put(queue, batch, workers)
                for _ in workers:
                    await _put(queue, None, workers)
                await asyncio.gather(*workers)
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        report.elapsed_s = time.monotonic() - started
        return report

    async def _deliver(self, emit: Emit, batch: list[Envelope], report: SendReport) -> None:
        deadline = time.monotonic() + self.give_up_after_s
        attempt = 0
        while True:
            try:
                result = await emit(batch)
            except EmitError as exc:
                if not _is_transient(exc.status) or time.monotonic() > deadline:
                    raise
                attempt += 1
                report.resent_batches += 1
                delay = min(5.0, 0.25 * 2**attempt)
                log.warning("simulator_batch_resend", attempt=attempt, reason=str(exc))
                await self.sleep(delay)
                continue
            report.batches += 1
            report.accepted += len(result.accepted)
            report.rejected.extend(result.rejected)
            if self.on_sent is not None:
                self.on_sent(len(result.accepted))
            return


async def _put(
    queue: asyncio.Queue[list[Envelope] | None],
    item: list[Envelope] | None,
    workers: list[asyncio.Task[None]],
) -> None:
    """Queue `item`, but surface a worker's failure instead of waiting on a full queue forever."""
    put = asyncio.ensure_future(queue.put(item))
    while True:
        done, _ = await asyncio.wait([put, *workers], return_when=asyncio.FIRST_COMPLETED)
        if put in done:
            return
        for task in done:
            failure = task.exception()
            if failure is not None:
                put.cancel()
                raise failure


class KafkaSender:
    """Produces events straight onto the topic, priced here as ingest would price them."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        prices: dict[str, ModelPrice],
        batch_size: int = DEFAULT_BATCH,
        rate: float | None = None,
        timeout_s: float = 10.0,
        give_up_after_s: float = 600.0,
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.prices = prices
        self.batch_size = batch_size
        self.limiter = RateLimiter(rate, burst=max(float(batch_size), (rate or 0) / 10))
        self.timeout_s = timeout_s
        self.give_up_after_s = give_up_after_s
        self.on_sent = on_sent

    def record(self, event: Envelope) -> tuple[bytes, bytes]:
        """The key and value ingest would have produced for `event`."""
        if isinstance(event, ChatUsageRecorded):
            event = price_event(event, self.prices)
        return event.partition_key.encode(), encode(event)

    async def send(self, events: Iterable[Envelope]) -> SendReport:
        """Produce every event with `acks=all`; resend a batch the broker did not acknowledge."""
        report = SendReport()
        started = time.monotonic()
        producer = make_producer(self.bootstrap, idempotent=False, linger_ms=5)
        await bounded(producer.start(), self.timeout_s, "producer start")
        try:
            for batch in chunked(events, self.batch_size):
                report.offered += len(batch)
                await self.limiter.acquire(len(batch))
                records = [self.record(e) for e in batch]
                deadline = time.monotonic() + self.give_up_after_s
                attempt = 0
                while True:
                    try:
                        await bounded(self._produce(producer, records), self.timeout_s, "produce")
                        break
                    except (BrokerUnavailableError, KafkaError) as exc:
                        if time.monotonic() > deadline:
                            raise
                        attempt += 1
                        report.resent_batches += 1
                        log.warning("simulator_batch_resend", attempt=attempt, reason=str(exc))
                        await asyncio.sleep(min(5.0, 0.25 * 2**attempt))
                report.batches += 1
                report.accepted += len(batch)
                if self.on_sent is not None:
                    self.on_sent(len(batch))
        finally:
            await asyncio.wait_for(producer.stop(), self.timeout_s)
        report.elapsed_s = time.monotonic() - started
        return report

    async def _produce(
        self, producer: AIOKafkaProducer, records: list[tuple[bytes, bytes]]
    ) -> None:
        futures = [await producer.send(self.topic, value=value, key=key) for key, value in records]
        await asyncio.gather(*futures)
