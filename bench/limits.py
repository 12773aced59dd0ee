"""Benchmarks of the limits service, as plain functions that each return a dict of figures.

- `decision_time`: the in-process decision (`Limiter.decide`) in microseconds.
- `memory_per_user`: bytes per tracked user, per million dedup ids, and snapshot size.
- `http_check_latency`: `POST /api/v1/limits/check` against a running service, at a fixed
  rate (open loop: latency counts from when a request was due, so a stall is not hidden)
  or at the highest rate a number of concurrent callers reach (closed loop).
- `visibility_latency`: from ingest accepting a chat usage to a check showing it.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
import tracemalloc
import zlib
from datetime import UTC, datetime

import aiohttp

from services.limits.domain import (
    DAY,
    MONTH,
    WEEK,
    Ledger,
    Limiter,
    LimitsConfig,
    RecentIds,
)

CHECK_PATH = "/api/v1/limits/check"


def synthetic_limiter(users: int, *, groups: int = 100, seed: int = 1) -> tuple[Limiter, list[str]]:
    """A limiter with spend for `users` users, two groups each, group and user overrides."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    ids = [f"user-{n:08d}" for n in range(users)]
    limiter = Limiter()
    ledger = limiter.ledger
    for user in ids:
        ledger.add_spend(user, rng.randint(1, 2_000_000), now)
    members: dict[str, list[str]] = {f"group-{g}": [] for g in range(groups)}
    for user in ids:
        for g in rng.sample(range(groups), 2):
            members[f"group-{g}"].append(user)
    for group_id, member_ids in members.items():
        ledger.set_group(group_id, member_ids)
    limiter.config = LimitsConfig(
        enabled=True,
        period="month",
        default_limit_micros=1_000_000,
        user_overrides=dict.fromkeys(ids[:: max(1, users // 1000)], 5000000),
        group_overrides={f"group-{g}": 500_000 + g * 10_000 for g in range(0, groups, 3)},
    )
    return limiter, ids


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def decision_time(*, users: int = 100_000, calls: int = 100_000) -> dict[str, float]:
    """Microseconds per `Limiter.decide` over `calls` calls spread over `users` users."""
    limiter, ids = synthetic_limiter(users)
    rng = random.Random(2)
    order = [rng.choice(ids) for _ in range(calls)]
    now = time.time()
    decide = limiter.decide
    for user in order[:1000]:
        decide(user, now)
    gc.disable()
    try:
        started = time.perf_counter_ns()
        for user in order:
            decide(user, now)
        total_ns = time.perf_counter_ns() - started
        samples: list[float] = []
        clock = time.perf_counter_ns
        for user in order[: min(calls, 20_000)]:
            t0 = clock()
            decide(user, now)
            samples.append((clock() - t0) / 1000)
    finally:
        gc.enable()
    samples.sort()
    return {
        "users": users,
        "calls": calls,
        "decision_mean_us": total_ns / calls / 1000,
        # Per-call figures include the timer's own cost (tens of nanoseconds).
        "decision_p50_us": _percentile(samples, 0.50),
        "decision_p99_us": _percentile(samples, 0.99),
        "decision_max_us": samples[-1],
    }


def _traced(build: object) -> tuple[object, int]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        built = build() if callable(build) else None
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return built, after - before


def memory_per_user(*, users: int = 100_000, dedup_ids: int = 1_000_000) -> dict[str, float]:
    """Bytes per tracked user (spend in a day, week and month), per dedup id, and per snapshot."""
    now = datetime.now(UTC)

    def spend_only() -> Ledger:
        ledger = Ledger()
        for n in range(users):
            ledger.add_spend(f"user-{n:08d}", 1_000 + n, now)
        return ledger

    ledger, spend_bytes = _traced(spend_only)
    assert isinstance(ledger, Ledger)
    assert all(len(ledger.spend[i]) == 1 for i in (DAY, WEEK, MONTH))

    def with_groups() -> Ledger:
        # Two groups per user, on top of the spend already built.
        for g in range(100):
            ledger.set_group(f"group-{g}", (f"user-{n:08d}" for n in range(g % 50, users, 50)))
        return ledger

    _, group_bytes = _traced(with_groups)

    def recent_ids() -> RecentIds:
        recent = RecentIds(48 * 3_600_000)
        base = int(time.time() * 1000)
        for n in range(dedup_ids):
            # 48 hours of log time, so the ids spread over every hourly bucket.
            recent.add(
                f"{n:08d}-6f1c0e2a-0b7d-4a57-9a4e-{n:012d}", base + n * 172_800_000 // dedup_ids
            )
        return recent

    recent, dedup_bytes = _traced(recent_ids)
    assert isinstance(recent, RecentIds)
    ledger.recent[0] = recent
    started = time.perf_counter()
    image = ledger.image()
    image_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    raw = image.encode()
    compressed = zlib.compress(raw, 3)
    encode_ms = (time.perf_counter() - started) * 1000
    return {
        "users": users,
        "bytes_per_user_spend": spend_bytes / users,
        "bytes_per_user_two_groups": group_bytes / users,
        "bytes_per_user": (spend_bytes + group_bytes) / users,
        "dedup_ids": dedup_ids,
        "dedup_mb_per_million_ids": dedup_bytes / dedup_ids,  # bytes/id == MB/million
        "snapshot_mb": len(compressed) / 1e6,
        "snapshot_raw_mb": len(raw) / 1e6,
        # The event loop pauses this long to copy the state; encoding runs in a thread.
        "snapshot_loop_pause_ms": image_ms,
        "snapshot_encode_ms": encode_ms,
    }


async def http_check_latency(
    base_url: str,
    *,
    token: str,
    rate: float | None = 2000.0,
    duration_s: float = 10.0,
    users: int = 1000,
    concurrency: int = 32,
) -> dict[str, float]:
    """Check latency over HTTP at `rate` checks/s, or flat out with `concurrency` callers (None).

    At a fixed rate requests are started on schedule whether or not earlier ones have
    answered (open loop). Latency is measured from the moment a request is sent; how late
    the client itself was against the schedule is reported apart (`schedule_lag_p99_ms`),
    so a stalled client is visible rather than blamed on the service.
    """
    url = base_url.rstrip("/") + CHECK_PATH
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = [f'{{"user_id":"bench-user-{n}"}}'.encode() for n in range(users)]
    latencies: list[float] = []
    lags: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency * 8 if rate else concurrency)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=10),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    ) as session:

        async def one(body: bytes, due: float) -> None:
            nonlocal errors
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                return
            latencies.append(time.perf_counter() - sent)
            lags.append(max(0.0, sent - due))

        for body in bodies[:200]:  # connections and caches warm
            await one(body, time.perf_counter())
        latencies.clear()
        lags.clear()
        statuses.clear()
        started = time.perf_counter()
        if rate:
            total = int(rate * duration_s)
            tasks: set[asyncio.Task[None]] = set()
            n = 0
            while n < total:
                # Start everything due by now: timers tick in milliseconds on some loops.
                due_by_now = min(total, int((time.perf_counter() - started) * rate) + 1)
                while n < due_by_now:
                    task = asyncio.create_task(one(bodies[n % users], started + n / rate))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    n += 1
                await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
            await asyncio.gather(*tasks)
        else:

            async def caller(offset: int) -> None:
                n = offset
                while time.perf_counter() - started < duration_s:
                    await one(bodies[n % users], time.perf_counter())
                    n += concurrency

            await asyncio.gather(*(caller(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = sorted(v * 1000 for v in latencies)
    lag_ms = sorted(v * 1000 for v in lags)
    return {
        "target_rate": rate or 0.0,
        "achieved_rate": len(ms) / elapsed,
        "requests": len(ms),
        "errors": errors,
        "unexpected_status": sum(c for s, c in statuses.items() if s not in (200, 409)),
        "p50_ms": _percentile(ms, 0.50),
        "p99_ms": _percentile(ms, 0.99),
        "p999_ms": _percentile(ms, 0.999),
        "max_ms": ms[-1] if ms else float("nan"),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "schedule_lag_p99_ms": _percentile(lag_ms, 0.99),
    }


async def visibility_latency(
    ingest_url: str,
    limits_url: str,
    *,
    token: str,
    samples: int = 200,
    parallel: int = 8,
) -> dict[str, float]:
    """Milliseconds from ingest accepting a chat usage to a limits check showing its cost."""
    headers = {"Authorization": f"Bearer {token}"}
    results: list[float] = []
    semaphore = asyncio.Semaphore(parallel)
    run = f"{time.time_ns():x}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def one(n: int) -> None:
            user = f"bench-visibility-{run}-{n}"
            event = {
                "id": f"bench-{run}-{n}",
                "type": "chat.usage.v1",
                "occurred_at": datetime.now(UTC).isoformat(),
                "user_id": user,
                "data": {
                    "chat_id": "bench",
                    "message_id": f"m{n}",
                    "model": "bench-model",
                    "input_tokens": 1,
                    "output_tokens": 1,
                    "cost_micros": 1,
                },
            }
            async with semaphore:
                async with session.post(
                    f"{ingest_url.rstrip('/')}/api/v1/events",
                    json={"events": [event]},
                    headers=headers,
                ) as resp:
                    await resp.read()
                    if resp.status != 200:
                        return
                accepted = time.perf_counter()
                deadline = accepted + 5
                while time.perf_counter() < deadline:
                    async with session.post(
                        f"{limits_url.rstrip('/')}{CHECK_PATH}",
                        json={"user_id": user},
                        headers=headers,
                    ) as resp:
                        body = await resp.json()
                    if body.get("spent_micros") == 1:
                        results.append((time.perf_counter() - accepted) * 1000)
                        return
                    await asyncio.sleep(0.002)

        await asyncio.gather(*(one(n) for n in range(samples)))
    results.sort()
    return {
        "samples": len(results),
        "missing": samples - len(results),
        "p50_ms": _percentile(results, 0.50),
        "p99_ms": _percentile(results, 0.99),
        "max_ms": results[-1] if results else float("nan"),
    }


if __name__ == "__main__":
    print(decision_time())
    print(memory_per_user())
