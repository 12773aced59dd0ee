"""`tollgate run` serves the console and every public API from the reports port, with a kept secret."""

from __future__ import annotations

import signal
import stat
import urllib.request
from pathlib import Path

import pytest

from libs.service.cli import available_services
from libs.service.embedded import free_port
from tests.e2e.test_run_command import _start, _status, _wait_ready

pytestmark = pytest.mark.e2e


def test_run_serves_the_console_and_forwards_every_api_from_one_origin(tmp_path: Path) -> None:
    """With `tollgate run`, the reports port answers the sign-in page and each other service's API (with the caller's token), and the generated portal secret is kept private in the state directory."""
    state = tmp_path / "state"
    ports = {s.name: free_port() for s in available_services()}
    log = tmp_path / "run.log"
    proc = _start(state, ports, free_port(), log)
    try:
        for port in ports.values():
            _wait_ready(f"http://127.0.0.1:{port}", proc, log)
        origin = f"http://127.0.0.1:{ports['reports']}"
        with urllib.request.urlopen(f"{origin}/console/login", timeout=5) as resp:
            page = resp.read().decode()
            assert resp.status == 200
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert 'name="token"' in page
        assert _status(f"{origin}/api/v1/pricing/models", "dev-admin-token") == 200
        assert _status(f"{origin}/api/v1/limits/config", "dev-admin-token") == 200
        assert _status(f"{origin}/api/v1/limits/config", "dev-emitter-token") == 403
        assert _status(f"{origin}/api/v1/publisher/status", "dev-admin-token") == 200
        assert _status(f"{origin}/api/v1/costs/users", "dev-emitter-token") == 200
        assert _status(f"{origin}/api/v1/limits/config") == 401
        secret = state / "portal-secret"
        assert len(secret.read_text().strip()) >= 32
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert secret.read_text().strip() not in log.read_text()
