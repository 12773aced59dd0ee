"""Benchmarks of the limits service, as plain functions that each return a dict of figures.

- `decision_time`: the in-process decision (`Limiter.decide`) in microseconds.
- `memory_per_user`: bytes per tracked user, per million dedup ids, and snapshot size.
- `http_check_latency`: `POST /api/v1/limits/check` against a running service, at a fixed
  rate (open loop: a request goes out when it is due whether or not earlier ones have
  answered) or at the highest rate a number of concurrent callers reach (closed loop). The
  requests come from a load generator in a process of its own (`python -m bench.limits
  load …`, see `generate_load`), so the caller's work never competes with the service for
  the event loop, and a caller's own lateness is told apart from the service's.
- `background_usage`: simulated usage flowing through ingest meanwhile.
- `visibility_latency`: from ingest accepting a chat usage to a check showing it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import re
import selectors
import socket
import statistics
import struct
import sys
import time
import tracemalloc
import zlib
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

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
from tools.simulator.generate import Simulation, SimulationConfig
from tools.simulator.send import IngestSender, register_prices

CHECK_PATH = "/api/v1/limits/check"


#: Organisations of the synthetic ledger; group g belongs to ORGS[g % len(ORGS)].
ORGS: Final = ("org-0", "org-1", "org-2")


def synthetic_limiter(users: int, *, groups: int = 100, seed: int = 1) -> tuple[Limiter, list[str]]:
    """A limiter with spend for `users` users, two groups each, group and user overrides.

    Groups belong to three organisations; every user spends in one of them and one user in
    twenty in a second one as well.
    """
    rng = random.Random(seed)
    now = datetime.now(UTC)
    ids = [f"user-{n:08d}" for n in range(users)]
    limiter = Limiter()
    ledger = limiter.ledger
    for n, user in enumerate(ids):
        ledger.add_spend(user, rng.randint(1, 2_000_000), now, ORGS[n % len(ORGS)])
        if n % 20 == 0:
            ledger.add_spend(user, rng.randint(1, 2_000_000), now, ORGS[(n + 1) % len(ORGS)])
    members: dict[str, list[str]] = {f"group-{g}": [] for g in range(groups)}
    for user in ids:
        for g in rng.sample(range(groups), 2):
            members[f"group-{g}"].append(user)
    for g, (group_id, member_ids) in enumerate(members.items()):
        ledger.set_group(group_id, member_ids, org_id=ORGS[g % len(ORGS)])
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
    """Microseconds per `Limiter.decide` over `calls` calls spread over `users` users.

    Checks without an organisation, and the same checks naming one (the group tier then
    reads the organisation of each group and, when a group wins, the user's spend there).
    """
    limiter, ids = synthetic_limiter(users)
    rng = random.Random(2)
    order = [rng.choice(ids) for _ in range(calls)]
    orgs = [rng.choice(ORGS) for _ in range(calls)]
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
        started = time.perf_counter_ns()
        for user, org in zip(order, orgs, strict=True):
            decide(user, now, org)
        org_total_ns = time.perf_counter_ns() - started
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
        "decision_org_mean_us": org_total_ns / calls / 1000,
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
    """Bytes per tracked user (spend in a day, week and month), per dedup id, and per snapshot.

    The spend figure is that of users who spend in one organisation (most users); beside it,
    the same spend naming no organisation (the ledger before organisations were kept) and
    what a user's spend in a second organisation adds.
    """
    now = datetime.now(UTC)

    def spend_without_org() -> Ledger:
        ledger = Ledger()
        for n in range(users):
            ledger.add_spend(f"user-{n:08d}", 1_000 + n, now)
        return ledger

    _, no_org_bytes = _traced(spend_without_org)

    def spend_only() -> Ledger:
        ledger = Ledger()
        for n in range(users):
            ledger.add_spend(f"user-{n:08d}", 1_000 + n, now, ORGS[n % len(ORGS)])
        return ledger

    ledger, spend_bytes = _traced(spend_only)
    assert isinstance(ledger, Ledger)
    assert all(len(ledger.spend[i]) == 1 for i in (DAY, WEEK, MONTH))

    split_users = users // 10

    def second_org() -> Ledger:
        other = Ledger()
        for n in range(split_users):
            other.add_spend(f"user-{n:08d}", 1_000 + n, now, ORGS[0])
        return other

    other, _ = _traced(second_org)
    assert isinstance(other, Ledger)

    def split() -> Ledger:
        for n in range(split_users):
            other.add_spend(f"user-{n:08d}", 7, now, ORGS[1])
        return other

    _, split_bytes = _traced(split)

    def with_groups() -> Ledger:
        # Two groups per user, on top of the spend already built.
        for g in range(100):
            ledger.set_group(
                f"group-{g}",
                (f"user-{n:08d}" for n in range(g % 50, users, 50)),
                org_id=ORGS[g % len(ORGS)],
            )
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
        "bytes_per_user_spend_no_org": no_org_bytes / users,
        "bytes_per_user_second_org": split_bytes / split_users,
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


# Linux's SO_TIMESTAMPNS (and SCM_TIMESTAMPNS): the kernel stamps each received segment with
# the time it arrived, before the receiving process is even scheduled.
_SO_TIMESTAMPNS: Final = 35
_TIMESPEC: Final = struct.Struct("qq")
_CONTENT_LENGTH: Final = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class _Connection:
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    __slots__ = ("buffer", "due_ns", "kernel_stamps", "sent_ns", "sock")

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            self.kernel_stamps = True
        except OSError:  # not Linux: the generator's own clock at read time
            self.kernel_stamps = False
        self.sock.settimeout(0.0)  # non-blocking
        self.buffer = bytearray()
        self.sent_ns = 0
        self.due_ns = 0

    def send(self, request: bytes, due_ns: int) -> None:
        self.due_ns = due_ns
        self.sent_ns = time.time_ns()
        self.sock.sendall(request)  # a few hundred bytes: the socket buffer always takes them

    def receive(self) -> tuple[int, int, int] | None:
        """(status, arrival ns, read ns) once a whole response is in, else None."""
        read_ns = time.time_ns()
        data, ancillary, _, _ = self.sock.recvmsg(65536, 64)
        if not data:
            raise ConnectionError("the service closed the connection")
        arrived_ns = read_ns
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                seconds, nanoseconds = _TIMESPEC.unpack(payload[: _TIMESPEC.size])
                arrived_ns = seconds * 1_000_000_000 + nanoseconds
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        match = _CONTENT_LENGTH.search(self.buffer, 0, head_end + 2)
        length = int(match.group(1)) if match else 0
        if len(self.buffer) < head_end + 4 + length:
            return None
        status = int(self.buffer[9:12])
        del self.buffer[: head_end + 4 + length]
        return status, arrived_ns, read_ns


class _LoadGenerator:
    """Connections to the service, what they have in flight, and what came back."""

    def __init__(self, url: str, *, token: str, users: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.requests = [
            (
                f"POST /api/v1/limits/check HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
            for body in (f'{{"user_id":"bench-user-{n}"}}' for n in range(users))
        ]
        self.selector = selectors.DefaultSelector()
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()
        self.opened = 0
        self.latencies: list[int] = []
        self.lags: list[int] = []
        self.read_delays: list[int] = []
        self.statuses: dict[int, int] = {}
        self.kernel_stamps = True

    def connection(self) -> _Connection:
        """An idle connection, or a new one when every one has a request in flight."""
        if self.idle:
            return self.idle.pop()
        conn = _Connection(self.host, self.port)
        self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        self.opened += 1
        return conn

    def send(self, conn: _Connection, n: int, due_ns: int) -> None:
        conn.send(self.requests[n % len(self.requests)], due_ns)
        self.busy.add(conn)

    def pump(self, timeout_s: float) -> list[_Connection]:
        """Read what has arrived within `timeout_s`; the connections whose answer is complete."""
        answered = []
        for key, _ in self.selector.select(timeout_s):
            conn: _Connection = key.data
            got = conn.receive()
            if got is None:
                continue
            status, arrived_ns, read_ns = got
            self.latencies.append(arrived_ns - conn.sent_ns)
            self.lags.append(max(0, conn.sent_ns - conn.due_ns))
            self.read_delays.append(read_ns - arrived_ns)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.kernel_stamps &= conn.kernel_stamps
            self.busy.discard(conn)
            answered.append(conn)
        return answered

    def drain(self) -> None:
        """Wait for every answer in flight."""
        while self.busy:
            self.idle.extend(self.pump(1.0))

    def reset(self) -> None:
        """Forget what was measured so far (the warm-up)."""
        self.latencies.clear()
        self.lags.clear()
        self.read_delays.clear()
        self.statuses.clear()

    def open_loop(self, rate: float, duration_s: float) -> None:
        """Request n leaves at start + n/rate, answered or not."""
        total = int(rate * duration_s)
        step_ns = 1e9 / rate
        n = 0
        started = time.time_ns()
        while n < total:
            due_by_now = min(total, int((time.time_ns() - started) / step_ns) + 1)
            while n < due_by_now:
                self.send(self.connection(), n, started + int(n * step_ns))
                n += 1
            next_due_s = (started + n * step_ns - time.time_ns()) / 1e9
            self.idle.extend(self.pump(max(0.0, next_due_s)))

    def closed_loop(self, concurrency: int, duration_s: float) -> None:
        """`concurrency` callers, each sending again as soon as it is answered."""
        stop_ns = time.time_ns() + int(duration_s * 1e9)
        n = 0
        for _ in range(concurrency):
            self.send(self.connection(), n, time.time_ns())
            n += 1
        while time.time_ns() < stop_ns:
            for conn in self.pump(0.05):
                self.send(conn, n, time.time_ns())
                n += 1

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def generate_load(
    url: str,
    *,
    token: str,
    rate: float | None,
    duration_s: float,
    users: int = 1000,
    concurrency: int = 32,
    warmup: int = 200,
) -> dict[str, Any]:
    """Send checks for `duration_s` and time them; meant to run in a process of its own.

    With a `rate`, request n goes out at start + n/rate (open loop), on a connection that has
    nothing in flight (a new one is opened when none is free). Without one, `concurrency`
    callers each send their next request as soon as their last one is answered (closed loop).
    A request's latency runs from just before it is written to the socket to the kernel's
    timestamp of the response's arrival, so neither this process being late to send (the
    schedule lag, reported apart) nor it being late to read counts against the service.
    Timers tick in milliseconds, so at 2,000/s requests leave in pairs.
    """
    load = _LoadGenerator(url, token=token, users=users)
    try:
        for n in range(warmup):  # connections, the service's caches and this process warm
            load.send(load.connection(), n, time.time_ns())
            load.drain()
        for _ in range(concurrency - len(load.idle)):
            load.idle.append(load.connection())
        load.reset()
        gc.collect()
        gc.disable()  # this process's own pauses must not land in the figures
        started = time.perf_counter()
        if rate:
            load.open_loop(rate, duration_s)
        else:
            load.closed_loop(concurrency, duration_s)
        load.drain()
        elapsed_s = time.perf_counter() - started
    finally:
        gc.enable()
        load.close()
    ms = sorted(v / 1e6 for v in load.latencies)
    lag_ms = sorted(v / 1e6 for v in load.lags)
    read_ms = sorted(v / 1e6 for v in load.read_delays)
    return {
        "target_rate": rate or 0.0,
        "achieved_rate": len(ms) / elapsed_s,
        "requests": len(ms),
        "unexpected_status": sum(c for s, c in load.statuses.items() if s not in (200, 409)),
        "p50_ms": _percentile(ms, 0.50),
        "p99_ms": _percentile(ms, 0.99),
        "p999_ms": _percentile(ms, 0.999),
        "max_ms": ms[-1] if ms else float("nan"),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "schedule_lag_p99_ms": _percentile(lag_ms, 0.99),
        "read_delay_p99_ms": _percentile(read_ms, 0.99),
        "kernel_timestamps": load.kernel_stamps,
        "connections": load.opened,
    }


_HISTOGRAM_BUCKET: Final = re.compile(
    r'^tollgate_limit_check_duration_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.MULTILINE
)


async def _check_histogram(session: aiohttp.ClientSession, metrics_url: str) -> dict[float, float]:
    async with session.get(metrics_url) as resp:
        text = await resp.text()
    return {float(le): float(count) for le, count in _HISTOGRAM_BUCKET.findall(text)}


def _histogram_p99_ms(before: dict[float, float], after: dict[float, float]) -> float | None:
    """Upper bound of the bucket holding the 99th percentile of the checks in between."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1] if counts else 0.0
    if not total:
        return None
    for le, cumulative in counts:
        if cumulative >= 0.99 * total:
            return le * 1000
    return None


async def http_check_latency(
    base_url: str,
    *,
    token: str,
    metrics_url: str,
    rate: float | None = 2000.0,
    duration_s: float = 10.0,
    users: int = 1000,
    concurrency: int = 32,
) -> dict[str, Any]:
    """Check latency over HTTP at `rate` checks/s, or flat out with `concurrency` callers (None).

    The load comes from `generate_load` in a child process. Beside its figures this returns
    `server_p99_ms`, the service's own view (parse, decide, encode) from its latency
    histogram (read from `metrics_url`, the service's metrics port): the bucket bound that
    holds its 99th percentile.
    """
    base_url = base_url.rstrip("/")
    argv = [
        sys.executable, "-m", "bench.limits", "load", base_url, "--token", token,
        "--seconds", str(duration_s), "--users", str(users), "--concurrency", str(concurrency),
    ]  # fmt: skip
    if rate:
        argv += ["--rate", str(rate)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        before = await _check_histogram(session, metrics_url)
        child = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await child.communicate()
        if child.returncode:
            raise RuntimeError(f"load generator failed: {err.decode(errors='replace')[-2000:]}")
        after = await _check_histogram(session, metrics_url)
    figures: dict[str, Any] = json.loads(out)
    figures["server_p99_ms"] = _histogram_p99_ms(before, after)
    return figures


async def background_usage(
    ingest_url: str, *, admin_token: str, emitter_token: str, rate: float
) -> None:
    """Simulated usage of 200 users sent through ingest at `rate` events/s until cancelled.

    The service under test folds every event in while it answers checks, as in production.
    """
    sim = Simulation(SimulationConfig(seed=int(time.time()), users=200, days=365))
    await register_prices(ingest_url, admin_token, sim.prices)
    sender = IngestSender(ingest_url=ingest_url, token=emitter_token, rate=rate, batch_size=100)
    await sender.send(sim.events())


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


def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limits")
    commands = parser.add_subparsers(dest="command")
    load = commands.add_parser("load", help="run the HTTP load generator; prints JSON figures")
    load.add_argument("url")
    load.add_argument("--token", required=True)
    load.add_argument("--rate", type=float, default=None, help="checks/s (default: closed loop)")
    load.add_argument("--seconds", type=float, default=10.0)
    load.add_argument("--users", type=int, default=1000)
    load.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    if args.command == "load":
        figures = generate_load(
            args.url,
            token=args.token,
            rate=args.rate,
            duration_s=args.seconds,
            users=args.users,
            concurrency=args.concurrency,
        )
        sys.stdout.write(json.dumps(figures) + "\n")
        return
    print(decision_time())
    print(memory_per_user())


if __name__ == "__main__":
    _main(sys.argv[1:])
