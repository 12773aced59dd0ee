"""`tollgate run` stopped and started again, cleanly and by SIGKILL: every user keeps their spend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from libs.service.cli import available_services
from libs.service.embedded import free_port, port_open
from tests.support import ROOT, unique

pytestmark = pytest.mark.e2e

ADMIN = "dev-admin-token"
EMITTER = "dev-emitter-token"
PRICE = {"input_price_per_million": "3.00", "output_price_per_million": "15.00"}


class Run:
    """One `tollgate run` of a state directory, on fixed ports."""

    def __init__(self, state: Path, ports: dict[str, int], kafka_port: int, log: Path) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TOLLGATE_", "KAFKA_", "DATABASE_"))
        }
        env.update(
            TOLLGATE_STATE_DIR=str(state),
            TOLLGATE_EMBEDDED_KAFKA_PORT=str(kafka_port),
            # No periodic snapshot in this test: only the one at a clean stop.
            TOLLGATE_LIMITS_SNAPSHOT_INTERVAL="3600",
            **{f"TOLLGATE_{name.upper()}_PORT": str(port) for name, port in ports.items()},
            # Never the default metrics ports: a `make run` on this machine may hold them.
            **{f"TOLLGATE_{name.upper()}_METRICS_PORT": str(free_port()) for name in ports},
        )
        self.ports = ports
        self.kafka_port = kafka_port
        self.log = log
        with log.open("ab") as out:
            # A session of its own, so that a SIGKILL can reach the runner and every service.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "libs.service.cli", "run"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def url(self, name: str) -> str:
        """Base URL of a service."""
        return f"http://127.0.0.1:{self.ports[name]}"

    def wait_ready(self, timeout_s: float = 90) -> None:
        """Every service answers /readyz with 200."""
        deadline = time.monotonic() + timeout_s
        waiting = set(self.ports)
        while waiting and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"run exited early:\n{self.log.read_text()[-4000:]}")
            for name in list(waiting):
                try:
                    if call("GET", f"{self.url(name)}/readyz")[0] == 200:
                        waiting.discard(name)
                except OSError:
                    pass
            time.sleep(0.2)
        assert not waiting, f"{waiting} not ready:\n{self.log.read_text()[-4000:]}"

    def stop(self) -> None:
        """SIGTERM, the clean way out: exit 0 and nothing left listening."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(90)
        assert code == 0, self.log.read_text()[-4000:]
        assert not any(port_open("127.0.0.1", p) for p in self.ports.values())

    def kill(self) -> None:
        """SIGKILL the runner, every service and the embedded broker; PostgreSQL lives on."""
        broker = _pid_listening_with(f"tcp://127.0.0.1:{self.kafka_port}")
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        if broker is not None:
            os.kill(broker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(port_open("127.0.0.1", p) for p in [*self.ports.values(), self.kafka_port]):
            assert time.monotonic() < deadline, "something still listens after SIGKILL"
            time.sleep(0.1)


def _pid_listening_with(argument: str) -> int | None:
    """The process whose command line holds `argument` (the broker of this test's port)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in cmdline:
            return int(entry.name)
    return None


def call(
    method: str, url: str, body: object = None, token: str | None = None
) -> tuple[int, object]:
    """An HTTP call to a service on loopback; (status, JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # loopback URL of the test
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            raw = resp.read()
            status: int = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    return status, json.loads(raw) if raw else None


def chat(user: str, tokens: int) -> dict[str, object]:
    """A priced chat message of `user` now."""
    event_id = unique("msg")
    return {
        "id": event_id,
        "type": "chat.usage.v1",
        "occurred_at": datetime.now(UTC).isoformat(),
        "user_id": user,
        "data": {
            "chat_id": "c",
            "message_id": event_id,
            "model": "restart-model",
            "input_tokens": tokens,
            "output_tokens": 0,
        },
    }


def send(run: Run, events: list[dict[str, object]]) -> None:
    """Through ingest; every event must be accepted."""
    status, body = call("POST", f"{run.url('ingest')}/api/v1/events", {"events": events}, EMITTER)
    assert status == 200, body
    assert isinstance(body, dict)
    assert len(body["accepted"]) == len(events), body


def figures(run: Run, users: list[str]) -> dict[str, tuple[int, int]]:
    """Each user's month spend in limits and their month cost in reports."""
    today = datetime.now(UTC)
    start = today.replace(day=1).date().isoformat()
    out: dict[str, tuple[int, int]] = {}
    for user in users:
        status, limit = call("GET", f"{run.url('limits')}/api/v1/limits/status/{user}", token=ADMIN)
        assert status == 200, limit
        assert isinstance(limit, dict)
        status, cost = call(
            "GET",
            f"{run.url('reports')}/api/v1/costs/users/{user}?start_date={start}",
            token=ADMIN,
        )
        reported = cost["total_cost_micros"] if status == 200 and isinstance(cost, dict) else -1
        out[user] = (limit["spent_micros"], reported)
    return out


def settle(run: Run, users: list[str], expected: dict[str, int], timeout_s: float = 30) -> None:
    """Wait until limits and reports both show exactly the expected spend for every user."""
    want = {u: (expected[u], expected[u]) for u in users}
    deadline = time.monotonic() + timeout_s
    got = figures(run, users)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.3)
        got = figures(run, users)
    assert got == want


def test_a_restart_keeps_every_users_spend_in_limits_and_reports(tmp_path: Path) -> None:
    """A clean stop and start keeps every user's spend, even spend accepted just before the stop (and a resend still counts once); after a SIGKILL of everything but PostgreSQL, the spend limits never snapshotted comes back from the reports archive."""
    state = tmp_path / "state"
    ports = {s.name: free_port() for s in available_services()}
    kafka_port = free_port()
    users = [unique("ann"), unique("bob"), unique("cy")]
    # 3 µ$ per input token: 1000 tokens are 3000 µ$.
    batch = [chat(users[0], 1000), chat(users[0], 500), chat(users[1], 2000), chat(users[2], 10)]
    expected = {users[0]: 4500, users[1]: 6000, users[2]: 30}

    first = Run(state, ports, kafka_port, tmp_path / "run-1.log")
    try:
        first.wait_ready()
        status, _ = call(
            "PUT", f"{first.url('ingest')}/api/v1/pricing/models/restart-model", PRICE, ADMIN
        )
        assert status == 200
        send(first, batch)
        settle(first, users, expected)
        # Accepted right before the stop: the consumers read the log to its end first.
        send(first, [chat(users[2], 1)])
        expected[users[2]] += 3
    finally:
        first.stop()

    second = Run(state, ports, kafka_port, tmp_path / "run-2.log")
    killed = False
    try:
        second.wait_ready()
        assert figures(second, users) == {u: (v, v) for u, v in expected.items()}
        # A client resending an event it already sent before the restart: still counted once.
        send(second, [batch[0]])
        more = chat(users[1], 100)
        send(second, [more])
        expected[users[1]] += 300
        settle(second, users, expected)
        second.kill()
        killed = True
    finally:
        if not killed:
            second.stop()

    third = Run(state, ports, kafka_port, tmp_path / "run-3.log")
    try:
        third.wait_ready()
        assert figures(third, users) == {u: (v, v) for u, v in expected.items()}
    finally:
        third.stop()
    # The killed run's hold on the embedded PostgreSQL does not keep it running after a clean stop.
    assert _pid_listening_with(str(state / "pgdata")) is None
