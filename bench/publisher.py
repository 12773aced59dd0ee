"""Publisher benchmark: how fast a backlog of pending billing events drains to the local sink.

`await bench_publisher()` (and `run(ctx)`, the harness's entry point) queues N pending
events (100,000 by default) straight into PostgreSQL under a queue of its own, starts
`tollgate billing-sink` as a separate process, and times the real sender
(`Sender.run_cycle`, which keeps claiming batches of 100 while they come back full) until
the queue is empty. It uses `DATABASE_URL` when set, or an embedded PostgreSQL of its own,
and removes its rows afterwards. Run alone: `python -m bench.publisher [N]`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from prometheus_client import CollectorRegistry

from bench import BenchContext, Figure
from libs.service.db import migrate
from libs.service.embedded import EmbeddedPostgres, free_port, port_open
from services.publisher.domain import DC_MANAGED_AGENTS
from services.publisher.metrics import PublisherMetrics
from services.publisher.sender import HttpBillingClient, Sender, SenderOptions
from services.publisher.storage import PostgresQueue

TARGET_EVENTS_PER_S = 2000
ROOT = Path(__file__).resolve().parents[1]


def _start_sink(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TOLLGATE_LOG_LEVEL": "warning", "TOLLGATE_LOG_FORMAT": "json"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "libs.service.cli",
            "billing-sink",
            "--port",
            str(port),
            "--control-port",
            "0",
            "--max-records",
            "100",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the billing sink did not start")
        time.sleep(0.05)
    return process


async def _fill(pool: asyncpg.Pool, queue: str, events: int) -> None:
    created = datetime.now(UTC) - timedelta(hours=1)
    data = '{"count": 1}'
    records = [(queue, str(uuid.uuid4()), DC_MANAGED_AGENTS, data, created) for _ in range(events)]
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "publisher_events",
            records=records,
            columns=["queue", "id", "event_type", "event_data", "created_at"],
        )
        await conn.execute("ANALYZE publisher_events")


async def _drain(pool: asyncpg.Pool, queue: str, sink_url: str) -> tuple[float, int, int]:
    store = PostgresQueue(pool, queue)
    await store.open()
    options = SenderOptions(
        interval=timedelta(minutes=17),
        first_delay=timedelta(0),
        max_age=timedelta(days=30),
        batch_size=100,
        claim_timeout=timedelta(minutes=5),
        backoff_base=timedelta(minutes=1),
        backoff_max=timedelta(hours=1),
        retention=timedelta(days=90),
    )
    async with aiohttp.ClientSession() as session:
        client = HttpBillingClient(
            session,
            base_url=sink_url,
            license_key="bench-license",
            deployment_id="bench-deployment",
            timeout=timedelta(seconds=30),
        )
        sender = Sender(store, client, options, PublisherMetrics.build(CollectorRegistry()))
        started = time.perf_counter()
        result = await sender.run_cycle()
        seconds = time.perf_counter() - started
        async with session.get(f"{sink_url}/_sink/stats") as resp:
            stats = await resp.json()
    return seconds, result.accepted, int(stats["unique_accepted"])


async def _baseline(sink_url: str, events: int) -> float:
    """The same number of events posted in batches of 100 with no queue at all: events/s."""
    created = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {"Coder-License-Key": "bench-license", "Coder-Deployment-ID": "bench-deployment"}
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        for start in range(0, events, 100):
            batch = [
                {
                    "id": str(uuid.uuid4()),
                    "event_type": DC_MANAGED_AGENTS,
                    "event_data": {"count": 1},
                    "created_at": created,
                }
                for _ in range(min(100, events - start))
            ]
            async with session.post(
                f"{sink_url}/api/v1/events/ingest",
                data=orjson.dumps({"events": batch}),
                headers={**headers, "Content-Type": "application/json"},
            ) as resp:
                await resp.read()
        seconds = time.perf_counter() - started
    return events / seconds if seconds else 0.0


async def bench_publisher(
    events: int = 100_000, *, database_url: str | None = None
) -> dict[str, object]:
    """Drain `events` pending billing events into the local sink; events/s and total time."""
    dsn = database_url or os.environ.get("DATABASE_URL")
    embedded: EmbeddedPostgres | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if not dsn:
        tmp = tempfile.TemporaryDirectory(prefix="tollgate-bench-")
        embedded = EmbeddedPostgres(Path(tmp.name) / "pgdata")
        dsn = embedded.start()
    queue = f"bench-{uuid.uuid4().hex[:12]}"
    port = free_port()
    sink = _start_sink(port)
    try:
        await migrate(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        assert pool is not None
        try:
            fill_started = time.perf_counter()
            await _fill(pool, queue, events)
            fill_s = time.perf_counter() - fill_started
            seconds, accepted, unique_at_sink = await _drain(
                pool, queue, f"http://127.0.0.1:{port}"
            )
            pending = await pool.fetchval(
                "SELECT count(*) FROM publisher_events WHERE queue = $1 AND status = 'pending'",
                queue,
            )
            baseline = await _baseline(f"http://127.0.0.1:{port}", events)
        finally:
            await pool.execute("DELETE FROM publisher_events WHERE queue = $1", queue)
            await pool.execute("DELETE FROM publisher_state WHERE queue = $1", queue)
            await pool.close()
    finally:
        sink.terminate()
        sink.wait(10)
        if embedded is not None:
            embedded.stop()
        if tmp is not None:
            tmp.cleanup()
    rate = accepted / seconds if seconds else 0.0
    return {
        "name": "publisher backlog drain",
        "events": events,
        "accepted": accepted,
        "unique_at_sink": unique_at_sink,
        "left_pending": int(pending),
        "seconds": round(seconds, 3),
        "events_per_s": round(rate, 1),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": rate >= TARGET_EVENTS_PER_S and accepted == events == unique_at_sink,
        "fill_seconds": round(fill_s, 3),
        "baseline_events_per_s": round(baseline, 1),
        "batch_size": 100,
    }


async def run(ctx: BenchContext) -> list[Figure]:
    """The harness's entry point: the drain rate of a 100,000-event backlog, against 2,000/s."""
    events = int(os.environ.get("TOLLGATE_BENCH_PUBLISHER_EVENTS", "100000"))
    result = await bench_publisher(events, database_url=ctx.database_url)
    rate = result["events_per_s"]
    assert isinstance(rate, float)
    return [
        Figure(
            "publisher",
            "backlog drain rate",
            rate,
            "events/s",
            target=f"≥ {TARGET_EVENTS_PER_S:,} events/s",
            meets=bool(result["meets_target"]),
            baseline_name="the same batches posted to the sink with no queue",
            baseline=float(result["baseline_events_per_s"]),  # type: ignore[arg-type]
            note=(
                f"{result['accepted']:,} of {events:,} pending events in {result['seconds']}s, "
                f"batches of 100, one sender, local sink process; "
                f"{result['unique_at_sink']:,} unique at the sink"
            ),
        )
    ]


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    for key, value in asyncio.run(bench_publisher(count)).items():
        print(f"{key:>20}: {value}")
