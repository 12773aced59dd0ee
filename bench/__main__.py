"""`python -m bench` (`make bench`): start the system, run every benchmark, print and save.

The embedded broker and PostgreSQL start in a temporary directory unless
`KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` point elsewhere; every service whose
`services/<name>/__main__.py` exists starts as its own process. Each benchmark module is
imported only when its turn comes, so a part that does not exist yet shows as a
"not available yet" row instead of stopping the run. The table goes to the terminal and
every figure, with its target and baseline, to `bench/results.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import importlib.util
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from rich.console import Console
from rich.table import Table

from bench import (
    ROOT,
    BenchContext,
    Figure,
    ServiceHandle,
    bench_seconds,
    not_available,
    wait_ready,
)
from bench.cpus import own_cpu
from libs.events.topics import USAGE_EVENTS, USAGE_EVENTS_DLQ
from libs.service.cli import BILLING_SINK, available_services, find_tool
from libs.service.db import migrate
from libs.service.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from libs.service.kafka import ensure_topics
from libs.service.settings import EXTERNAL_EPOCH

#: Benchmark modules in the order they run, with the service each one is about.
BENCHMARKS: Final[tuple[tuple[str, str | None, tuple[str, ...]], ...]] = (
    ("ingest", "ingest", ("accepted events/s", "request latency p50/p99")),
    ("freshness", None, ("ack → limits p50/p99", "ack → reports p50/p99")),
    (
        "limits",
        "limits",
        (
            "HTTP check at 2,000/s p50/p99/p999",
            "HTTP check at max rate",
            "in-process decision time",
            "memory per tracked user",
        ),
    ),
    ("reports", "reports", ("projection rate", "API latency")),
    (
        "console",
        "reports",
        (
            "cost table API p95",
            "user detail API p95",
            "activity page API p95",
            "cost table rendered in Chromium",
        ),
    ),
    ("publisher", "publisher", ("backlog drain rate",)),
)
RESULTS: Final = Path(os.environ.get("TOLLGATE_BENCH_RESULTS", ROOT / "bench" / "results.json"))
# Wide enough for the table when the output is a file or a pipe (`make bench | tee`).
console = Console(width=None if sys.stdout.isatty() else 180)


class System:
    """The broker, PostgreSQL and every service that exists, for the length of a run."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker: EmbeddedBroker | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.services: dict[str, ServiceHandle] = {}
        self.env: dict[str, str] = {}

    def start(self) -> BenchContext:
        """Start the infrastructure and the services, and wait until each is ready."""
        admin, emitter = f"bench-admin-{secrets.token_hex(8)}", f"bench-emit-{secrets.token_hex(8)}"
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TOLLGATE_", "KAFKA_", "DATABASE_", "BILLING_", "LICENSE_"))
        }
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        epoch = os.environ.get("TOLLGATE_BROKER_EPOCH", EXTERNAL_EPOCH)
        if not bootstrap:
            self.broker = EmbeddedBroker(port=free_port())
            self.broker.start(log_path=self.workdir / "tansu.log")
            bootstrap, epoch = self.broker.bootstrap, self.broker.epoch
        database_url = os.environ.get("DATABASE_URL", "")
        if not database_url:
            self.postgres = EmbeddedPostgres(self.workdir / "pgdata")
            database_url = self.postgres.start()
        events_topic = os.environ.get("TOLLGATE_EVENTS_TOPIC", USAGE_EVENTS)
        dlq_topic = os.environ.get("TOLLGATE_DLQ_TOPIC", USAGE_EVENTS_DLQ)
        asyncio.run(migrate(database_url))
        asyncio.run(ensure_topics(bootstrap, events_topic=events_topic, dlq_topic=dlq_topic))
        self.env = {
            **base,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DATABASE_URL": database_url,
            "TOLLGATE_BROKER_EPOCH": epoch,
            "TOLLGATE_EVENTS_TOPIC": events_topic,
            "TOLLGATE_DLQ_TOPIC": dlq_topic,
            "TOLLGATE_EMITTER_TOKENS": emitter,
            "TOLLGATE_ADMIN_TOKENS": admin,
            "TOLLGATE_LOG_FORMAT": "json",
            "TOLLGATE_LOG_LEVEL": os.environ.get("TOLLGATE_LOG_LEVEL", "info"),
            "TOLLGATE_HOST": "127.0.0.1",
        }
        specs = available_services()
        ports = {s.name: free_port() for s in specs}
        metrics_ports = {s.name: free_port() for s in specs}
        for spec in specs:
            self.env[spec.port_env] = str(ports[spec.name])
            self.env[spec.metrics_port_env] = str(metrics_ports[spec.name])
            self.env[spec.url_env] = f"http://127.0.0.1:{ports[spec.name]}"
        self.env["TOLLGATE_PORTAL_SECRET"] = secrets.token_hex(32)
        if find_tool(BILLING_SINK) is not None:
            sink_port = free_port()
            self.env["BILLING_URL"] = f"http://127.0.0.1:{sink_port}"
            self.env["LICENSE_KEY"] = "bench-license-key"
            self._start("billing-sink", ["billing-sink", "--port", str(sink_port)], sink_port)
        for spec in specs:
            self._start(
                spec.name,
                ["serve", spec.name],
                ports[spec.name],
                metrics_port=metrics_ports[spec.name],
            )
        for name, handle in self.services.items():
            if name != "billing-sink":
                asyncio.run(wait_ready(handle.url))
        return BenchContext(
            bootstrap=bootstrap,
            database_url=database_url,
            events_topic=events_topic,
            dlq_topic=dlq_topic,
            admin_token=admin,
            emitter_token=emitter,
            seconds=bench_seconds(),
            workdir=self.workdir,
            env=self.env,
            services=dict(self.services),
            extra={"infrastructure_pids": self.infrastructure_pids()},
        )

    def infrastructure_pids(self) -> list[int]:
        """The embedded broker's and PostgreSQL postmaster's pids (none when external)."""
        pids = []
        if self.broker is not None and self.broker.process is not None:
            pids.append(self.broker.process.pid)
        if self.postgres is not None and (pid := self.postgres.pid()) is not None:
            pids.append(pid)
        return pids

    def _start(
        self, name: str, argv: list[str], port: int, *, metrics_port: int | None = None
    ) -> None:
        handle = ServiceHandle(
            name=name,
            port=port,
            argv=argv,
            env=self.env,
            log_path=self.workdir / f"{name}.log",
            metrics_port=metrics_port,
        )
        handle.start()
        self.services[name] = handle

    def stop(self, ctx: BenchContext | None) -> None:
        """Stop every process this run started, then the infrastructure."""
        extra: list[ServiceHandle] = ctx.extra.get("processes", []) if ctx else []
        for handle in [*extra, *self.services.values()]:
            handle.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()


async def _run_module(ctx: BenchContext, module_name: str) -> list[Figure]:
    module = importlib.import_module(f"bench.{module_name}")
    run: Callable[[BenchContext], Awaitable[list[Figure]]] | None = getattr(module, "run", None)
    if run is not None:
        return await run(ctx)
    adapter = ADAPTERS.get(module_name)
    if adapter is not None:
        return await adapter(ctx, module)
    return [not_available(module_name, "all", f"bench/{module_name}.py has no run(ctx) yet")]


async def _limits(ctx: BenchContext, module: Any) -> list[Figure]:
    """Figures from `bench/limits.py`'s plain functions (it has no `run(ctx)` of its own)."""
    decision = module.decision_time()
    memory = module.memory_per_user()
    figures = [
        Figure(
            "limits",
            "in-process decision time (mean)",
            round(decision["decision_mean_us"], 2),
            "µs",
            target="< 10 µs",
            meets=decision["decision_mean_us"] < 10,
            note=(
                f"p50 {decision['decision_p50_us']:.2f} µs, p99 {decision['decision_p99_us']:.2f}"
                f" µs per call (timer included); with org_id "
                f"{decision['decision_org_mean_us']:.2f} µs; {decision['users']:,} users"
            ),
        ),
        Figure(
            "limits",
            "memory per tracked user",
            round(memory["bytes_per_user"]),
            "bytes",
            note=(
                f"spend in one organisation {memory['bytes_per_user_spend']:.0f} B (naming none "
                f"{memory['bytes_per_user_spend_no_org']:.0f} B; a second organisation adds "
                f"{memory['bytes_per_user_second_org']:.0f} B) + two groups "
                f"{memory['bytes_per_user_two_groups']:.0f} B; dedup "
                f"{memory['dedup_mb_per_million_ids']:.0f} MB per million ids; snapshot "
                f"{memory['snapshot_mb']:.1f} MB for {memory['users']:,} users"
            ),
        ),
    ]
    # Those two leave a large heap behind in this process, which runs the background usage.
    gc.collect()
    url = ctx.url("limits")
    metrics_url = ctx.services["limits"].metrics_url
    limits = ctx.services["limits"].process
    assert url is not None
    assert limits is not None
    seconds = min(ctx.seconds, 20.0)
    quiet = await module.http_check_latency(
        url, token=ctx.emitter_token, metrics_url=metrics_url, rate=2000.0, duration_s=seconds
    )
    rate = float(os.environ.get("TOLLGATE_BENCH_BACKGROUND_RATE", "1000"))
    ingest = ctx.url("ingest")
    background = None
    if ingest is not None and rate > 0:
        background = asyncio.create_task(
            module.background_usage(
                ingest, admin_token=ctx.admin_token, emitter_token=ctx.emitter_token, rate=rate
            )
        )
        await asyncio.sleep(5)  # flowing, and folded in by limits, before the first check
    try:
        shared = await module.http_check_latency(
            url, token=ctx.emitter_token, metrics_url=metrics_url, rate=2000.0, duration_s=seconds
        )
        with own_cpu(limits.pid, ctx.extra.get("infrastructure_pids", [])) as pinned:
            alone = (
                await module.http_check_latency(
                    url,
                    token=ctx.emitter_token,
                    metrics_url=metrics_url,
                    rate=2000.0,
                    duration_s=seconds,
                )
                if pinned
                else shared
            )
    finally:
        if background is not None:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await background
    flat = await module.http_check_latency(
        url,
        token=ctx.emitter_token,
        metrics_url=metrics_url,
        rate=None,
        duration_s=min(seconds, 10.0),
    )
    flowing = f"{rate:,.0f} events/s background" if background is not None else "no background"
    where = (
        f"limits on a CPU of its own ({pinned})"
        if pinned
        else "limits sharing every CPU (a CPU of its own cannot be arranged here)"
    )
    problems = alone["unexpected_status"] + (shared["unexpected_status"] if pinned else 0)
    server = alone["server_p99_ms"]
    figures += [
        Figure(
            "limits",
            "HTTP check at 2,000/s p50",
            round(alone["p50_ms"], 3),
            "ms",
            note=f"{alone['achieved_rate']:,.0f} checks/s achieved over {seconds:.0f}s; "
            f"{flowing}; {where}; load generator in its own process, latency from the "
            "request's write to its answer's arrival"
            + ("" if alone["kernel_timestamps"] else " (read time: no kernel timestamps)"),
        ),
        Figure(
            "limits",
            "HTTP check at 2,000/s p99",
            round(alone["p99_ms"], 3),
            "ms",
            target="< 2 ms",
            meets=alone["p99_ms"] < 2 and not problems,
            note=f"{flowing}; {where}; the generator itself was late to send by "
            f"{alone['schedule_lag_p99_ms']:.2f} ms and to read by "
            f"{alone['read_delay_p99_ms']:.2f} ms (p99, not counted); inside the service p99 "
            + (f"≤ {server:g} ms" if server is not None else "unknown")
            + (f"; {problems} unexpected answers" if problems else ""),
        ),
        Figure("limits", "HTTP check at 2,000/s p999", round(alone["p999_ms"], 3), "ms"),
        Figure(
            "limits",
            "HTTP check at 2,000/s p99, every process sharing every CPU",
            round(shared["p99_ms"], 3),
            "ms",
            note=f"{flowing}; p50 {shared['p50_ms']:.3f} ms, p999 {shared['p999_ms']:.3f} ms; "
            "limits waits for a CPU behind the broker, PostgreSQL, the other services, the "
            "simulator and the load generator",
        ),
        Figure(
            "limits",
            "HTTP check at 2,000/s p99, nothing else flowing",
            round(quiet["p99_ms"], 3),
            "ms",
            note=f"p50 {quiet['p50_ms']:.3f} ms, p999 {quiet['p999_ms']:.3f} ms; every CPU shared",
        ),
        Figure(
            "limits",
            "HTTP checks at max rate",
            round(flat["achieved_rate"]),
            "checks/s",
            note=(
                f"p50 {flat['p50_ms']:.2f} ms, p99 {flat['p99_ms']:.2f} ms, "
                f"p999 {flat['p999_ms']:.2f} ms; 32 callers, closed loop"
            ),
        ),
    ]
    return figures


#: Wiring for benchmark modules that expose plain functions instead of `run(ctx)`.
ADAPTERS: Final[dict[str, Callable[[BenchContext, Any], Awaitable[list[Figure]]]]] = {
    "limits": _limits,
}


def selected_benchmarks() -> tuple[tuple[str, str | None, tuple[str, ...]], ...]:
    """`BENCHMARKS`, or those named in `TOLLGATE_BENCH_ONLY` (comma-separated, in run order)."""
    wanted = {n.strip() for n in os.environ.get("TOLLGATE_BENCH_ONLY", "").split(",") if n.strip()}
    unknown = wanted - {name for name, _, _ in BENCHMARKS}
    if unknown:
        known = ", ".join(name for name, _, _ in BENCHMARKS)
        names = ", ".join(sorted(unknown))
        raise SystemExit(f"TOLLGATE_BENCH_ONLY: unknown {names} (known: {known})")
    return tuple(b for b in BENCHMARKS if not wanted or b[0] in wanted)


def run_benchmark(
    ctx: BenchContext, module_name: str, service: str | None, names: tuple[str, ...]
) -> list[Figure]:
    """One benchmark module's figures, or rows that say why there are none."""
    if importlib.util.find_spec(f"bench.{module_name}") is None:
        return [
            not_available(module_name, n, f"bench/{module_name}.py not available yet")
            for n in names
        ]
    if service is not None and service not in ctx.services:
        why = f"the {service} service is not available yet"
        return [not_available(module_name, n, why) for n in names]
    started = time.monotonic()
    console.print(f"[bold]» {module_name}[/] …")
    try:
        figures = asyncio.run(_run_module(ctx, module_name))
    except Exception as exc:
        console.print(f"[red]{module_name} failed:[/] {exc!r}")
        traceback.print_exc()
        figures = [
            Figure(module_name, "all", None, "", note=f"failed: {exc!r}"[:300], status="error")
        ]
    console.print(f"  done in {time.monotonic() - started:.1f}s")
    return figures


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.3g}" if abs(value) < 1 else f"{value:,.2f}"


def render(figures: list[Figure]) -> Table:
    """The results as a rich table."""
    table = Table(title="Tollgate benchmarks", show_lines=False)
    for column in ("area", "figure", "value", "target", "baseline", "ratio", "note"):
        table.add_column(column, overflow="fold")
    style = {"ok": "green", "miss": "red", "error": "red", "not available": "dim", "info": ""}
    for f in figures:
        value = "not available" if f.status == "not available" else f"{_fmt(f.value)} {f.unit}"
        mark = {"ok": " ✓", "miss": " ✗"}.get(f.status, "")
        baseline = f"{_fmt(f.baseline)} ({f.baseline_name})" if f.baseline is not None else ""
        table.add_row(
            f.area,
            f.name,
            value + mark,
            f.target or "",
            baseline,
            f"{f.ratio:.2f}×" if f.ratio is not None else "",
            f.note,
            style=style[f.status],
        )
    return table


def main() -> int:
    """Run the whole benchmark and return 0 (a missed target is a figure, not a failure)."""
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    benchmarks = selected_benchmarks()
    started_at = datetime.now(UTC)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    system = System(workdir)
    ctx: BenchContext | None = None
    figures: list[Figure] = []
    try:
        console.print(f"starting the system in {workdir} …")
        ctx = system.start()
        running = ", ".join(n for n in ctx.services if n != "billing-sink") or "none"
        console.print(f"services: {running}; {ctx.seconds:.0f}s per throughput run")
        for module_name, service, names in benchmarks:
            figures += run_benchmark(ctx, module_name, service, names)
    except KeyboardInterrupt:
        console.print("[red]interrupted")
    finally:
        system.stop(ctx)
        failed = [h for h in system.services.values() if h.process and h.process.returncode]
        for handle in failed:
            console.print(f"[yellow]{handle.name} log tail:[/]\n{handle.tail(1500)}")
        shutil.rmtree(workdir, ignore_errors=True)
    document: dict[str, Any] = {
        "started_at": started_at,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {"seconds": ctx.seconds if ctx else None},
        "services": sorted(ctx.services) if ctx else [],
        "figures": [f.as_json() for f in figures],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z))
    console.print(render(figures))
    console.print(f"results: {RESULTS} ({document['duration_s']:.0f}s in all)")
    return 0 if ctx is not None else 1


if __name__ == "__main__":
    sys.exit(main())
