"""After every attack: no service restarted, accepted data unchanged, no secret leaked.

These tests run after the rest of the security suite (see `conftest.py`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import aiohttp
import pytest

from libs.events.models import DirectoryUser, UserUpdated
from tests.security.conftest import WRONG_TOKENS, Secured
from tests.security.operations import EMITTER, request
from tests.support import ADMIN_TOKEN, EMITTER_TOKEN

pytestmark = pytest.mark.e2e


def test_no_service_died_or_restarted(secured: Secured) -> None:
    """Every service still runs as the process it started as."""
    for name, svc in secured.stack.services.items():
        assert svc.process is not None
        assert svc.process.poll() is None, f"{name} died:\n{svc.logs()[-3000:]}"
        assert svc.process.pid == secured.pids[name], f"{name} was restarted"


@pytest.mark.timeout(300)
async def test_accepted_data_is_unchanged(secured: Secured) -> None:
    """The canary's figures in every part still equal its expected totals exactly."""
    results = await secured.figures(timeout_s=30)
    failing = [r.summary() for r in results.values() if not r.ok]
    assert not failing, "\n".join(failing)


async def test_tokens_and_emails_never_reach_metrics_or_logs(secured: Secured) -> None:
    """Neither `/metrics` nor any service log holds a token or an email address."""
    probe = f"leak-probe-{uuid.uuid4().hex[:8]}@example.com"
    event = UserUpdated(
        id=f"leak-{uuid.uuid4().hex}",
        occurred_at=datetime.now(UTC),
        user_id=f"leak-{uuid.uuid4().hex[:8]}",
        data=DirectoryUser(
            username="leak",
            name="Leak Probe",
            email=probe,
            roles=("member",),
            created_at=datetime.now(UTC),
        ),
    )
    good = event.model_dump_json().encode()
    bad = good.replace(b'"suspended":false', f'"suspended":"{probe}"'.encode())
    ingest = secured.url("ingest")
    for body in (b'{"events":[' + good + b"]}", b'{"events":[' + bad + b"]}"):
        await request(
            ingest,
            "post",
            "/api/v1/events",
            headers={**EMITTER, "Content-Type": "application/json"},
            body=body,
        )
    for name in secured.services:
        for token in WRONG_TOKENS[:2]:
            await request(
                secured.url(name), "get", f"/api/v1/{probe}", headers={"Authorization": token}
            )
    secrets = {ADMIN_TOKEN, EMITTER_TOKEN, *(t for t in WRONG_TOKENS if t), probe}
    secrets |= secured.emails
    async with aiohttp.ClientSession() as http:
        for name in secured.services:
            async with http.get(secured.stack.services[name].metrics_url) as r:
                metrics = await r.text()
            logs = secured.stack.services[name].logs()
            assert logs, f"{name} wrote no log at all"
            for secret in secrets:
                assert secret not in metrics, f"{name} /metrics holds {secret!r}"
                assert secret not in logs, f"{name} log holds {secret!r}"
