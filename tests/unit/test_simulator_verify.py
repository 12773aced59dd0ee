"""`tollgate simulate verify` against a fake limits service: matches, differences, a new period."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from rich.console import Console

from tools.simulator.verify import Services, compare, main, report

MONTH = "2026-11-01T00:00:00Z"


def expected(spent: dict[str, int]) -> dict[str, Any]:
    """An expected file's limits part: each user's month spend as of the simulation's end."""
    return {
        "simulation": {"seed": 1, "user_ids": sorted(spent), "org_id": "sim-1-org"},
        "limits": {
            "as_of": "2026-11-27T12:00:00Z",
            "period_start": {"day": "2026-11-27T00:00:00Z", "week": "2026-11-23T00:00:00Z"}
            | {"month": MONTH},
            "spent_micros": {u: {"day": 0, "week": 0, "month": s} for u, s in spent.items()},
        },
    }


@asynccontextmanager
async def limits(spent: dict[str, int], period_start: str = MONTH) -> AsyncIterator[str]:
    """A limits service answering `GET /api/v1/limits/status/{user}` with these month totals."""

    async def status(request: web.Request) -> web.Response:
        user = request.match_info["user"]
        if user not in spent:
            return web.json_response({"message": "no such user"}, status=404)
        return web.json_response(
            {
                "is_limited": False,
                "period": "month",
                "limit_micros": None,
                "spent_micros": spent[user],
                "period_start": period_start,
                "period_end": "2026-12-01T00:00:00Z",
                "source": "none",
                "group_id": None,
                "org_id": None,
            }
        )

    app = web.Application()
    app.router.add_get("/api/v1/limits/status/{user}", status)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def services(url: str) -> Services:
    return Services(limits=url, reports=url, publisher=url, token="t")


async def test_equal_figures_verify_and_a_different_one_is_named() -> None:
    """Every user's spend is compared; the one that differs is listed with both figures."""
    doc = expected({"sim-1-u0001": 100, "sim-1-u0002": 250})
    async with limits({"sim-1-u0001": 100, "sim-1-u0002": 250}) as url:
        same = await compare(doc, services(url), ["limits"])
    assert same.ok
    assert same.compared == {"limits": 2}
    async with limits({"sim-1-u0001": 100, "sim-1-u0002": 249}) as url:
        differ = await compare(doc, services(url), ["limits"])
    assert not differ.ok
    assert [(d.figure, d.expected, d.actual) for d in differ.differences] == [
        ("sim-1-u0002 month spend", 250, 249)
    ]
    console = Console(record=True, width=120)
    report(differ, ["limits"], console, limit=50)
    text = console.export_text()
    assert "sim-1-u0002 month spend" in text
    assert "simulation differs" in text


async def test_a_period_that_turned_over_is_noted_not_reported_as_a_difference() -> None:
    """After the month the simulation ended in, limits' spend is another month's: not compared."""
    doc = expected({"sim-1-u0001": 100})
    async with limits({"sim-1-u0001": 0}, period_start="2026-12-01T00:00:00Z") as url:
        result = await compare(doc, services(url), ["limits"])
    assert result.ok
    assert result.compared == {}
    note = f"limits: the current month began after the simulation ended ({MONTH}), so its"
    assert result.notes == [f"{note} spend is not compared"]


async def test_the_command_exits_1_on_a_difference_and_2_without_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The exit status says whether the figures matched; a missing file is an error of its own."""
    path = tmp_path / "sim-1.json"
    path.write_bytes(orjson.dumps(expected({"sim-1-u0001": 100})))
    async with limits({"sim-1-u0001": 99}) as url:
        argv = ["--expected", str(path), "--parts", "limits", "--wait", "0", "--limits-url", url]
        # The command runs its own event loop: give it a thread of its own.
        code = await asyncio.to_thread(main, argv)
    assert code == 1
    assert "sim-1-u0001 month spend" in capsys.readouterr().err
    assert main(["--expected", str(tmp_path / "missing.json")]) == 2
    assert "cannot read the expected file" in capsys.readouterr().err
    assert main(["--expected", str(path), "--parts", "limits,billing"]) == 2
