"""`python -m bench`: Tollgate's figures, each measured beside its target and a baseline.

A benchmark module (`bench/ingest.py`, `bench/limits.py`, …) exposes
`async def run(ctx: BenchContext) -> list[Figure]`. The harness starts the system,
hands every module the same context, and prints and saves what they return. This
module holds the types they share and the small statistics helpers.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from libs.service.embedded import free_port, start_cli

__all__ = [
    "ROOT",
    "BenchContext",
    "Figure",
    "ServiceHandle",
    "bench_seconds",
    "not_available",
    "percentile",
    "wait_ready",
]

ROOT = Path(__file__).resolve().parents[1]

Status = Literal["ok", "miss", "info", "not available", "error"]


@dataclass
class Figure:
    """One measured figure, with its target and a baseline measured in the same run.

    `meets` is None when the figure has no target; `status` says how to read the row:
    `ok`/`miss` against the target, `info` without one, `not available` when the part
    does not exist yet, `error` when the measurement itself failed.
    """

    area: str
    name: str
    value: float | None
    unit: str
    target: str | None = None
    meets: bool | None = None
    baseline_name: str | None = None
    baseline: float | None = None
    ratio: float | None = None
    note: str = ""
    status: Status = "info"

    def __post_init__(self) -> None:
        if self.status == "info" and self.meets is not None:
            self.status = "ok" if self.meets else "miss"
        if self.ratio is None and self.value is not None and self.baseline:
            self.ratio = self.value / self.baseline

    def as_json(self) -> dict[str, Any]:
        """The figure as `bench/results.json` stores it."""
        return asdict(self)


def not_available(area: str, name: str, why: str, *, target: str | None = None) -> Figure:
    """A row for a figure whose part of the system does not exist yet."""
    return Figure(area, name, None, "", target=target, note=why, status="not available")


def percentile(samples: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0–100) by the nearest-rank method; NaN without samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def bench_seconds(default: float = 60.0) -> float:
    """How long each throughput run lasts: `TOLLGATE_BENCH_SECONDS`, else `default`."""
    raw = os.environ.get("TOLLGATE_BENCH_SECONDS")
    return float(raw) if raw else default


@dataclass
class ServiceHandle:
    """A service (or tool) running as its own process, as in production."""

    name: str
    port: int
    argv: list[str]
    env: Mapping[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int | None = None

    @property
    def url(self) -> str:
        """Base URL on loopback."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """The service's `/metrics`, on its metrics port (never the API port)."""
        if self.metrics_port is None:
            raise RuntimeError(f"{self.name} has no metrics port")
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, *, timeout_s: float = 30.0) -> None:
        """Start the process and wait until its port accepts connections."""
        self.process = start_cli(
            self.argv,
            name=self.name,
            port=self.port,
            env=self.env,
            log_path=self.log_path,
            cwd=ROOT,
            timeout_s=timeout_s,
        )

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not go within 20 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def tail(self, chars: int = 3000) -> str:
        """The end of the process's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


@dataclass
class BenchContext:
    """What every benchmark gets: where the system is, tokens, and how long to run."""

    bootstrap: str
    database_url: str
    events_topic: str
    dlq_topic: str
    admin_token: str
    emitter_token: str
    seconds: float
    workdir: Path
    env: dict[str, str]
    services: dict[str, ServiceHandle] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def url(self, service: str) -> str | None:
        """The base URL of a running service, or None when it is not part of this run."""
        handle = self.services.get(service)
        return handle.url if handle is not None else None

    def headers(self, *, admin: bool = True) -> dict[str, str]:
        """Authorization (and JSON) headers for the admin or the emitter token."""
        token = self.admin_token if admin else self.emitter_token
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def start_process(self, name: str, argv: list[str], *, port: int, **env: str) -> ServiceHandle:
        """Start one more process (a dedicated replica, a sink) against this system.

        A service (`serve NAME`) gets a metrics port of its own, so that it never collides
        with the replica the run started.
        """
        metrics_port = None
        if argv[:1] == ["serve"]:
            metrics_port = free_port()
            env = {f"TOLLGATE_{argv[1].upper()}_METRICS_PORT": str(metrics_port), **env}
        handle = ServiceHandle(
            name=name,
            port=port,
            argv=argv,
            env={**self.env, **env},
            log_path=self.workdir / f"{name}.log",
            metrics_port=metrics_port,
        )
        handle.start()
        self.extra.setdefault("processes", []).append(handle)
        return handle


async def wait_ready(url: str, *, timeout_s: float = 90.0) -> None:
    """Poll `GET /readyz` until it answers 200 (a consumer is ready once caught up)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(2)) as r:
                    if r.status == 200:
                        return
                    last = f"{r.status} {(await r.text())[:200]}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {timeout_s}s: {last}")
