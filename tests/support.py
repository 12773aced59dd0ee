"""Helpers for tests that use the real infrastructure: service processes, polling, unique ids."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from libs.events.codec import encode
from libs.events.models import Envelope
from libs.service.db import migrate
from libs.service.embedded import EmbeddedBroker, EmbeddedPostgres, free_port, start_cli
from libs.service.kafka import make_producer
from libs.service.spec import find_service
from libs.service.web import create_metrics_app

ROOT = Path(__file__).resolve().parents[1]
EMITTER_TOKEN = "test-emitter-token"
ADMIN_TOKEN = "test-admin-token"
EMITTER = {"Authorization": f"Bearer {EMITTER_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

T = TypeVar("T")


@dataclass
class Infra:
    """Addresses of the session's broker and database."""

    broker: EmbeddedBroker
    postgres: EmbeddedPostgres
    database_url: str

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap address."""
        return self.broker.bootstrap

    @property
    def epoch(self) -> str:
        """The broker epoch of this session's log."""
        return self.broker.epoch

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a service process needs to run against this infrastructure."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TOLLGATE_", "KAFKA_", "DATABASE_"))
        }
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            DATABASE_URL=self.database_url,
            TOLLGATE_BROKER_EPOCH=self.epoch,
            TOLLGATE_EMITTER_TOKENS=EMITTER_TOKEN,
            TOLLGATE_ADMIN_TOKENS=ADMIN_TOKEN,
            TOLLGATE_LOG_FORMAT="json",
            TOLLGATE_HOST="127.0.0.1",
            # Every answer of a service under test is checked against its route's model.
            TOLLGATE_CHECK_RESPONSES="true",
        )
        env.update(extra)
        return env

    @asynccontextmanager
    async def postgres_paused(self) -> AsyncIterator[None]:
        """PostgreSQL frozen (SIGSTOP) for the length of the block, resumed however it ends."""
        master = self.postgres.pid()
        assert master is not None, "the session's PostgreSQL has no postmaster pid"
        # The postmaster first, so it forks nothing new while its children are frozen.
        os.kill(master, signal.SIGSTOP)
        children = _children(master)
        try:
            for pid in children:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            yield
        finally:
            for pid in children:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            os.kill(master, signal.SIGCONT)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def service_ports(name: str) -> tuple[int, int, dict[str, str]]:
    """Free API and metrics ports for a service, and the environment that assigns them."""
    spec = find_service(name)
    port, metrics_port = free_port(), free_port()
    env = {spec.port_env: str(port), spec.metrics_port_env: str(metrics_port)}
    return port, metrics_port, env


def unique(prefix: str = "id") -> str:
    """A unique id for test data, so tests never collide on the shared infrastructure."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class ServiceProcess:
    """A service running as a real process (`tollgate serve NAME`), as in production."""

    name: str
    port: int
    env: Mapping[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    metrics_port: int | None = None

    @property
    def url(self) -> str:
        """Base URL of the service."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Where the service's `/metrics` answers (its metrics port, never the API port)."""
        if self.metrics_port is None:
            raise AssertionError(f"{self.name} was started without a metrics port")
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def argv(self) -> list[str]:
        """The `tollgate` arguments that start it."""
        return ["serve", self.name, *self.extra_args]

    def start(self, *, timeout_s: float = 30.0) -> None:
        """Start the process and wait until its port accepts connections."""
        self.process = start_cli(
            self.argv(),
            name=self.name,
            port=self.port,
            env=self.env,
            log_path=self.log_path,
            cwd=ROOT,
            timeout_s=timeout_s,
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait: the clean way out."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def logs(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")


class StartService(Protocol):
    """Starts a service process against the session infrastructure."""

    def __call__(self, name: str, *, port: int | None = None, **env: str) -> ServiceProcess: ...


async def scrape(app: web.Application | None) -> str:
    """`GET /metrics` of an in-process app from its own metrics server, as Prometheus asks."""
    assert app is not None, "the test client has no app"
    async with TestClient(TestServer(create_metrics_app(app))) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200, resp.status
        return await resp.text()


async def eventually(
    probe: Callable[[], Awaitable[T]], *, timeout_s: float = 10.0, interval_s: float = 0.05
) -> T:
    """Poll an async probe until it returns a truthy value (or raise with the last value)."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s; last value: {last!r}")


async def produce(infra: Infra, topic: str, events: list[Envelope]) -> None:
    """Put events straight on a topic, keyed as ingest keys them."""
    producer = make_producer(infra.bootstrap, idempotent=False)
    await producer.start()
    try:
        for e in events:
            await producer.send(topic, encode(e), key=e.partition_key.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def create_database(infra: Infra, name: str) -> str:
    """A new, migrated database on the session's PostgreSQL; returns its URL."""
    conn = await asyncpg.connect(infra.database_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(infra.database_url)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    await migrate(url)
    return url


@asynccontextmanager
async def database_pool(
    infra: Infra, prefix: str, *, max_size: int = 8
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a new, migrated database of the caller's own (named from `prefix`)."""
    url = await create_database(infra, unique(prefix).replace("-", "_"))
    pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()
