"""A whole Tollgate for one fault run, on the session's broker and PostgreSQL.

It gets a database and topics of its own, so its figures hold only what the run sent,
and starts every service that exists in this checkout, plus the local billing sink when
the publisher exists. Faults are injected here too: SIGKILL and restart, a paused broker,
a paused PostgreSQL (the postmaster and every backend), a failing billing sink.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp

from libs.service.embedded import free_port
from libs.service.kafka import ensure_topics
from tests.notify_support import SmtpSink, WebhookReceiver
from tests.support import ADMIN_TOKEN, ROOT, Infra, ServiceProcess, create_database, service_ports

SERVICES: Final = ("ingest", "limits", "reports", "publisher")
CONSUMERS: Final = ("limits", "reports", "publisher")


#: Narrows the run to some services while one is being worked on, e.g. `ingest,limits`.
ONLY_ENV: Final = "TOLLGATE_RELIABILITY_SERVICES"


def existing_services() -> list[str]:
    """The services whose `services/<name>/__main__.py` exists (and that `ONLY_ENV` keeps)."""
    only = {n.strip() for n in os.environ.get(ONLY_ENV, "").split(",") if n.strip()}
    return [
        name
        for name in SERVICES
        if (ROOT / "services" / name / "__main__.py").exists() and (not only or name in only)
    ]


def missing_reason(name: str) -> str:
    """Why a check about `name` cannot run."""
    if (ROOT / "services" / name / "__main__.py").exists():
        return f"the {name} service was left out by {ONLY_ENV}"
    return f"the {name} service is not available yet (services/{name}/__main__.py is missing)"


class ToolProcess(ServiceProcess):
    """A `tollgate <tool> ...` process (the billing sink), started like a service."""

    def argv(self) -> list[str]:
        """The tool's own arguments: no `serve`."""
        return list(self.extra_args)


#: Signs the stack's portal tokens and console sessions (test-only).
PORTAL_SECRET = "reliability-portal-secret-0123456789abcdef"


@dataclass
class Stack:
    """The services of one run, their sink, and the faults injected into them."""

    infra: Infra
    workdir: Path
    database_url: str
    events_topic: str
    dlq_topic: str
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    sink: ToolProcess | None = None
    sink_control: str | None = None
    faults: list[str] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    #: With `notify`: the SMTP server and the webhook receiver budget notifications go to.
    smtp: SmtpSink | None = None
    receiver: WebhookReceiver | None = None

    @classmethod
    async def start(
        cls, infra: Infra, workdir: Path, *, names: list[str], notify: bool = False
    ) -> Stack:
        """Create the database and topics, then start `names` (and the sink for the publisher).

        With `notify`, reports delivers budget notifications to a webhook receiver and an SMTP
        server that this process runs (quick retries, so faults clear within the run).
        """
        run = uuid.uuid4().hex[:10]
        url = await create_database(infra, f"rel_{run}")
        events, dlq = f"rel.{run}.events", f"rel.{run}.dlq"
        await ensure_topics(infra.bootstrap, events_topic=events, dlq_topic=dlq)
        stack = cls(infra, workdir, url, events, dlq)
        ports = {name: service_ports(name) for name in names}
        env = infra.env(
            DATABASE_URL=url,
            TOLLGATE_EVENTS_TOPIC=events,
            TOLLGATE_DLQ_TOPIC=dlq,
            # Restarts load a recent snapshot and replay the tail, as in production.
            TOLLGATE_LIMITS_SNAPSHOT_INTERVAL="2",
            # A dead member's partitions come back within seconds, not the production default.
            TOLLGATE_PUBLISHER_SESSION_TIMEOUT="4s",
            TOLLGATE_REPORTS_SESSION_TIMEOUT_MS="4000",
            # Portal tokens and console sessions, so their routes are exercised too.
            TOLLGATE_PORTAL_SECRET=PORTAL_SECRET,
        )
        if notify:
            stack.smtp = SmtpSink().start()
            stack.receiver = await WebhookReceiver().start()
            env.update(
                TOLLGATE_SMTP_URL=stack.smtp.url,
                TOLLGATE_SMTP_FROM="Tollgate <noreply@example.com>",
                TOLLGATE_NOTIFY_ADMIN_EMAILS=NOTIFY_ADMIN_EMAIL,
                TOLLGATE_WEBHOOK_ALLOW_PRIVATE="true",
                TOLLGATE_NOTIFY_POLL="200ms",
                TOLLGATE_NOTIFY_TIMEOUT="2s",
                TOLLGATE_NOTIFY_CLAIM_TIMEOUT="6s",
                TOLLGATE_NOTIFY_BACKOFF_BASE="200ms",
                TOLLGATE_NOTIFY_BACKOFF_MAX="2s",
            )
        for name in ("ingest", "limits", "publisher"):
            if name in ports:
                env[f"TOLLGATE_{name.upper()}_URL"] = f"http://127.0.0.1:{ports[name][0]}"
        if "publisher" in names:
            sink_port, control_port = free_port(), free_port()
            env.update(
                BILLING_URL=f"http://127.0.0.1:{sink_port}",
                LICENSE_KEY="reliability-license",
                DEPLOYMENT_ID=f"reliability-{run}",
                PUBLISH_INTERVAL="500ms",
                PUBLISH_FIRST_DELAY="500ms",
                PUBLISH_TIMEOUT="2s",
                PUBLISH_CLAIM_TIMEOUT="10s",
                PUBLISH_BACKOFF_BASE="200ms",
                PUBLISH_BACKOFF_MAX="2s",
            )
            stack.sink = ToolProcess(
                name="billing-sink",
                port=sink_port,
                env=env,
                log_path=workdir / "billing-sink.log",
                extra_args=[
                    "billing-sink",
                    "--port",
                    str(sink_port),
                    "--control-port",
                    str(control_port),
                ],
            )
            stack.sink_control = f"http://127.0.0.1:{control_port}"
        try:
            if stack.sink is not None:
                await asyncio.to_thread(stack.sink.start)
            for name in names:
                port, metrics_port, port_env = ports[name]
                svc = ServiceProcess(
                    name=name,
                    port=port,
                    env={**env, **port_env},
                    log_path=workdir / f"{name}.log",
                    metrics_port=metrics_port,
                )
                stack.services[name] = svc
                stack.restarts[name] = 0
                await asyncio.to_thread(svc.start)
            for name in names:
                await stack.wait_ready(name)
        except BaseException:
            await stack.stop()
            raise
        return stack

    def url(self, name: str) -> str:
        """Base URL of a running service."""
        return self.services[name].url

    async def stop(self) -> None:
        """Stop every process (the database and topics stay; they are unique to the run)."""
        for svc in [*self.services.values(), *([self.sink] if self.sink else [])]:
            await asyncio.to_thread(svc.stop)
        if self.receiver is not None:
            await self.receiver.stop()
        if self.smtp is not None:
            self.smtp.stop()

    async def wait_ready(self, name: str, *, timeout_s: float = 120.0) -> None:
        """Poll `/readyz` until the service says it is ready (consumers: caught up)."""
        url = f"{self.url(name)}/readyz"
        deadline = time.monotonic() + timeout_s
        last = ""
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                self.assert_alive(name)
                try:
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as r:
                        if r.status == 200:
                            return
                        last = f"{r.status} {await r.text()}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = repr(exc)
                await asyncio.sleep(0.2)
        raise AssertionError(f"{name} not ready within {timeout_s}s: {last}")

    def assert_alive(self, name: str) -> None:
        """Fail with the log tail when a service died by itself."""
        svc = self.services[name]
        if svc.process is None or svc.process.poll() is not None:
            raise AssertionError(f"{name} died on its own:\n{svc.logs()[-3000:]}")

    def unexpected_exits(self) -> list[str]:
        """Services that are not running although no fault is in progress."""
        return [
            n for n, s in self.services.items() if s.process is None or s.process.poll() is not None
        ]

    # ----- faults --------------------------------------------------------------------------

    async def kill_and_restart(self, name: str, *, down_s: float = 0.5) -> None:
        """SIGKILL a service, leave it down briefly, start it again and wait until ready."""
        svc = self.services[name]
        await asyncio.to_thread(svc.kill)
        self.faults.append(f"SIGKILL {name}")
        await asyncio.sleep(down_s)
        await asyncio.to_thread(svc.start)
        self.restarts[name] += 1
        await self.wait_ready(name)

    async def pause_broker(self, seconds: float) -> None:
        """SIGSTOP the broker for `seconds`, then SIGCONT."""
        self.infra.broker.pause()
        self.faults.append(f"broker paused {seconds:g}s")
        try:
            await asyncio.sleep(seconds)
        finally:
            self.infra.broker.resume()

    async def pause_postgres(self, seconds: float) -> None:
        """SIGSTOP the postmaster and every backend for `seconds`, then SIGCONT them all."""
        async with self.infra.postgres_paused():
            self.faults.append(f"PostgreSQL paused {seconds:g}s")
            await asyncio.sleep(seconds)

    async def fail_sink(self, seconds: float) -> None:
        """Make the billing sink answer 503, then hang, then refuse connections, then recover."""
        assert self.sink_control is not None
        phase = max(1.0, seconds / 3)
        async with aiohttp.ClientSession() as http:
            for mode in ("error", "hang", "refuse"):
                async with http.post(
                    f"{self.sink_control}/_sink/mode", json={"mode": mode, "status": 503}
                ) as r:
                    assert r.status == 200, await r.text()
                self.faults.append(f"billing sink {mode} {phase:g}s")
                await asyncio.sleep(phase)
            async with http.post(f"{self.sink_control}/_sink/mode", json={"mode": "ok"}) as r:
                assert r.status == 200, await r.text()

    async def fail_receiver(self, seconds: float, *, first_within_s: float = 120.0) -> None:
        """Make the webhook receiver answer 503 from now until `seconds` after the first
        delivery reaches it, then hang for `seconds`, then recover."""
        receiver = self.receiver
        assert receiver is not None
        receiver.mode = 503
        deadline = time.monotonic() + first_within_s
        while not receiver.hooks and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        self.faults.append(f"webhook receiver fails {seconds:g}s")
        await asyncio.sleep(seconds)
        receiver.hold()
        receiver.mode = "hang"
        self.faults.append(f"webhook receiver hangs {seconds:g}s")
        await asyncio.sleep(seconds)
        receiver.mode = 200
        receiver.release()


#: The address `TOLLGATE_NOTIFY_ADMIN_EMAILS` holds in a notifying stack.
NOTIFY_ADMIN_EMAIL: Final = "ops@example.com"


def admin_headers() -> dict[str, str]:
    """The admin token the stack's services accept."""
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
