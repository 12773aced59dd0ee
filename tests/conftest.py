"""Session fixtures: the real broker and a real PostgreSQL, started by the test session itself.

Integration and end-to-end tests share one Tansu broker and one PostgreSQL for the whole
session; tests stay apart through unique ids (and unique topics where a test reads a whole
topic), never through teardown.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from libs.service.db import migrate
from libs.service.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from libs.service.kafka import ensure_topics
from tests.support import Infra, ServiceProcess, StartService, service_ports


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
def service_factory(infra: Infra, tmp_path: Path) -> Iterator[StartService]:
    """Start services as processes; every one started is stopped after the test."""
    started: list[ServiceProcess] = []

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
