"""One running system for the bad-input and security suite, with canary data to guard.

Every service that exists starts once for the package, on a database and topics of its
own. Before any attack, a small simulation (the canary) goes in through ingest and every
part's figures are checked against its expected totals; the aftermath tests check them
again at the end, so an attack that changed accepted data, or made a consumer stop,
shows as a difference. The aftermath tests always run last.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from libs.events.models import Envelope
from tests.reliability.checks import (
    CheckResult,
    check_limits,
    check_log,
    check_publisher,
    check_reports,
    converge,
)
from tests.reliability.stack import Stack, existing_services
from tests.support import ADMIN_TOKEN, EMITTER_TOKEN, Infra
from tools.simulator.expected import Tally
from tools.simulator.generate import Simulation, SimulationConfig
from tools.simulator.send import IngestSender, register_prices

#: Tokens that look real but are configured nowhere.
WRONG_TOKENS = (f"tok-{uuid.uuid4().hex}", ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1], "")


@dataclass
class Secured:
    """The running system under attack and what it held before the attacks began."""

    stack: Stack
    sim: Simulation
    tally: Tally
    canary: list[Envelope]
    pids: dict[str, int]
    emails: set[str] = field(default_factory=set)

    def url(self, name: str) -> str:
        """Base URL of a running service."""
        return self.stack.url(name)

    @property
    def services(self) -> list[str]:
        """The services running in this system."""
        return list(self.stack.services)

    async def figures(self, *, timeout_s: float = 60) -> dict[str, CheckResult]:
        """Every part's figures compared with the canary's expected totals."""
        stack, sim, tally = self.stack, self.sim, self.tally
        # Attacks put events of their own on the log; only the canary's are compared.
        checks = {"ingest": lambda: check_log(stack, sim, self.canary, only_these=False)}
        if "limits" in stack.services:
            checks["limits"] = lambda: check_limits(stack, tally)
        if "reports" in stack.services:
            checks["reports"] = lambda: check_reports(stack, sim, tally)
        if "publisher" in stack.services:
            checks["publisher"] = lambda: check_publisher(stack, tally)
        return {part: await converge(check, timeout_s=timeout_s) for part, check in checks.items()}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run `test_aftermath.py` after every other security test."""
    last = [i for i in items if i.nodeid.startswith("tests/security/test_aftermath.py")]
    if last:
        kept = [i for i in items if i not in last]
        security = [n for n, i in enumerate(kept) if i.nodeid.startswith("tests/security/")]
        at = security[-1] + 1 if security else len(kept)
        items[:] = kept[:at] + last + kept[at:]


@pytest.fixture(scope="package")
async def secured(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secured]:
    """The system with its canary data in place and verified."""
    names = existing_services()
    stack = await Stack.start(infra, tmp_path_factory.mktemp("security"), names=names)
    try:
        secured = await _seed(stack)
    except BaseException:
        await stack.stop()
        raise
    try:
        yield secured
    finally:
        await stack.stop()


async def _seed(stack: Stack) -> Secured:
    """Send the canary through ingest and check every part shows it exactly."""
    sim = Simulation(SimulationConfig(seed=5, users=4, days=3, end=datetime.now(UTC)))
    canary = list(sim.events())
    tally = Tally(sim.prices)
    tally.observe_all(canary)
    await register_prices(stack.url("ingest"), ADMIN_TOKEN, sim.prices)
    report = await IngestSender(ingest_url=stack.url("ingest"), token=EMITTER_TOKEN).send(canary)
    assert report.accepted == len(canary), report
    pids = {n: s.process.pid for n, s in stack.services.items() if s.process is not None}
    secured = Secured(stack, sim, tally, canary, pids, {u.email for u in sim.users})
    before = await secured.figures()
    failing = [r.summary() for r in before.values() if not r.ok]
    assert not failing, "the canary never showed correctly:\n" + "\n".join(failing)
    return secured
