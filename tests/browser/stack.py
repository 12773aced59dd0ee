"""Every service as a process, wired like `make run` (reports as the one origin), with simulated data.

Used by the browser tests (on the test session's broker and PostgreSQL) and by
`make screenshots` (on its own embedded ones).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from libs.events.models import ChatUsageRecorded, Envelope
from libs.events.pricing import price_event
from tests.support import ADMIN, EMITTER, Infra, ServiceProcess, service_ports, unique
from tools.simulator.generate import Simulation, SimulationConfig

PORTAL_SECRET = "browser-tests-portal-secret-0123456789abcdef"  # test-only
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Stack:
    """The four services and the simulation they were fed."""

    services: dict[str, ServiceProcess]
    sim: Simulation
    events: list[Envelope] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The one origin: the reports service."""
        return self.services["reports"].url

    def stop(self) -> None:
        """SIGTERM every service."""
        for service in self.services.values():
            service.stop()


def simulation(seed: int, *, users: int, days: int) -> tuple[Simulation, list[Envelope]]:
    """A simulated organisation's events, priced as ingest prices them."""
    sim = Simulation(SimulationConfig(seed=seed, users=users, days=days))
    events: list[Envelope] = [
        price_event(e, sim.prices) if isinstance(e, ChatUsageRecorded) else e for e in sim.events()
    ]
    return sim, events


@contextmanager
def running_stack(infra: Infra, logs: Path, **env: str) -> Iterator[dict[str, ServiceProcess]]:
    """Start ingest, limits, publisher and reports on their own topics; stop them after."""
    suffix = unique("console")
    ports = {name: service_ports(name) for name in ("ingest", "limits", "reports", "publisher")}
    urls = {name: f"http://127.0.0.1:{port}" for name, (port, _, _) in ports.items()}
    common = {
        "TOLLGATE_EVENTS_TOPIC": f"{suffix}.events",
        "TOLLGATE_DLQ_TOPIC": f"{suffix}.dlq",
        "TOLLGATE_PORTAL_SECRET": PORTAL_SECRET,
        "TOLLGATE_REPORTS_GROUP": f"{suffix}-reports",
        "TOLLGATE_PUBLISHER_GROUP": f"{suffix}-publisher",
        "TOLLGATE_PUBLISHER_QUEUE": suffix,
        "TOLLGATE_REPORTS_FETCH_WAIT_MS": "50",
        "TOLLGATE_REPORTS_SESSION_TIMEOUT_MS": "3000",
        "TOLLGATE_REPORTS_HEARTBEAT_MS": "500",
        "TOLLGATE_INGEST_URL": urls["ingest"],
        "TOLLGATE_LIMITS_URL": urls["limits"],
        "TOLLGATE_PUBLISHER_URL": urls["publisher"],
        # Webhook receivers in the tests and screenshots listen on 127.0.0.1.
        "TOLLGATE_WEBHOOK_ALLOW_PRIVATE": "true",
        "TOLLGATE_NOTIFY_POLL": "200ms",
        "TOLLGATE_NOTIFY_BACKOFF_BASE": "1s",
        "TOLLGATE_NOTIFY_TIMEOUT": "2s",
        "TOLLGATE_NOTIFY_CLAIM_TIMEOUT": "10s",
        **env,
    }
    logs.mkdir(parents=True, exist_ok=True)
    services: dict[str, ServiceProcess] = {}
    try:
        for name, (port, metrics_port, port_env) in ports.items():
            service = ServiceProcess(
                name=name,
                port=port,
                metrics_port=metrics_port,
                env=infra.env(**common, **port_env),
                log_path=logs / f"{name}.log",
            )
            service.start(timeout_s=60)
            services[name] = service
        yield services
    finally:
        for service in services.values():
            service.stop()


async def _ready(session: aiohttp.ClientSession, service: ServiceProcess) -> bool:
    try:
        async with session.get(f"{service.url}/readyz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def feed(services: dict[str, ServiceProcess], events: list[Envelope]) -> None:
    """Send the events through ingest and wait until reports and limits have them all."""
    total = len({e.id for e in events})
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 90
        while not all([await _ready(session, s) for s in services.values()]):
            if time.monotonic() > deadline:
                raise AssertionError("services did not become ready")
            await asyncio.sleep(0.2)
        for i in range(0, len(events), 500):
            body = {"events": [e.model_dump(mode="json") for e in events[i : i + 500]]}
            async with session.post(
                f"{services['ingest'].url}/api/v1/events",
                data=orjson.dumps(body),
                headers={**EMITTER, "Content-Type": "application/json"},
            ) as resp:
                answer: dict[str, Any] = await resp.json()
                assert resp.status == 200, answer
                assert not answer["rejected"], answer
        deadline = time.monotonic() + 120
        while True:
            async with session.get(services["reports"].metrics_url) as resp:
                text = await resp.text()
            projected = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("tollgate_reports_events_projected_total{")
            )
            if projected >= total:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"reports projected {projected} of {total} events")
            await asyncio.sleep(0.25)


async def admin_get(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    """GET with the admin token; the JSON body of a 200."""
    async with session.get(url, params=params, headers=ADMIN) as resp:
        assert resp.status == 200, await resp.text()
        return orjson.loads(await resp.read())


def new_seed() -> int:
    """A seed no other test run used, so simulated ids never collide."""
    return random.randrange(10**8, 10**9)
