"""End-to-end freshness: from ingest's acknowledgement to limits and reports counting an event.

Each sample sends one priced chat message for a user nobody used before, notes when
ingest acknowledged it, then polls the service until the event shows in that user's
figures. The poll interval bounds the resolution and is printed beside the figure. A
background stream of simulated usage keeps the consumers busy while they are timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import orjson

from bench import BenchContext, Figure, not_available, percentile
from libs.events.models import ChatUsage, ChatUsageRecorded
from tools.simulator.generate import Simulation, SimulationConfig
from tools.simulator.send import IngestSender, register_prices

__all__ = ["run"]

COST: Final = 1_234
LIMITS_TARGET_MS: Final = 250
REPORTS_TARGET_MS: Final = 2_000

Probe = Callable[[aiohttp.ClientSession, str], Awaitable[bool]]


def _event(user: str, n: int) -> ChatUsageRecorded:
    message = f"{user}-m{n}"
    return ChatUsageRecorded(
        id=message,
        occurred_at=datetime.now(UTC),
        user_id=user,
        data=ChatUsage(
            chat_id=f"{user}-chat",
            message_id=message,
            model="bench-model",
            input_tokens=100,
            output_tokens=10,
            cost_micros=COST,
        ),
    )


def _spent(body: Any) -> int:
    """`spent_micros` of a limits status answer."""
    return int(body.get("spent_micros") or 0) if isinstance(body, dict) else 0


def _reported_cost(body: Any) -> int:
    """Total cost from a per-user cost answer, wherever the totals sit in it."""
    if not isinstance(body, dict):
        return 0
    for holder in (body, body.get("totals"), body.get("user")):
        if isinstance(holder, dict) and "total_cost_micros" in holder:
            return int(holder["total_cost_micros"] or 0)
    return 0


async def _sample(
    session: aiohttp.ClientSession,
    ctx: BenchContext,
    ingest: str,
    probe: Probe,
    user: str,
    *,
    interval_s: float,
    timeout_s: float,
) -> float | None:
    body = orjson.dumps({"events": [_event(user, 0).model_dump(mode="json")]})
    async with session.post(
        f"{ingest}/api/v1/events", data=body, headers=ctx.headers(admin=False)
    ) as response:
        answer = await response.read()
        acked = time.perf_counter()
        if response.status != 200 or not orjson.loads(answer)["accepted"]:
            raise RuntimeError(f"ingest did not accept a freshness probe: {answer[:200]!r}")
    deadline = acked + timeout_s
    while time.perf_counter() < deadline:
        if await probe(session, user):
            return time.perf_counter() - acked
        await asyncio.sleep(interval_s)
    return None


async def _measure(
    ctx: BenchContext,
    ingest: str,
    probe: Probe,
    *,
    samples: int,
    parallel: int,
    interval_s: float,
    timeout_s: float,
    budget_s: float,
) -> tuple[list[float], int]:
    run = uuid.uuid4().hex[:8]
    results: list[float] = []
    missed = 0
    stop_at = time.monotonic() + budget_s
    counter = iter(range(samples))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal missed
            for i in counter:
                if time.monotonic() > stop_at:
                    return
                took = await _sample(
                    session,
                    ctx,
                    ingest,
                    probe,
                    f"fresh-{run}-{i:05d}",
                    interval_s=interval_s,
                    timeout_s=timeout_s,
                )
                if took is None:
                    missed += 1
                else:
                    results.append(took)

        await asyncio.gather(*(worker() for _ in range(parallel)))
    return results, missed


def _figures(
    label: str, results: list[float], missed: int, *, target_ms: int, note: str
) -> list[Figure]:
    area = "freshness"
    if missed:
        note += f"; {missed} probes never showed within the timeout"
    p50 = percentile(results, 50) * 1000
    p99 = percentile(results, 99) * 1000
    return [
        Figure(area, f"ack → {label} p50", round(p50, 1), "ms", note=note),
        Figure(
            area,
            f"ack → {label} p99",
            round(p99, 1),
            "ms",
            target=f"< {target_ms:,} ms",
            meets=p99 < target_ms and not missed,
            note=f"{len(results)} samples",
        ),
    ]


async def _background(ctx: BenchContext, ingest: str, rate: float) -> None:
    """Simulated usage at `rate` events per second until cancelled."""
    sim = Simulation(SimulationConfig(seed=int(time.time()), users=200, days=365))
    await register_prices(ingest, ctx.admin_token, sim.prices)
    sender = IngestSender(ingest_url=ingest, token=ctx.emitter_token, rate=rate, batch_size=100)
    await sender.send(sim.events())


async def run(ctx: BenchContext) -> list[Figure]:
    """Freshness to limits and to reports, under a background stream of usage."""
    ingest = ctx.url("ingest")
    if ingest is None:
        return [
            not_available("freshness", "ack → limits p99", "ingest is not available"),
            not_available("freshness", "ack → reports p99", "ingest is not available"),
        ]
    rate = float(os.environ.get("TOLLGATE_BENCH_BACKGROUND_RATE", "1000"))
    samples = int(os.environ.get("TOLLGATE_BENCH_FRESHNESS_SAMPLES", "1000"))
    budget = max(10.0, ctx.seconds / 2)
    figures: list[Figure] = []
    background = asyncio.create_task(_background(ctx, ingest, rate))
    try:
        limits = ctx.url("limits")
        if limits is None:
            figures += [
                not_available(
                    "freshness",
                    "ack → limits p99",
                    "the limits service is not available yet",
                    target=f"< {LIMITS_TARGET_MS} ms",
                )
            ]
        else:

            async def limits_probe(session: aiohttp.ClientSession, user: str) -> bool:
                async with session.get(
                    f"{limits}/api/v1/limits/status/{user}", headers=ctx.headers()
                ) as r:
                    return r.status == 200 and _spent(orjson.loads(await r.read())) >= COST

            interval = 0.002
            results, missed = await _measure(
                ctx,
                ingest,
                limits_probe,
                samples=samples,
                parallel=4,
                interval_s=interval,
                timeout_s=5,
                budget_s=budget,
            )
            note = f"status polled every {interval * 1000:.0f} ms; {rate:.0f} events/s background"
            figures += _figures("limits", results, missed, target_ms=LIMITS_TARGET_MS, note=note)
        reports = ctx.url("reports")
        if reports is None:
            figures += [
                not_available(
                    "freshness",
                    "ack → reports p99",
                    "the reports service is not available yet",
                    target=f"< {REPORTS_TARGET_MS:,} ms",
                )
            ]
        else:

            async def reports_probe(session: aiohttp.ClientSession, user: str) -> bool:
                async with session.get(
                    f"{reports}/api/v1/costs/users/{user}", headers=ctx.headers()
                ) as r:
                    return r.status == 200 and _reported_cost(orjson.loads(await r.read())) >= COST

            interval = 0.02
            results, missed = await _measure(
                ctx,
                ingest,
                reports_probe,
                samples=max(20, samples // 3),
                parallel=4,
                interval_s=interval,
                timeout_s=15,
                budget_s=budget,
            )
            note = f"cost API polled every {interval * 1000:.0f} ms; {rate:.0f} events/s background"
            figures += _figures("reports", results, missed, target_ms=REPORTS_TARGET_MS, note=note)
    finally:
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await background
    return figures
