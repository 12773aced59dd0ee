"""Under kills, outages and a failing billing sink, every figure equals the simulator's totals."""

from __future__ import annotations

import pytest

from tests.reliability.scenario import Outcome
from tests.reliability.stack import SERVICES, existing_services, missing_reason

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]


def test_ingest_accepted_every_event_despite_the_faults(outcome: Outcome) -> None:
    """The simulator got every generated event accepted, resending through outages."""
    assert outcome.sent.rejected == []
    assert outcome.sent.accepted == outcome.generated


def test_every_fault_was_injected(outcome: Outcome) -> None:
    """Each service was killed once, events were resent, the broker and PostgreSQL paused."""
    kills = {f.removeprefix("SIGKILL ") for f in outcome.faults if f.startswith("SIGKILL ")}
    assert kills == set(outcome.services)
    assert any(f.startswith("broker paused") for f in outcome.faults)
    assert any(f.startswith("PostgreSQL paused") for f in outcome.faults)
    assert any(f.endswith("accepted events sent again") for f in outcome.faults)
    if "publisher" in outcome.services:
        assert any(f.startswith("billing sink refuse") for f in outcome.faults)
    if outcome.notifications is not None:
        assert any(f.startswith("webhook receiver fails") for f in outcome.faults)
        assert any(f.startswith("webhook receiver hangs") for f in outcome.faults)
        assert outcome.notifications.refused > 0, "no delivery met the failing receiver"


@pytest.mark.parametrize("part", SERVICES)
def test_figures_equal_the_expected_totals(outcome: Outcome, part: str) -> None:
    """The part's figures (the log behind ingest, limits, reports, billing) match exactly."""
    if part not in existing_services():
        pytest.skip(missing_reason(part))
    result = outcome.results[part]
    assert result.compared > 0, f"{part}: nothing was compared"
    assert result.ok, result.summary()


@pytest.mark.parametrize("part", SERVICES)
def test_the_checks_would_see_a_lost_event(outcome: Outcome, part: str) -> None:
    """Compared with totals holding one chat and one build never sent, every part differs."""
    if part not in existing_services():
        pytest.skip(missing_reason(part))
    control = outcome.controls[part]
    assert control.lost > 0 or control.differences, control.summary()


def test_nothing_lost_and_nothing_counted_twice(outcome: Outcome) -> None:
    """Across every part, zero events are lost and zero are counted twice."""
    lost = sum(r.lost for r in outcome.results.values())
    doubled = sum(r.doubled for r in outcome.results.values())
    assert (lost, doubled) == (0, 0), outcome.report()


def test_no_service_died_or_restarted_by_itself(outcome: Outcome) -> None:
    """Every service is running at the end, restarted only by the faults themselves."""
    assert outcome.died == []
    assert outcome.restarts == dict.fromkeys(outcome.services, 1)


def test_every_expected_notification_arrived_exactly_once_signed(outcome: Outcome) -> None:
    """Each notification the usage caused reached the receiver once, signed, and each email once."""
    result = outcome.notifications
    if result is None:
        pytest.skip("budget notifications need the limits and reports services")
    assert result.webhooks.expected > 0, result.summary()
    assert result.emails.expected > result.webhooks.expected, result.summary()
    for counts in (result.webhooks, result.emails):
        assert (counts.lost, counts.duplicated, counts.unexpected, counts.invalid) == (
            0,
            0,
            0,
            0,
        ), counts.line()
    assert result.ok, result.summary()


def test_the_notification_check_would_see_a_lost_one(outcome: Outcome) -> None:
    """Against an expected list holding one notification nobody caused, the check reports it lost."""
    control = outcome.notifications_control
    if control is None:
        pytest.skip("budget notifications need the limits and reports services")
    assert control.webhooks.lost == 1
    assert control.emails.lost == 1
    assert not control.ok
