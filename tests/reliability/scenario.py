"""The fault run: send simulated usage, inject every fault meanwhile, compare every figure.

The simulator sends through ingest while every service is killed and restarted in turn,
the broker and PostgreSQL are paused and the billing sink fails. Then each part's figures
are compared with the simulator's expected totals. `TOLLGATE_RELIABILITY_LONG=1`
(`make test-reliability`) runs the long form: more usage, 30-second outages.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from libs.events.models import (
    ChatUsage,
    ChatUsageRecorded,
    Envelope,
    WorkspaceBuild,
    WorkspaceBuilt,
)
from libs.events.vocabulary import Period
from services.limits.domain import LimitsConfig
from tests.reliability.checks import (
    Check,
    CheckResult,
    NotificationResult,
    check_limits,
    check_log,
    check_notifications,
    check_publisher,
    check_reports,
    converge,
)
from tests.reliability.stack import NOTIFY_ADMIN_EMAIL, Stack, admin_headers, existing_services
from tests.support import ADMIN_TOKEN, EMITTER_TOKEN, Infra
from tools.simulator.expected import Tally, period_starts
from tools.simulator.generate import Simulation, SimulationConfig
from tools.simulator.send import IngestSender, SendReport, register_prices


@dataclass(frozen=True)
class Profile:
    """How big and how long a fault run is."""

    long: bool
    seed: int
    users: int
    days: int
    rate: float
    batch: int
    outage_s: float
    converge_s: float

    @classmethod
    def from_env(cls) -> Profile:
        """The long form with `TOLLGATE_RELIABILITY_LONG=1`, else the short one."""
        if os.environ.get("TOLLGATE_RELIABILITY_LONG", "") in {"1", "true", "yes"}:
            return cls(
                long=True,
                seed=71,
                users=100,
                days=20,
                rate=350,
                batch=250,
                outage_s=30,
                converge_s=180,
            )
        return cls(
            long=False,
            seed=17,
            users=24,
            days=12,
            rate=200,
            batch=100,
            outage_s=3,
            converge_s=60,
        )


@dataclass
class Outcome:
    """What the fault run did and what every part's figures showed afterwards."""

    profile: Profile
    services: list[str]
    sent: SendReport
    generated: int
    faults: list[str]
    results: dict[str, CheckResult] = field(default_factory=dict)
    controls: dict[str, CheckResult] = field(default_factory=dict)
    died: list[str] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    #: Budget notifications (with limits and reports running), and the same check's control.
    notifications: NotificationResult | None = None
    notifications_control: NotificationResult | None = None

    def report(self) -> str:
        """The counts the suite promises, one per line."""
        lost = sum(r.lost for r in self.results.values())
        doubled = sum(r.doubled for r in self.results.values())
        lines = [
            (
                f"reliability ({'long' if self.profile.long else 'short'} form, "
                f"{self.seconds:.0f}s, services: {', '.join(self.services)})"
            ),
            f"  events generated:  {self.generated}",
            (
                f"  events sent:       {self.sent.accepted} accepted by ingest "
                f"({self.sent.resent_batches} batches resent, {len(self.sent.rejected)} rejected)"
            ),
            f"  faults injected:   {len(self.faults)} ({'; '.join(self.faults)})",
            f"  events lost:       {lost}",
            f"  double-counted:    {doubled}",
        ]
        note = self.notifications
        if note is not None:
            lines += [
                f"  notifications ({c.channel}): {c.expected} expected, {c.delivered} delivered, "
                f"{c.duplicated} duplicated, {c.lost} lost"
                for c in (note.webhooks, note.emails)
            ]
        lines += [f"  {r.summary()}" for r in self.results.values()]
        return "\n".join(lines)


async def _faults(
    stack: Stack, profile: Profile, events: list[Envelope], accepted: list[int]
) -> None:
    """Every fault in turn, with a breath between them so traffic flows in the gaps."""
    gap = 1.0 if not profile.long else 3.0
    # The receiver fails from the first notification on, then hangs, then recovers.
    receiver = (
        asyncio.create_task(stack.fail_receiver(max(2.0, profile.outage_s)))
        if stack.receiver is not None
        else None
    )
    for name in stack.services:
        await stack.kill_and_restart(name)
        await asyncio.sleep(gap)
    await _replay(stack, profile, events, accepted[0])
    await stack.pause_broker(profile.outage_s)
    await asyncio.sleep(gap)
    await stack.pause_postgres(profile.outage_s)
    await asyncio.sleep(gap)
    if stack.sink is not None:
        await stack.fail_sink(profile.outage_s)
    if receiver is not None:
        await receiver


async def _replay(stack: Stack, profile: Profile, events: list[Envelope], accepted: int) -> None:
    """Send again, with the same ids, events ingest already accepted: a client's retry after
    a lost answer. Every consumer must count them once."""
    # The sender works through the list in order, two batches at a time.
    done = max(0, accepted - 2 * profile.batch)
    again = events[max(0, done - 300) : done]
    if not again:
        return
    report = await IngestSender(
        ingest_url=stack.url("ingest"), token=EMITTER_TOKEN, batch_size=profile.batch
    ).send(again)
    assert report.accepted == len(again), report
    stack.faults.append(f"{len(again)} accepted events sent again")


def _checks(
    stack: Stack, sim: Simulation, events: list[Envelope], tally: Tally
) -> dict[str, Check]:
    """The comparison of every running part with `tally`."""
    checks: dict[str, Check] = {"ingest": lambda: check_log(stack, sim, events)}
    if "limits" in stack.services:
        checks["limits"] = lambda: check_limits(stack, tally)
    if "reports" in stack.services:
        checks["reports"] = lambda: check_reports(stack, sim, tally)
    if "publisher" in stack.services:
        checks["publisher"] = lambda: check_publisher(stack, tally)
    return checks


def notify_config(tally: Tally, now: datetime) -> LimitsConfig:
    """A default limit that about half the users reach, in the period most of them spent in."""
    periods: tuple[Period, ...] = ("month", "week", "day")
    starts = period_starts(now)
    spends = {
        period: sorted(
            s for u in tally.user_ids() if (s := tally.spend(u, starts[period], now.date())) > 0
        )
        for period in periods
    }
    period = max(periods, key=lambda p: len(spends[p]))
    chosen = spends[period]
    limit = chosen[len(chosen) // 2] if chosen else 1_000_000
    return LimitsConfig(
        enabled=True, period=period, default_limit_micros=limit, warning_threshold_percent=85
    )


async def _arm_notifications(stack: Stack, config: LimitsConfig) -> str:
    """Put the limits configuration in force and register the receiver; returns its secret."""
    assert stack.receiver is not None
    async with aiohttp.ClientSession() as http:
        body: dict[str, Any] = {
            "enabled": config.enabled,
            "period": config.period,
            "default_limit_micros": config.default_limit_micros,
            "warning_threshold_percent": config.warning_threshold_percent,
        }
        async with http.put(
            f"{stack.url('limits')}/api/v1/limits/config", json=body, headers=admin_headers()
        ) as r:
            assert r.status == 200, await r.text()
        async with http.post(
            f"{stack.url('reports')}/api/v1/notifications/webhooks",
            json={"url": stack.receiver.url(), "description": "reliability"},
            headers=admin_headers(),
        ) as r:
            assert r.status == 201, await r.text()
            secret: str = (await r.json())["secret"]
    return secret


def _unsent(sim: Simulation) -> list[Envelope]:
    """A priced chat message and an agent-managed build of the first user that never went out."""
    user = sim.users[0].id
    now = sim.end
    return [
        ChatUsageRecorded(
            id=f"{user}-never-sent-chat",
            occurred_at=now,
            org_id=sim.config.org_id,
            user_id=user,
            data=ChatUsage(
                chat_id=f"{user}-never",
                message_id="m",
                model="o3",
                input_tokens=1_000,
                output_tokens=100,
            ),
        ),
        WorkspaceBuilt(
            id=f"{user}-never-sent-build",
            occurred_at=now,
            org_id=sim.config.org_id,
            user_id=user,
            data=WorkspaceBuild(workspace_id="w", build_id="b", template="t", agent_managed=True),
        ),
    ]


async def run(infra: Infra, workdir: Path) -> Outcome:
    """Start the stack, send under faults, compare every part; the stack is stopped after."""
    profile = Profile.from_env()
    started = time.monotonic()
    names = existing_services()
    assert "ingest" in names, "the fault run sends through ingest, which must exist"
    notify = "limits" in names and "reports" in names
    stack = await Stack.start(infra, workdir, names=names, notify=notify)
    try:
        sim = Simulation(
            SimulationConfig(
                seed=profile.seed,
                users=profile.users,
                days=profile.days,
                end=datetime.now(UTC),
            )
        )
        events: list[Envelope] = list(sim.events())
        tally = Tally(sim.prices)
        tally.observe_all(events)
        await register_prices(stack.url("ingest"), ADMIN_TOKEN, sim.prices)
        config = notify_config(tally, datetime.now(UTC)) if notify else None
        secret = await _arm_notifications(stack, config) if config is not None else ""
        accepted = [0]

        def count(n: int) -> None:
            accepted[0] += n

        sender = IngestSender(
            ingest_url=stack.url("ingest"),
            token=EMITTER_TOKEN,
            batch_size=profile.batch,
            rate=profile.rate,
            concurrency=2,
            give_up_after_s=profile.outage_s * 4 + 60,
            request_timeout_s=10,
            on_sent=count,
        )
        sending = asyncio.create_task(sender.send(events))
        await _faults(stack, profile, events, accepted)
        sent = await asyncio.wait_for(sending, profile.converge_s + len(events) / profile.rate)
        outcome = Outcome(profile, names, sent, len(events), list(stack.faults))
        if config is not None:
            # Before the limits check, which puts configurations of its own in force.
            expected = tally.notifications(
                datetime.now(UTC), config, admin_emails=[NOTIFY_ADMIN_EMAIL]
            )

            async def notifications() -> CheckResult:
                return await check_notifications(stack, expected, secret)

            result = await converge(notifications, timeout_s=profile.converge_s)
            assert isinstance(result, NotificationResult)
            outcome.notifications = result
            outcome.results["notifications"] = result
            outcome.notifications_control = await check_notifications(
                stack, expected, secret, extra=[("budget.warning", "nobody-spent-this")]
            )
        for part, check in _checks(stack, sim, events, tally).items():
            outcome.results[part] = await converge(check, timeout_s=profile.converge_s)
        # The same checks against totals with one event nobody sent must see it missing.
        extra = _unsent(sim)
        control = Tally(sim.prices)
        control.observe_all([*events, *extra])
        for part, check in _checks(stack, sim, [*events, *extra], control).items():
            outcome.controls[part] = await check()
        outcome.died = stack.unexpected_exits()
        outcome.restarts = dict(stack.restarts)
        outcome.seconds = time.monotonic() - started
        return outcome
    finally:
        await stack.stop()
