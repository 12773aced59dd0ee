"""`tollgate simulate verify`: compare a simulation's expected figures with what the services show.

`tollgate simulate` writes, next to what it sends, every figure the services must then show
(`tools.simulator.expected`). This reads that file back, asks limits, reports and (on request)
the publisher the same questions over their public APIs, and prints a table of every figure
that differs. Only the simulation's own users, teams and hours are compared, so other usage
in the same system never shows up as a difference (Agent Time is the exception: an hour's
figure is everyone's, which is why it is compared only when asked for).

Reports and the publisher project the log a moment behind ingest, so the comparison is
repeated until it matches or `--wait` seconds have passed; the exit status is 0 when every
figure matched, 1 when any differs, 2 when the file or the services cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table

from libs.events.limits import LimitStatus
from libs.service.local import service_url
from tools.simulator.cli import default_expected_path, first_token
from tools.simulator.expected import ChatTotals

__all__ = ["PARTS", "Comparison", "Difference", "compare", "main"]

#: What can be compared; Agent Time only on request (an hour's runtime is everyone's).
PARTS: Final = ("limits", "costs", "activity", "chargeback", "agent-time")
DEFAULT_PARTS: Final = ("limits", "costs", "activity", "chargeback")
#: Every figure of a cost row: the rollup's fields, as the expected file writes them, and chats.
_COST_FIELDS: Final = (*ChatTotals().as_json(), "chat_count")
_DEV_ADMIN: Final = "dev-admin-token"  # the development token `tollgate run` prints
_PAGE: Final = 1000


class ServiceError(RuntimeError):
    """A service answered something other than the figures asked for."""


@dataclass(frozen=True, slots=True)
class Difference:
    """One figure the services show differently from the expected file."""

    part: str
    figure: str
    expected: object
    actual: object


@dataclass(slots=True)
class Comparison:
    """Every figure compared, what differed, and what could not be compared (and why)."""

    compared: dict[str, int] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every compared figure matched."""
        return not self.differences

    def check(self, part: str, figure: str, expected: object, actual: object) -> None:
        """Count one figure, and record it when the services show something else."""
        self.compared[part] = self.compared.get(part, 0) + 1
        if expected != actual:
            self.differences.append(Difference(part, figure, expected, actual))


@dataclass(frozen=True, slots=True)
class Services:
    """Where to ask, and with which token."""

    limits: str
    reports: str
    publisher: str
    token: str


async def _get(http: aiohttp.ClientSession, services: Services, url: str, **params: str) -> Any:
    headers = {"Authorization": f"Bearer {services.token}"}
    try:
        async with http.get(url, params=params, headers=headers) as response:
            body = await response.read()
            status = response.status
    except aiohttp.ClientError as exc:
        raise ServiceError(f"cannot reach {url}: {exc}") from exc
    if status == 404:
        return None
    if status != 200:
        raise ServiceError(f"GET {url} answered {status}: {body[:300].decode(errors='replace')}")
    return orjson.loads(body)


async def _limits(
    http: aiohttp.ClientSession, services: Services, doc: dict[str, Any], out: Comparison
) -> None:
    expected = doc["limits"]
    turned_over: set[str] = set()
    for user, periods in expected["spent_micros"].items():
        answer = await _get(http, services, f"{services.limits}/api/v1/limits/status/{user}")
        if answer is None:
            out.check("limits", f"{user} status", "an answer", "404")
            continue
        status = LimitStatus.model_validate(answer)
        period: str = status.period
        if status.period_start != datetime.fromisoformat(expected["period_start"][period]):
            turned_over.add(period)
            continue
        out.check("limits", f"{user} {period} spend", periods[period], status.spent_micros)
    for period in sorted(turned_over):
        out.notes.append(
            f"limits: the current {period} began after the simulation ended "
            f"({expected['period_start'][period]}), so its spend is not compared"
        )


async def _costs(
    http: aiohttp.ClientSession, services: Services, doc: dict[str, Any], out: Comparison
) -> None:
    expected = doc["costs"]
    window = {"start_date": expected["start_date"], "end_date": expected["end_date"]}
    prefix = f"sim-{doc['simulation']['seed']}-"
    rows: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = await _get(
            http,
            services,
            f"{services.reports}/api/v1/costs/users",
            limit=str(_PAGE),
            offset=str(offset),
            **window,
        )
        users = page["users"]
        rows.update({row["user_id"]: row for row in users})
        offset += len(users)
        if not users or offset >= int(page["count"]):
            break
    for user, want in expected["users"].items():
        got = rows.get(user, {})
        for name in _COST_FIELDS:
            out.check("costs", f"{user} {name}", want[name], got.get(name))
        detail = await _get(
            http, services, f"{services.reports}/api/v1/costs/users/{user}", **window
        )
        if detail is None:
            out.check("costs", f"{user} detail", "an answer", "404")
            continue
        models = {m["model"]: m for m in detail["by_model"]}
        for model, totals in want["by_model"].items():
            for name in ("total_cost_micros", "message_count"):
                out.check("costs", f"{user} {model} {name}", totals[name], _at(models, model, name))
        out.check("costs", f"{user} models", sorted(want["by_model"]), sorted(models))
        chats = {c["root_chat_id"]: c for c in detail["by_chat"]}
        for root, totals in want["by_chat"].items():
            for name in ("total_cost_micros", "message_count"):
                out.check(
                    "costs", f"{user} chat {root} {name}", totals[name], _at(chats, root, name)
                )
        out.check("costs", f"{user} chats", sorted(want["by_chat"]), sorted(chats))
    for user in sorted(set(rows) - set(expected["users"])):
        if user.startswith(prefix):
            out.check("costs", f"{user} (not simulated in this window)", None, rows[user])


def _at(rows: dict[str, dict[str, Any]], key: str, name: str) -> object:
    row = rows.get(key)
    return None if row is None else row.get(name)


async def _activity(
    http: aiohttp.ClientSession, services: Services, doc: dict[str, Any], out: Comparison
) -> None:
    expected = doc["activity"]
    users = set(doc["simulation"]["user_ids"])
    got = await _get(
        http,
        services,
        f"{services.reports}/api/v1/metrics/activity",
        start=expected["start"],
        end=expected["end"],
        interval=expected["interval"],
        category=expected["category"],
        org=doc["simulation"]["org_id"],
    )
    buckets = got["activity"]
    out.check("activity", "buckets", len(expected["activity"]), len(buckets))
    for want, bucket in zip(expected["activity"], buckets, strict=False):
        rows = {r["user_id"]: (r["duration"], r["count"]) for r in want["user_activity"]}
        actual = {
            r["user_id"]: (r["duration"], r["count"])
            for r in bucket["user_activity"]
            if r["user_id"] in users
        }
        for user in sorted(rows.keys() | actual.keys()):
            out.check(
                "activity",
                f"{want['time']} {user} (duration ms, count)",
                rows.get(user, (0, 0)),
                actual.get(user, (0, 0)),
            )
    for user, totals in expected["users"].items():
        answer = got["users"].get(user, {})
        out.check(
            "activity",
            f"{user} total (duration ms, count)",
            (totals["total_duration"], totals["total_count"]),
            (answer.get("total_duration"), answer.get("total_count")),
        )


async def _chargeback(
    http: aiohttp.ClientSession, services: Services, doc: dict[str, Any], out: Comparison
) -> None:
    for month, want in doc["chargeback"].items():
        got = await _get(
            http, services, f"{services.reports}/api/v1/chargeback/report", reportMonth=month
        )
        teams = {t["id"]: t for t in got["workspaces"]}
        for team in want["workspaces"]:
            answer = teams.get(team["team_id"], {})
            figure = f"{month} {team['name']}"
            for name, theirs in (
                ("numberOfMembers", "numberOfMembers"),
                ("numberOfExperiments", "numberOfExperiments"),
                ("llm_cost_micros", "llmCostMicros"),
                ("agent_builds", "agentBuilds"),
            ):
                out.check("chargeback", f"{figure} {theirs}", team[name], answer.get(theirs))
            out.check(
                "chargeback",
                f"{figure} totalSizeInMb",
                round(team["totalSizeInMb"], 3),
                round(float(answer.get("totalSizeInMb") or 0), 3),
            )
        licensed = {u["userId"]: u for u in got["users"]["licensedUsers"]}
        for user in want["users"]["licensedUsers"]:
            answer = licensed.get(user["user_id"], {})
            for name, theirs in (
                ("uiUsageCount", "uiUsageCount"),
                ("sdkUsageCount", "sdkUsageCount"),
                ("llm_cost_micros", "llmCostMicros"),
                ("agent_builds", "agentBuilds"),
            ):
                out.check(
                    "chargeback",
                    f"{month} {user['user_id']} {theirs}",
                    user[name],
                    answer.get(theirs),
                )


async def _agent_time(
    http: aiohttp.ClientSession, services: Services, doc: dict[str, Any], out: Comparison
) -> None:
    got = await _get(http, services, f"{services.publisher}/api/v1/publisher/agent-time")
    hours = {h["id"]: h for h in got["hours"]}
    window_start = got["window_start"]
    outside = 0
    for hour_id, runtime in doc["agent_time"]["hours"].items():
        hour = hours.get(hour_id)
        if hour is None:
            # The publisher lists only hours of its window with runtime or a heartbeat.
            if runtime and _hour_of(hour_id) >= window_start:
                out.check("agent-time", hour_id, runtime, None)
            elif runtime:
                outside += 1
            continue
        out.check("agent-time", f"{hour_id} runtime_ms", runtime, hour["runtime_ms"])
    if outside:
        out.notes.append(
            f"agent-time: {outside} simulated hours lie before the publisher's window "
            f"({window_start}) and are not compared"
        )


def _hour_of(hour_id: str) -> str:
    """`hb_agent_runtime_v1:2026-11-27_13:00:00` as `2026-11-27T13:00:00Z`, which sorts as time."""
    stamp = hour_id.split(":", 1)[1]
    return stamp.replace("_", "T") + "Z"


_CHECKS: Final = {
    "limits": _limits,
    "costs": _costs,
    "activity": _activity,
    "chargeback": _chargeback,
    "agent-time": _agent_time,
}


async def compare(
    doc: dict[str, Any], services: Services, parts: Sequence[str] = DEFAULT_PARTS
) -> Comparison:
    """Ask the services every figure of `parts` once, and compare it with the expected file."""
    out = Comparison()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for part in parts:
            await _CHECKS[part](http, services, doc, out)
    return out


async def compare_until(
    doc: dict[str, Any],
    services: Services,
    parts: Sequence[str],
    *,
    wait_s: float,
    pause_s: float = 1.0,
) -> Comparison:
    """`compare` again until everything matches or `wait_s` has passed; the last comparison."""
    deadline = time.monotonic() + wait_s
    while True:
        result = await compare(doc, services, parts)
        if result.ok or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(pause_s)


def _shown(value: object) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def report(result: Comparison, parts: Sequence[str], console: Console, *, limit: int) -> None:
    """Print the differences (the first `limit`) and a line per part."""
    if result.differences:
        table = Table(title="figures that differ")
        table.add_column("part")
        table.add_column("figure")
        table.add_column("expected", justify="right")
        table.add_column("services show", justify="right")
        for d in result.differences[:limit]:
            table.add_row(d.part, d.figure, _shown(d.expected), _shown(d.actual))
        console.print(table)
        if len(result.differences) > limit:
            console.print(f"… and {len(result.differences) - limit} more (--show-all lists them)")
    summary = Table(title="simulation verified" if result.ok else "simulation differs")
    summary.add_column("part")
    summary.add_column("compared", justify="right")
    summary.add_column("differ", justify="right")
    for part in parts:
        differ = sum(1 for d in result.differences if d.part == part)
        summary.add_row(part, f"{result.compared.get(part, 0):,}", f"{differ:,}")
    console.print(summary)
    for note in result.notes:
        console.print(f"note: {note}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tollgate simulate verify",
        description=(
            "Compare a simulation's expected figures with what limits, reports and the "
            "publisher answer, and print every figure that differs (exit 1 when any does)."
        ),
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--expected", type=Path, default=None, help="the expected file `tollgate simulate` wrote"
    )
    source.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the simulation's seed: read $TOLLGATE_STATE_DIR/simulations/sim-SEED.json "
        "(default seed 1)",
    )
    p.add_argument(
        "--parts",
        default=",".join(DEFAULT_PARTS),
        help=f"comma-separated, of {', '.join(PARTS)} (default: %(default)s; agent-time sums "
        "every user's runtime per hour, so it matches only when nothing else ran in those hours)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds to keep comparing while figures still differ (the projections trail "
        "ingest by a moment; default %(default)s)",
    )
    p.add_argument("--limits-url", default=service_url("limits"), help="default: %(default)s")
    p.add_argument("--reports-url", default=service_url("reports"), help="default: %(default)s")
    p.add_argument("--publisher-url", default=service_url("publisher"), help="default: %(default)s")
    p.add_argument(
        "--admin-token",
        default=None,
        help="admin token (default: the first of $TOLLGATE_ADMIN_TOKENS, or the dev token)",
    )
    p.add_argument("--show-all", action="store_true", help="list every difference, not only 50")
    return p


def main(argv: Sequence[str]) -> int:
    """`tollgate simulate verify ...`: 0 when every figure matches, 1 when any differs."""
    args = _parser().parse_args(list(argv))
    console = Console(stderr=True, soft_wrap=True)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        console.print(f"tollgate simulate verify: --parts takes {', '.join(PARTS)}")
        return 2
    path = args.expected or default_expected_path(1 if args.seed is None else args.seed)
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        console.print(f"tollgate simulate verify: cannot read the expected file {path}: {exc}")
        return 2
    services = Services(
        limits=args.limits_url.rstrip("/"),
        reports=args.reports_url.rstrip("/"),
        publisher=args.publisher_url.rstrip("/"),
        token=args.admin_token or first_token("TOLLGATE_ADMIN_TOKENS", _DEV_ADMIN),
    )
    console.print(f"comparing {path} with {services.limits} and {services.reports}")
    try:
        result = asyncio.run(compare_until(doc, services, parts, wait_s=max(0.0, args.wait)))
    except ServiceError as exc:
        console.print(f"tollgate simulate verify: {exc}")
        return 2
    except (KeyError, TypeError) as exc:
        console.print(
            f"tollgate simulate verify: {path} or a service's answer is not in the expected "
            f"shape ({type(exc).__name__}: {exc}); was the file written by `tollgate simulate`?"
        )
        return 2
    except KeyboardInterrupt:
        return 130
    report(result, parts, console, limit=len(result.differences) if args.show_all else 50)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
