"""Ingest throughput through the HTTP batch API, beside the broker's raw produce rate.

A dedicated ingest replica writes to a topic of its own, so the consumers of the main
log do not compete with it for this machine's two cores while it is measured; on a real
deployment they run elsewhere. The baseline produces the same events, priced and encoded
as ingest would, with aiokafka alone and the same producer settings, so the ratio is the
cost of HTTP, validation and pricing.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import aiohttp
import orjson
from aiokafka.admin import AIOKafkaAdminClient

from bench import BenchContext, Figure, percentile, wait_ready
from libs.events.codec import encode
from libs.events.models import ChatUsageRecorded, Envelope
from libs.events.pricing import ModelPrice, price_event
from libs.service.embedded import free_port
from libs.service.kafka import bounded, ensure_topics, make_producer
from tools.simulator.generate import Simulation, SimulationConfig
from tools.simulator.send import register_prices

__all__ = ["Payloads", "run"]

BATCH: Final = 500
TARGET_EVENTS_PER_S: Final = 25_000
# Replaced by the request number in every id, so each request carries new events.
_MARK: Final = "~~~~~~~~"
_MARK_BYTES: Final = _MARK.encode()
_WARMUP_S: Final = 2.0


@dataclass
class Payloads:
    """Batches of simulated events: HTTP bodies and the records ingest would produce."""

    bodies: list[bytes]
    records: list[list[tuple[bytes, bytes]]]

    @classmethod
    def build(cls, prices: dict[str, ModelPrice], *, batches: int = 40) -> Payloads:
        """`batches` batches of 500 events drawn from a simulation (directory excluded)."""
        sim = Simulation(
            SimulationConfig(seed=20_240_601, users=200, days=7, end=datetime.now(UTC))
        )
        events: list[Envelope] = []
        for day in range(sim.config.days):
            events.extend(sim.day_events(day))
            if len(events) >= batches * BATCH:
                break
        bodies: list[bytes] = []
        records: list[list[tuple[bytes, bytes]]] = []
        for b in range(min(batches, len(events) // BATCH)):
            chunk = [
                e.model_copy(update={"id": f"bench-{_MARK}-{i:03d}"})
                for i, e in enumerate(events[b * BATCH : (b + 1) * BATCH])
            ]
            bodies.append(orjson.dumps({"events": [e.model_dump(mode="json") for e in chunk]}))
            records.append(
                [
                    (
                        e.partition_key.encode(),
                        encode(price_event(e, prices) if isinstance(e, ChatUsageRecorded) else e),
                    )
                    for e in chunk
                ]
            )
        return cls(bodies, records)


@dataclass
class LoadResult:
    """Events accepted and the latency of each request, over the measured window."""

    accepted: int = 0
    rejected: int = 0
    failed_requests: int = 0
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Accepted events per second."""
        return self.accepted / self.elapsed_s if self.elapsed_s else 0.0


def _stamp(template: bytes, n: int) -> bytes:
    return template.replace(_MARK_BYTES, b"%08x" % n)


async def http_load(
    url: str, token: str, bodies: list[bytes], *, seconds: float, concurrency: int, run_id: int
) -> LoadResult:
    """Post batches from `concurrency` workers for `seconds` (after a short warm-up)."""
    result = LoadResult()
    counter = itertools.count(run_id << 24)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    endpoint = f"{url}/api/v1/events"
    warm_until = time.monotonic() + _WARMUP_S
    stop_at = warm_until + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while (now := time.monotonic()) < stop_at:
                n = next(counter)
                body = _stamp(bodies[n % len(bodies)], n)
                started = time.perf_counter()
                async with session.post(endpoint, data=body, headers=headers) as response:
                    payload = await response.read()
                    status = response.status
                took = time.perf_counter() - started
                if now < warm_until:
                    continue
                result.latencies_s.append(took)
                if status == 200:
                    answer = orjson.loads(payload)
                    result.accepted += len(answer["accepted"])
                    result.rejected += len(answer["rejected"])
                else:
                    result.failed_requests += 1

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(_WARMUP_S)
        measured_from = time.monotonic()
        await asyncio.gather(*tasks)
        result.elapsed_s = time.monotonic() - measured_from
    return result


async def kafka_load(
    bootstrap: str,
    topic: str,
    records: list[list[tuple[bytes, bytes]]],
    *,
    seconds: float,
    concurrency: int,
    run_id: int,
) -> LoadResult:
    """Produce the same batches with aiokafka alone, awaiting every acknowledgement per batch."""
    result = LoadResult()
    counter = itertools.count(run_id << 24)
    producer = make_producer(bootstrap, idempotent=False)
    await bounded(producer.start(), 15, "producer start")
    warm_until = time.monotonic() + _WARMUP_S
    stop_at = warm_until + seconds
    try:

        async def worker() -> None:
            while (now := time.monotonic()) < stop_at:
                n = next(counter)
                mark = b"%08x" % n
                batch = records[n % len(records)]
                started = time.perf_counter()
                futures = [
                    await producer.send(topic, key=k, value=v.replace(_MARK_BYTES, mark))
                    for k, v in batch
                ]
                await asyncio.wait_for(asyncio.gather(*futures), 30)
                took = time.perf_counter() - started
                if now >= warm_until:
                    result.latencies_s.append(took)
                    result.accepted += len(batch)

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(_WARMUP_S)
        measured_from = time.monotonic()
        await asyncio.gather(*tasks)
        result.elapsed_s = time.monotonic() - measured_from
    finally:
        await asyncio.wait_for(producer.stop(), 15)
    return result


async def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    # The embedded broker keeps every message in memory until its topic is deleted.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await bounded(admin.start(), 15, "admin start")
    try:
        await bounded(admin.delete_topics(topics), 30, "delete topics")
    finally:
        await admin.close()


async def run(ctx: BenchContext) -> list[Figure]:
    """Measure ingest and the raw produce baseline; return their figures."""
    seconds = ctx.seconds
    baseline_seconds = min(seconds, float(os.environ.get("TOLLGATE_BENCH_BASELINE_SECONDS", "20")))
    concurrency = int(os.environ.get("TOLLGATE_BENCH_INGEST_CONCURRENCY", "4"))
    suffix = uuid.uuid4().hex[:8]
    topic, raw_topic = f"bench.ingest.{suffix}", f"bench.raw.{suffix}"
    await ensure_topics(ctx.bootstrap, events_topic=topic, dlq_topic=f"{topic}.dlq")
    await ensure_topics(ctx.bootstrap, events_topic=raw_topic, dlq_topic=f"{raw_topic}.dlq")
    port = free_port()
    replica = ctx.start_process(
        "ingest-bench",
        ["serve", "ingest"],
        port=port,
        TOLLGATE_INGEST_PORT=str(port),
        TOLLGATE_EVENTS_TOPIC=topic,
        TOLLGATE_DLQ_TOPIC=f"{topic}.dlq",
        TOLLGATE_LOG_LEVEL="warning",
    )
    try:
        await wait_ready(replica.url)
        sim_prices = Simulation(SimulationConfig(seed=1, users=1, days=1)).prices
        await register_prices(replica.url, ctx.admin_token, sim_prices)
        payloads = Payloads.build(sim_prices)
        ingest = await http_load(
            replica.url,
            ctx.emitter_token,
            payloads.bodies,
            seconds=seconds,
            concurrency=concurrency,
            run_id=1,
        )
    finally:
        replica.stop()
    raw = await kafka_load(
        ctx.bootstrap,
        raw_topic,
        payloads.records,
        seconds=baseline_seconds,
        concurrency=concurrency,
        run_id=2,
    )
    await _delete_topics(ctx.bootstrap, [topic, f"{topic}.dlq", raw_topic, f"{raw_topic}.dlq"])
    note = f"{concurrency} requests in flight, {seconds:.0f}s; dedicated replica on its own topic"
    if ingest.rejected or ingest.failed_requests:
        note += f"; {ingest.rejected} events rejected, {ingest.failed_requests} requests failed"
    baseline_name = f"raw aiokafka produce, same events ({baseline_seconds:.0f}s)"
    return [
        Figure(
            "ingest",
            "accepted events/s (HTTP batches of 500)",
            round(ingest.rate),
            "events/s",
            target=f"≥ {TARGET_EVENTS_PER_S:,}",
            meets=ingest.rate >= TARGET_EVENTS_PER_S,
            baseline_name=baseline_name,
            baseline=round(raw.rate),
            note=note,
        ),
        Figure(
            "ingest",
            "request latency p50 (batch of 500)",
            round(percentile(ingest.latencies_s, 50) * 1000, 2),
            "ms",
            baseline_name="raw produce of one batch, p50",
            baseline=round(percentile(raw.latencies_s, 50) * 1000, 2),
        ),
        Figure(
            "ingest",
            "request latency p99 (batch of 500)",
            round(percentile(ingest.latencies_s, 99) * 1000, 2),
            "ms",
            baseline_name="raw produce of one batch, p99",
            baseline=round(percentile(raw.latencies_s, 99) * 1000, 2),
        ),
    ]
