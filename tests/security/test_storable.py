"""Values no consumer could store, ids reused across users, and emitter costs, against the running system.

Each case is one of the ways a hostile or careless emitter broke a consumer before: ingest must
refuse it per event naming the field (or count it correctly), every admin and query route must
answer a 4xx, and every consumer keeps going; the aftermath tests then check that the canary's
figures did not move.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import asyncpg
import pytest

from libs.events.bounds import MAX_EVENT_COST_MICROS, MAX_SIZE_MB
from libs.events.models import WorkspaceBuilt
from services.publisher.domain import build_billing_id
from tests.reliability.stack import existing_services, missing_reason
from tests.security.conftest import Secured
from tests.security.operations import ADMIN, EMITTER
from tests.support import eventually

pytestmark = pytest.mark.e2e

HUGE_PRICE = {"input_price_per_million": "1000000", "output_price_per_million": "0"}
PRICE = {"input_price_per_million": "3.00", "output_price_per_million": "15.00"}


def _needs(*names: str) -> None:
    for name in names:
        if name not in existing_services():
            pytest.skip(missing_reason(name))


def _marker(kind: str) -> str:
    return f"sec-{kind}-{uuid.uuid4().hex[:8]}"


def _event(
    kind: str, user: str, data: dict[str, Any], event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or f"sec-ev-{uuid.uuid4().hex[:12]}",
        "type": kind,
        "occurred_at": datetime.now(UTC).isoformat(),
        "user_id": user,
        "data": data,
    }


def _chat(user: str, model: str, tokens: int, **extra: Any) -> dict[str, Any]:
    data = {"chat_id": "c", "message_id": "m", "model": model, "input_tokens": tokens,
            "output_tokens": 0, **extra}  # fmt: skip
    return _event("chat.usage.v1", user, data)


def _build(user: str) -> dict[str, Any]:
    data = {"workspace_id": "w", "build_id": "b", "template": "t", "agent_managed": True}
    return _event("workspace.build.v1", user, data)


async def _send(
    http: aiohttp.ClientSession, secured: Secured, events: list[dict[str, Any]]
) -> dict[str, Any]:
    async with http.post(
        f"{secured.url('ingest')}/api/v1/events", json={"events": events}, headers=EMITTER
    ) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def _price(
    http: aiohttp.ClientSession, secured: Secured, model: str, price: dict[str, str]
) -> None:
    async with http.put(
        f"{secured.url('ingest')}/api/v1/pricing/models/{model}", json=price, headers=ADMIN
    ) as resp:
        assert resp.status == 200, await resp.text()


async def _spent(http: aiohttp.ClientSession, secured: Secured, user: str) -> int:
    async with http.get(
        f"{secured.url('limits')}/api/v1/limits/status/{quote(user)}", headers=ADMIN
    ) as resp:
        assert resp.status == 200, await resp.text()
        spent: int = (await resp.json())["spent_micros"]
        return spent


async def _reported(http: aiohttp.ClientSession, secured: Secured, user: str) -> int | None:
    month = datetime.now(UTC).replace(day=1).date().isoformat()
    async with http.get(
        f"{secured.url('reports')}/api/v1/costs/users/{quote(user)}",
        params={"start_date": month},
        headers=ADMIN,
    ) as resp:
        if resp.status == 404:
            return None
        assert resp.status == 200, await resp.text()
        cost: int = (await resp.json())["total_cost_micros"]
        return cost


async def _until(probe: Callable[[], Any], timeout_s: float = 30) -> None:
    await eventually(probe, timeout_s=timeout_s, interval_s=0.25)


async def test_a_nul_in_a_user_id_is_refused_and_other_users_builds_are_still_billed(
    secured: Secured,
) -> None:
    """`eve\\u0000` is refused naming user_id; agent builds of other users sent afterwards all reach the billing server."""
    _needs("ingest", "publisher")
    marker = _marker("nul")
    poisoned = _build(f"{marker}-eve\x00")
    others = [_build(f"{marker}-u{n}") for n in range(5)]
    async with aiohttp.ClientSession() as http:
        body = await _send(http, secured, [poisoned, *others])
        assert body["accepted"] == [e["id"] for e in others]
        [rejected] = body["rejected"]
        assert rejected["message"].startswith("user_id: contains a control character (U+0000")
        # The canary's check expects exactly its own builds and these at the billing sink.
        identities = [WorkspaceBuilt.model_validate(e).identity for e in others]
        secured.tally.billable_identities.extend(identities)
        wanted = {build_billing_id(i) for i in identities}
        control = secured.stack.sink_control
        assert control is not None

        async def all_billed() -> bool:
            async with http.get(
                f"{control}/_sink/events", params={"event_type": "dc_managed_agents_v1"}
            ) as resp:
                billed = {e["id"] for e in (await resp.json())["events"]}
            return wanted <= billed

        await _until(all_billed, timeout_s=60)


async def test_an_event_whose_cost_cannot_be_stored_is_refused_alone(secured: Secured) -> None:
    """At $1,000,000 per million tokens, 2^53-1 or 10^10 tokens are refused per event; the valid event beside them counts everywhere."""
    _needs("ingest", "limits", "reports")
    marker = _marker("cost")
    model = f"{marker}-model"
    user = f"{marker}-user"
    async with aiohttp.ClientSession() as http:
        await _price(http, secured, model, HUGE_PRICE)
        valid = _chat(user, model, 10**6)
        body = await _send(
            http, secured, [valid, _chat(user, model, 2**53 - 1), _chat(user, model, 10**10)]
        )
        assert body["accepted"] == [valid["id"]]
        messages = [r["message"] for r in body["rejected"]]
        assert messages[0].startswith("data.input_tokens: Input should be less than or equal")
        assert messages[1].startswith(f"data: at the price of model '{model}'")

        async def counted() -> bool:
            return (
                await _spent(http, secured, user)
                == MAX_EVENT_COST_MICROS
                == await _reported(http, secured, user)
            )

        await _until(counted)


async def test_a_zero_emitter_cost_does_not_make_priced_usage_free(secured: Secured) -> None:
    """`cost_micros: 0` with a billion tokens of a priced model costs what the price says, in limits and reports."""
    _needs("ingest", "limits", "reports")
    marker = _marker("free")
    model = f"{marker}-model"
    user = f"{marker}-user"
    async with aiohttp.ClientSession() as http:
        await _price(http, secured, model, PRICE)
        body = await _send(http, secured, [_chat(user, model, 10**9, cost_micros=0)])
        assert len(body["accepted"]) == 1

        async def charged() -> bool:
            return (
                await _spent(http, secured, user)
                == 3 * 10**9
                == await _reported(http, secured, user)
            )

        await _until(charged)


async def test_one_id_for_two_users_counts_for_both_in_limits_and_reports(
    secured: Secured,
) -> None:
    """The same event id sent for x and then for y is two events: each user's figure is the same in limits and reports."""
    _needs("ingest", "limits", "reports")
    marker = _marker("twice")
    model = f"{marker}-model"
    x, y = f"{marker}-x", f"{marker}-y"
    async with aiohttp.ClientSession() as http:
        await _price(http, secured, model, PRICE)
        first = _chat(x, model, 1000)
        await _send(http, secured, [first])
        await _send(http, secured, [{**_chat(y, model, 2000), "id": first["id"]}])
        await _send(http, secured, [first])  # and a resend of the first: once

        async def agree() -> bool:
            figures = [
                (await _spent(http, secured, u), await _reported(http, secured, u)) for u in (x, y)
            ]
            return figures == [(3000, 3000), (6000, 6000)]

        await _until(agree)


async def test_values_too_large_to_sum_are_refused_and_the_chargeback_answers(
    secured: Secured,
) -> None:
    """Storage samples of 1e308 MB are refused naming size_mb; one stored before the bounds cannot make the chargeback fail."""
    _needs("ingest", "reports")
    marker = _marker("size")
    month = datetime.now(UTC).strftime("%Y-%m")
    sample = {"project_id": f"{marker}-p", "size_mb": 1e308, "experiment_count": 1}
    async with aiohttp.ClientSession() as http:
        body = await _send(
            http,
            secured,
            [
                _event("storage.sample.v1", f"{marker}-u", sample),
                _event("storage.sample.v1", f"{marker}-u", {**sample, "size_mb": MAX_SIZE_MB}),
            ],
        )
        assert len(body["accepted"]) == 1
        assert body["rejected"][0]["message"].startswith("data.size_mb: Input should be less")
        conn = await asyncpg.connect(secured.stack.database_url)
        try:
            team, project = f"{marker}-team", f"{marker}-legacy"
            await conn.execute(
                "INSERT INTO reports_teams (team_id, name, member_ids, occurred_at, "
                "log_partition, log_offset) VALUES ($1, $1, '{}', now(), 0, 0)",
                team,
            )
            for n in range(2):
                await conn.execute(
                    "INSERT INTO reports_projects (project_id, team_id, name, occurred_at, "
                    "log_partition, log_offset) VALUES ($1, $2, $1, now(), 0, 0)",
                    f"{project}-{n}",
                    team,
                )
                await conn.execute(
                    "INSERT INTO reports_storage (month, project_id, size_mb, experiment_count, "
                    "occurred_at, log_partition, log_offset) "
                    "VALUES (date_trunc('month', now()), $1, 1e308, 1, now(), 0, 0)",
                    f"{project}-{n}",
                )
        finally:
            await conn.close()
        async with http.get(
            f"{secured.url('reports')}/api/v1/chargeback/report",
            params={"reportMonth": month},
            headers=ADMIN,
        ) as resp:
            assert resp.status == 200, await resp.text()
            report = await resp.json()
        [legacy] = [w for w in report["workspaces"] if w["id"] == team]
        assert legacy["totalSizeInMb"] == 2 * MAX_SIZE_MB


@pytest.mark.parametrize("char", ["%00", "%01", "%1F", "%7F", "%C2%85"])
async def test_control_characters_in_paths_and_queries_are_4xx_on_every_service(
    secured: Secured, char: str
) -> None:
    """NUL and other control characters in ids of paths and queries get a 4xx naming the problem, never a 5xx or 503."""
    cases: list[tuple[str, str, str, dict[str, Any] | None]] = [
        ("limits", "PUT", f"/api/v1/limits/overrides/users/a{char}b", {"limit_micros": 5}),
        ("limits", "DELETE", f"/api/v1/limits/overrides/groups/g{char}", None),
        ("limits", "GET", f"/api/v1/limits/status/u{char}", None),
        ("limits", "GET", f"/api/v1/limits/status/u?org_id=o{char}", None),
        ("limits", "POST", "/api/v1/limits/check", {"user_id": "u", "org_id": f"o{unquote(char)}"}),
        ("ingest", "PUT", f"/api/v1/pricing/models/m{char}", PRICE),
        ("ingest", "GET", f"/api/v1/pricing/models/m{char}", None),
        ("reports", "GET", f"/api/v1/costs/users/u{char}", None),
        ("reports", "GET", f"/api/v1/costs/users?q=a{char}", None),
        ("reports", "GET", f"/api/v1/metrics/activity?org=o{char}", None),
    ]
    async with aiohttp.ClientSession() as http:
        for service, method, path, body in cases:
            if service not in existing_services():
                continue
            async with http.request(
                method, f"{secured.url(service)}{path}", json=body, headers=ADMIN
            ) as resp:
                text = await resp.text()
                assert 400 <= resp.status < 500, (service, method, path, resp.status, text)
                assert "control character" in text, (service, path, text)
