"""Session fixtures: the real broker and a real PostgreSQL, started by the test session itself.

Integration and end-to-end tests share one Tansu broker and one PostgreSQL for the whole
session; tests stay apart through unique ids (and unique topics where a test reads a whole
topic), never through teardown.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import asyncpg
import pytest

from libs.service.db import migrate
from libs.service.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from libs.service.kafka import ensure_topics
from tests.support import Infra, ServiceProcess, StartService, service_ports

# Every app a test builds, in process or as a service process, validates each answer against
# the model its route table declares (`libs.service.web.install_routes`).
os.environ.setdefault("TOLLGATE_CHECK_RESPONSES", "true")

#: Where a test's started services are kept, so a failure report can show their logs.
SERVICES_KEY = pytest.StashKey[list[ServiceProcess]]()
#: Lines of each service's log a failure report shows: its warnings and errors, and its end.
LOG_PROBLEMS = 40
LOG_TAIL = 15
LINE_CHARS = 600
_PROBLEM = re.compile(r'"level": ?"(warning|error|critical)"')


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that started services reports what they logged (CI keeps nothing else)."""
    report = yield
    services = item.stash.get(SERVICES_KEY, [])
    if report.failed and call.when == "call" and services:
        report.sections.append(("service logs", "\n".join(_log_excerpt(s) for s in services)))
    return report


def _log_excerpt(svc: ServiceProcess) -> str:
    try:
        lines = svc.logs().splitlines()
    except OSError as exc:
        return f"--- {svc.name} ({svc.log_path.name}): unreadable: {exc}"
    problems = [line for line in lines[:-LOG_TAIL] if _PROBLEM.search(line)][-LOG_PROBLEMS:]
    return "\n".join(
        [
            f"--- {svc.name} ({svc.log_path.name}, {len(lines)} lines): problems, then the end",
            *(line[:LINE_CHARS] for line in problems),
            "...",
            *(line[:LINE_CHARS] for line in lines[-LOG_TAIL:]),
        ]
    )


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """Start Tansu and PostgreSQL once per session, migrate, and create the default topics."""
    broker = EmbeddedBroker(port=free_port())
    broker.start(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    postgres = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pgdata")
    try:
        url = postgres.start()
        asyncio.run(migrate(url))
        asyncio.run(
            ensure_topics(
                broker.bootstrap, events_topic="usage.events", dlq_topic="usage.events.dlq"
            )
        )
        yield Infra(broker=broker, postgres=postgres, database_url=url)
    finally:
        broker.stop()
        postgres.destroy()


@pytest.fixture
async def db(infra: Infra) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the session database."""
    pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=4)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def topics(infra: Infra) -> tuple[str, str]:
    """A fresh event topic and DLQ for a test that reads a whole topic."""
    suffix = uuid.uuid4().hex[:10]
    events, dlq = f"t.{suffix}.events", f"t.{suffix}.dlq"
    await ensure_topics(infra.bootstrap, events_topic=events, dlq_topic=dlq)
    return events, dlq


def unique(prefix: str = "id") -> str:
    """A unique id for test data, so tests never collide on the shared infrastructure."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def service_factory(
    infra: Infra, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StartService]:
    """Start services as processes; every one started is stopped after the test."""
    started: list[ServiceProcess] = []
    request.node.stash[SERVICES_KEY] = started

    def start(name: str, *, port: int | None = None, **env: str) -> ServiceProcess:
        api_port, metrics_port, port_env = service_ports(name)
        if port is not None:
            api_port = port
            port_env[f"TOLLGATE_{name.upper()}_PORT"] = str(port)
        svc = ServiceProcess(
            name=name,
            port=api_port,
            env={**infra.env(**env), **port_env},
            log_path=tmp_path / f"{name}-{len(started)}.log",
            metrics_port=metrics_port,
        )
        svc.start()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()
