"""`tollgate run` (what `make run` calls): one command starts everything and stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from libs.service.cli import available_services
from libs.service.embedded import free_port, port_open
from tests.support import ROOT

pytestmark = pytest.mark.e2e


def _start(
    state: Path, ports: dict[str, int], metrics_ports: dict[str, int], kafka_port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOLLGATE_", "KAFKA_", "DATABASE_"))
    }
    env.update(
        TOLLGATE_STATE_DIR=str(state),
        TOLLGATE_EMBEDDED_KAFKA_PORT=str(kafka_port),
        **{f"TOLLGATE_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        **{
            f"TOLLGATE_{name.upper()}_METRICS_PORT": str(port)
            for name, port in metrics_ports.items()
        },
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "libs.service.cli", "run"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )


def _status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)  # loopback URL built by the test
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run exited early:\n{log.read_text()[-4000:]}")
        try:
            if _status(f"{url}/readyz") == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready:\n{log.read_text()[-4000:]}")


def test_run_starts_everything_stops_on_sigterm_and_starts_again(tmp_path: Path) -> None:
    """Run starts broker, database and services (metrics on their own ports), prints the dev tokens, stops every child on SIGTERM, and a second run reuses the data under a new epoch."""
    state = tmp_path / "state"
    ports = {s.name: free_port() for s in available_services()}
    metrics_ports = {s.name: free_port() for s in available_services()}
    kafka_port = free_port()
    epochs = []
    for attempt in range(2):
        log = tmp_path / f"run-{attempt}.log"
        proc = _start(state, ports, metrics_ports, kafka_port, log)
        try:
            for port in ports.values():
                _wait_ready(f"http://127.0.0.1:{port}", proc, log)
            ingest = f"http://127.0.0.1:{ports['ingest']}"
            assert _status(f"{ingest}/api/v1/pricing/models", "dev-admin-token") == 200
            for name, port in metrics_ports.items():
                assert _status(f"http://127.0.0.1:{port}/metrics") == 200, name
                assert _status(f"http://127.0.0.1:{ports[name]}/metrics", "dev-admin-token") == 404
            epochs.append((state / "broker-epoch").read_text().strip())
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        output = log.read_text()
        assert code == 0, output[-4000:]
        assert "dev-emitter-token" in output
        assert "WARNING" in output
        assert not port_open("127.0.0.1", kafka_port)
        assert not any(
            port_open("127.0.0.1", p) for p in [*ports.values(), *metrics_ports.values()]
        )
    assert (state / "pgdata" / "PG_VERSION").exists()
    assert epochs[0] != epochs[1]
