"""Compare what each part of the system shows with the simulator's expected totals.

One function per part: the log itself (behind ingest), limits, reports and the
publisher. Each returns a `CheckResult` with every figure that differs, and how many
events the figures show as lost or as counted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.events.codec import DecodeError, decode
from libs.events.models import ChatUsageRecorded, Envelope
from libs.events.pricing import price_event
from libs.events.topics import USAGE_EVENTS_PARTITIONS
from tests.reliability.stack import Stack, admin_headers
from tools.simulator.expected import Tally
from tools.simulator.generate import Simulation

MAX_SHOWN: Final = 12


@dataclass
class CheckResult:
    """How one part's figures compare with the expected totals."""

    part: str
    compared: int = 0
    differences: list[str] = field(default_factory=list)
    lost: int = 0
    doubled: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every figure matched and nothing was lost or counted twice."""
        return not self.differences and not self.lost and not self.doubled

    def differ(self, what: str, expected: object, actual: object) -> None:
        """Record one figure that does not match."""
        self.differences.append(f"{what}: expected {expected!r}, got {actual!r}")

    def compare(self, what: str, expected: object, actual: object) -> bool:
        """Count one comparison; record it when the values differ."""
        self.compared += 1
        if expected != actual:
            self.differ(what, expected, actual)
            return False
        return True

    def count(self, expected: int, actual: int) -> None:
        """Fold a count figure into the lost / double-counted totals."""
        if actual < expected:
            self.lost += expected - actual
        elif actual > expected:
            self.doubled += actual - expected

    def summary(self) -> str:
        """One line, plus the first differences."""
        head = (
            f"{self.part}: {self.compared} figures compared, {len(self.differences)} differ, "
            f"{self.lost} events lost, {self.doubled} double-counted"
        )
        lines = [head, *(f"    {n}" for n in self.notes)]
        lines += [f"    ✗ {d}" for d in self.differences[:MAX_SHOWN]]
        if len(self.differences) > MAX_SHOWN:
            lines.append(f"    … and {len(self.differences) - MAX_SHOWN} more")
        return "\n".join(lines)


Check = Callable[[], Awaitable[CheckResult]]


async def converge(check: Check, *, timeout_s: float) -> CheckResult:
    """Run `check` until it passes or `timeout_s` passes; return the last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result.ok or time.monotonic() > deadline:
            return result
        await asyncio.sleep(1.0)


async def _get(
    http: aiohttp.ClientSession, url: str, *, missing_ok: bool = False, **params: str
) -> Any:
    """The JSON body of a 200; None for a 404 when `missing_ok` (not projected yet)."""
    async with http.get(url, params=params, headers=admin_headers()) as r:
        body = await r.json(content_type=None)
        if r.status == 404 and missing_ok:
            return None
        if r.status != 200:
            raise AssertionError(f"GET {url} {params} answered {r.status}: {body}")
        return body


# ----- the log -----------------------------------------------------------------------------


async def read_topic(bootstrap: str, topic: str, *, idle_s: float = 3.0) -> list[bytes | None]:
    """Every record value of `topic`, read from the beginning until the end is reached."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await asyncio.wait_for(consumer.start(), 15)
    values: list[bytes | None] = []
    try:
        partitions = [TopicPartition(topic, p) for p in range(USAGE_EVENTS_PARTITIONS)]
        consumer.assign(partitions)
        await asyncio.wait_for(consumer.seek_to_beginning(*partitions), 15)
        last_data = time.monotonic()
        while time.monotonic() - last_data < idle_s:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=300), 30)
            for records in batch.values():
                values.extend(r.value for r in records)
            if any(batch.values()):
                last_data = time.monotonic()
            ends = [consumer.highwater(tp) for tp in partitions]
            positions = [await consumer.position(tp) for tp in partitions]
            if all(e is not None and p >= e for e, p in zip(ends, positions, strict=True)):
                break
    finally:
        await asyncio.wait_for(consumer.stop(), 15)
    return values


async def check_log(
    stack: Stack, sim: Simulation, sent: Sequence[Envelope], *, only_these: bool = True
) -> CheckResult:
    """Every sent event is on the log, priced as the simulator priced it.

    With `only_these`, nothing else may be on the log: no other event, no undecodable record.
    """
    result = CheckResult("log (ingest)")
    values = await read_topic(stack.infra.bootstrap, stack.events_topic)
    seen: dict[str, Envelope] = {}
    copies: Counter[str] = Counter()
    for value in values:
        try:
            event: Envelope = decode(value)
        except DecodeError as exc:
            if only_these:
                result.differ("an undecodable record on the log", "none", exc.reason)
            continue
        copies[event.id] += 1
        seen.setdefault(event.id, event)
    for event in sent:
        expected = price_event(event, sim.prices) if isinstance(event, ChatUsageRecorded) else event
        got = seen.get(event.id)
        result.compared += 1
        if got is None:
            result.lost += 1
            if result.lost <= MAX_SHOWN:
                result.differ(f"event {event.id}", "on the log", "missing")
        elif got != expected:
            result.differ(f"event {event.id}", expected.model_dump(), got.model_dump())
    extra = set(seen) - {e.id for e in sent} if only_these else set()
    if extra:
        result.differ("events nobody sent", 0, sorted(extra)[:5])
    resent = sum(n - 1 for n in copies.values() if n > 1)
    result.notes.append(
        f"{len(values)} records for {len(seen)} ids; {resent} resent copies "
        "(retries after a fault; every consumer deduplicates them)"
    )
    return result


# ----- limits ------------------------------------------------------------------------------


async def check_limits(stack: Stack, tally: Tally) -> CheckResult:
    """Each user's spend in the current day, week and month equals the expected spend."""
    result = CheckResult("limits")
    base = stack.url("limits")
    users = tally.user_ids()
    async with aiohttp.ClientSession() as http:
        for period in ("day", "week", "month"):
            async with http.put(
                f"{base}/api/v1/limits/config",
                json={"enabled": True, "period": period, "default_limit_micros": None},
                headers=admin_headers(),
            ) as r:
                assert r.status == 200, await r.text()
            probe = f"{base}/api/v1/limits/status/{users[0]}"
            deadline = time.monotonic() + 10
            while (await _get(http, probe))["period"] != period:
                assert time.monotonic() < deadline, f"limits did not switch to {period}"
                await asyncio.sleep(0.1)
            for _ in range(3):
                now = datetime.now(UTC)
                expected = tally.limits(now)
                answers = await asyncio.gather(
                    *(_get(http, f"{base}/api/v1/limits/status/{u}") for u in users)
                )
                if tally.limits(datetime.now(UTC))["period_start"] == expected["period_start"]:
                    break
            for user, answer in zip(users, answers, strict=True):
                want = expected["spent_micros"].get(user, {}).get(period, 0)
                result.compare(f"{user} {period} spend", want, answer["spent_micros"])
    return result


# ----- reports -----------------------------------------------------------------------------


def _day(at: datetime) -> str:
    return at.date().isoformat()


async def check_reports(stack: Stack, sim: Simulation, tally: Tally) -> CheckResult:
    """Cost per user, activity per bucket and every month's chargeback equal the expected."""
    result = CheckResult("reports")
    base = stack.url("reports")
    first, last = sim.start, sim.end
    async with aiohttp.ClientSession() as http:
        await _check_costs(http, base, tally, (first, last), result)
        await _check_activity(http, base, sim, tally, result)
        for month in tally.months():
            await _check_chargeback(http, base, tally, month, result)
    return result


_COST_FIELDS: Final = (
    "total_cost_micros",
    "message_count",
    "chat_count",
    "total_input_tokens",
    "total_output_tokens",
    "total_cache_read_tokens",
    "total_cache_creation_tokens",
    "total_reasoning_tokens",
    "total_runtime_ms",
)


async def _check_costs(
    http: aiohttp.ClientSession,
    base: str,
    tally: Tally,
    window: tuple[datetime, datetime],
    result: CheckResult,
) -> None:
    first, last = window
    expected = tally.costs(first.date(), last.date())
    rows: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = await _get(
            http,
            f"{base}/api/v1/costs/users",
            start_date=_day(first),
            end_date=_day(last + timedelta(days=1)),
            limit="500",
            offset=str(offset),
        )
        users = page.get("users", [])
        rows.update({row["user_id"]: row for row in users})
        offset += len(users)
        if not users or offset >= int(page.get("count", 0)):
            break
    for user, want in expected.items():
        got = rows.get(user, {})
        for name in _COST_FIELDS:
            result.compare(f"costs {user} {name}", want[name], got.get(name))
        result.count(want["message_count"], int(got.get("message_count") or 0))
    for user, want in expected.items():
        detail = await _get(
            http,
            f"{base}/api/v1/costs/users/{user}",
            missing_ok=True,
            start_date=_day(first),
            end_date=_day(last + timedelta(days=1)),
        )
        if detail is None:
            result.differ(f"cost detail {user}", "a row", "404: no usage projected yet")
            continue
        result.compare(
            f"cost detail {user} total", want["total_cost_micros"], detail.get("total_cost_micros")
        )
        models = {
            m["model"]: (m["total_cost_micros"], m["message_count"])
            for m in detail.get("by_model", [])
        }
        result.compare(
            f"cost detail {user} by_model",
            {m: (t["total_cost_micros"], t["message_count"]) for m, t in want["by_model"].items()},
            models,
        )
        chats = {c["root_chat_id"]: c["total_cost_micros"] for c in detail.get("by_chat", [])}
        result.compare(
            f"cost detail {user} by_chat",
            {r: t["total_cost_micros"] for r, t in want["by_chat"].items()},
            chats,
        )
    ours = f"{tally_prefix(tally)}-"
    for user in set(rows) - set(expected):
        if user.startswith(ours):
            result.differ(f"costs for {user}", "no row", rows[user])


async def _check_activity(
    http: aiohttp.ClientSession, base: str, sim: Simulation, tally: Tally, result: CheckResult
) -> None:
    want = tally.activity(sim.start, sim.end, "1 day")
    got = await _get(
        http,
        f"{base}/api/v1/metrics/activity",
        start=sim.start.isoformat().replace("+00:00", "Z"),
        end=sim.end.isoformat().replace("+00:00", "Z"),
        interval="1 day",
        category="any",
        org=sim.config.org_id,
    )
    buckets = got.get("activity", [])
    result.compare("activity bucket count", len(want["activity"]), len(buckets))
    for w, g in zip(want["activity"], buckets, strict=False):
        day = w["time"].date().isoformat()
        expected_rows = {r["user_id"]: (r["duration"], r["count"]) for r in w["user_activity"]}
        got_rows = {r["user_id"]: (r["duration"], r["count"]) for r in g.get("user_activity", [])}
        for user in expected_rows.keys() | got_rows.keys():
            exp, act = expected_rows.get(user, (0, 0)), got_rows.get(user, (0, 0))
            result.compare(f"activity {day} {user} (duration, count)", exp, act)
            result.count(exp[1], act[1])
    for user, w_user in want["users"].items():
        g_user = got.get("users", {}).get(user, {})
        result.compare(
            f"activity total {user}",
            (w_user["total_duration"], w_user["total_count"]),
            (g_user.get("total_duration"), g_user.get("total_count")),
        )


async def _check_chargeback(
    http: aiohttp.ClientSession, base: str, tally: Tally, month: str, result: CheckResult
) -> None:
    want = tally.chargeback(month)
    got = await _get(http, f"{base}/api/v1/chargeback/report", reportMonth=month)
    teams = {t.get("name"): t for t in got.get("workspaces", [])}
    for team in want["workspaces"]:
        g = teams.get(team["name"], {})
        for name in ("numberOfMembers", "numberOfExperiments", "agent_builds", "llm_cost_micros"):
            result.compare(f"chargeback {month} {team['name']} {name}", team[name], _pick(g, name))
        result.compare(
            f"chargeback {month} {team['name']} totalSizeInMb",
            round(team["totalSizeInMb"], 3),
            round(float(g.get("totalSizeInMb") or 0), 3),
        )
        result.count(team["agent_builds"], int(_pick(g, "agent_builds") or 0))
    users = {u.get("username"): u for u in got.get("users", {}).get("licensedUsers", [])}
    for user in want["users"]["licensedUsers"]:
        g = users.get(user["username"], {})
        for name in ("uiUsageCount", "sdkUsageCount", "llm_cost_micros", "agent_builds"):
            result.compare(
                f"chargeback {month} {user['username']} {name}", user[name], _pick(g, name)
            )
        result.count(user["uiUsageCount"], int(g.get("uiUsageCount") or 0))
        result.count(user["sdkUsageCount"], int(g.get("sdkUsageCount") or 0))


def _pick(row: dict[str, Any], name: str) -> Any:
    """A chargeback figure under its snake_case or camelCase name."""
    if name in row:
        return row[name]
    parts = name.split("_")
    camel = parts[0] + "".join(p.title() for p in parts[1:])
    return row.get(camel)


def tally_prefix(tally: Tally) -> str:
    """The `sim-<seed>` prefix shared by the simulation's user ids."""
    first = tally.user_ids()[0]
    return first.rsplit("-", 1)[0]


# ----- publisher ---------------------------------------------------------------------------


async def check_publisher(stack: Stack, tally: Tally) -> CheckResult:
    """Every agent-managed build reached the billing sink, and nothing else did."""
    from services.publisher.domain import build_billing_id  # noqa: PLC0415  # exists with the service

    result = CheckResult("publisher")
    assert stack.sink_control is not None
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{stack.sink_control}/_sink/events", params={"event_type": "dc_managed_agents_v1"}
        ) as r:
            delivered = (await r.json())["events"]
    got = {e["id"]: e for e in delivered}
    expected = {build_billing_id(src) for src in tally.billable_identities}
    result.compared = len(expected)
    missing = expected - set(got)
    extra = set(got) - expected
    result.lost = len(missing)
    result.doubled = len(extra)
    if missing:
        result.differ("builds never billed", 0, sorted(missing)[:5])
    if extra:
        result.differ("billed events nobody caused", 0, sorted(extra)[:5])
    for event in got.values():
        if event.get("event_data") != {"count": 1}:
            result.differ(
                f"billing event {event['id']} data", {"count": 1}, event.get("event_data")
            )
    again = sum(int(e.get("times_accepted", 1)) - 1 for e in got.values())
    result.notes.append(
        f"{len(got)} unique billing events; {again} delivered again after a fault "
        "(the billing server deduplicates by id)"
    )
    return result


# ----- notifications -------------------------------------------------------------------------


@dataclass
class DeliveryCounts:
    """How the notifications of one channel arrived, compared with the expected ones."""

    channel: str
    expected: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    unexpected: int = 0
    invalid: int = 0
    redelivered: int = 0

    def line(self) -> str:
        """One line of the report."""
        return (
            f"{self.channel}: {self.expected} expected, {self.delivered} delivered, "
            f"{self.duplicated} duplicated, {self.lost} lost, {self.unexpected} unexpected, "
            f"{self.invalid} with a bad signature ({self.redelivered} redelivered with the "
            "same id after a fault: receivers deduplicate by it)"
        )


@dataclass
class NotificationResult(CheckResult):
    """The notification check, with its counts per channel."""

    webhooks: DeliveryCounts = field(default_factory=lambda: DeliveryCounts("webhooks"))
    emails: DeliveryCounts = field(default_factory=lambda: DeliveryCounts("emails"))
    #: Requests the receiver answered with an error or held during its fault.
    refused: int = 0


async def check_notifications(
    stack: Stack,
    expected: dict[str, Any],
    secret: str,
    *,
    extra: Sequence[tuple[str, str]] = (),
) -> NotificationResult:
    """Every expected notification reached the receiver once, signed, and its emails once.

    A notification is its (type, user). One that arrived under two `webhook-id`s is duplicated;
    the same `webhook-id` answered 2xx twice is a redelivery after a fault (the receiver's
    idempotency key), not a duplicate. Emails are told apart by Message-ID the same way.
    `extra` adds notifications nobody caused (the control).
    """
    result = NotificationResult("notifications")
    receiver, smtp = stack.receiver, stack.smtp
    assert receiver is not None
    assert smtp is not None
    want = {(n["type"], n["user_id"]) for n in expected["notifications"]} | set(extra)
    ids: dict[tuple[str, str], set[str]] = {}
    copies: Counter[str] = Counter()
    hooks = result.webhooks
    for hook in receiver.answered():
        if not hook.verifies(secret):
            hooks.invalid += 1
            continue
        doc = hook.verified(secret)
        key = (str(doc["type"]), str(doc["data"]["user_id"]))
        ids.setdefault(key, set()).add(hook.webhook_id)
        copies[hook.webhook_id] += 1
    hooks.expected = len(want)
    hooks.delivered = len(want & set(ids))
    hooks.lost = len(want - set(ids))
    hooks.unexpected = len(set(ids) - want)
    hooks.duplicated = sum(len(v) - 1 for v in ids.values())
    hooks.redelivered = sum(n - 1 for n in copies.values())
    result.refused = sum(1 for h in receiver.hooks if h.answered is None or h.answered >= 300)
    result.notes.append(f"the receiver refused or held {result.refused} requests during its fault")
    mails = result.emails
    wanted_mail = Counter(
        (m["to"].lower(), m["type"], m["user_id"]) for m in expected["emails"]
    ) + Counter((m, k, u) for k, u in extra for m in ("nobody@example.com",))
    got: dict[tuple[str, str, str], set[str]] = {}
    sent: Counter[str] = Counter()
    for mail in smtp.mails:
        for to in mail.rcpt_tos:
            mail_key = (
                to.lower(),
                str(mail.message["X-Tollgate-Notification"]),
                str(mail.message["X-Tollgate-User-Id"]),
            )
            got.setdefault(mail_key, set()).add(mail.message_id)
        sent[mail.message_id] += 1
    mails.expected = sum(wanted_mail.values())
    mails.delivered = len(set(wanted_mail) & set(got))
    mails.lost = len(set(wanted_mail) - set(got))
    mails.unexpected = len(set(got) - set(wanted_mail))
    mails.duplicated = sum(len(v) - 1 for v in got.values())
    mails.redelivered = sum(n - 1 for n in sent.values())
    result.compared = hooks.expected + mails.expected
    result.lost = hooks.lost + mails.lost
    result.doubled = hooks.duplicated + mails.duplicated
    for counts in (hooks, mails):
        result.notes.append(counts.line())
        if counts.unexpected:
            result.differ(f"{counts.channel} nobody caused", 0, counts.unexpected)
        if counts.invalid:
            result.differ(
                f"{counts.channel} with a signature standardwebhooks refuses", 0, counts.invalid
            )
    missing = sorted(want - set(ids))
    if missing:
        result.differ("notifications never delivered", [], missing[:5])
    return result
