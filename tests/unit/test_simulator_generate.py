"""The simulator's generator: deterministic, valid, realistic, and never in the future."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from libs.events.codec import decode, encode
from libs.events.models import (
    ActivitySessionRecorded,
    ChatUsageRecorded,
    Envelope,
    StorageSampled,
    WorkspaceBuilt,
)
from tools.simulator.catalog import PROVIDER_BILLED_MODEL
from tools.simulator.generate import Simulation, SimulationConfig, window

END = datetime(2026, 11, 4, 15, 30, 12, 345_678, tzinfo=UTC)


def _events(seed: int = 7, users: int = 12, days: int = 10, end: datetime = END) -> list[Envelope]:
    return list(Simulation(SimulationConfig(seed=seed, users=users, days=days, end=end)).events())


def test_same_seed_gives_identical_events() -> None:
    """Two simulations with the same seed, size and end produce byte-identical events."""
    assert [encode(e) for e in _events()] == [encode(e) for e in _events()]


def test_different_seeds_never_share_ids() -> None:
    """Ids carry the seed, so simulations with different seeds never collide."""
    first = {e.id for e in _events(seed=1)}
    second = {e.id for e in _events(seed=2)}
    assert first.isdisjoint(second)


def test_ids_are_unique_and_users_are_named_by_seed() -> None:
    """Every event id is unique and user ids look like `sim-<seed>-u0001`."""
    events = _events(seed=42)
    assert len({e.id for e in events}) == len(events)
    users = {e.user_id for e in events if e.user_id is not None}
    assert "sim-42-u0001" in users
    assert all(u.startswith("sim-42-u") for u in users)


def test_a_day_is_the_same_whatever_was_generated_before() -> None:
    """Each day is drawn from its own seeded generator, independent of generation order."""
    sim = Simulation(SimulationConfig(seed=3, users=5, days=6, end=END))
    late_first = [encode(e) for e in sim.day_events(4)]
    for day in range(4):
        sim.day_events(day)
    assert [encode(e) for e in sim.day_events(4)] == late_first


def test_nothing_is_in_the_future_or_before_the_window() -> None:
    """All usage lies between midnight of the first day and the end, sessions included."""
    config = SimulationConfig(seed=5, users=15, days=8, end=END)
    start, end = window(config)
    assert config.end == END.replace(microsecond=345_000)
    for event in Simulation(config).events():
        assert event.occurred_at <= end
        if isinstance(event, ActivitySessionRecorded):
            assert event.occurred_at >= start
            assert event.occurred_at + timedelta(milliseconds=event.data.duration_ms) <= end
        elif event.type.startswith("directory."):
            assert event.occurred_at < start
        else:
            assert event.occurred_at >= start


def test_every_event_survives_the_wire_codec() -> None:
    """Encoding and decoding each generated event gives it back unchanged."""
    for event in _events(users=6, days=4):
        assert decode(encode(event)) == event


def test_days_are_sorted_by_time() -> None:
    """Usage comes a day at a time in time order, after the directory."""
    events = _events()
    usage = [e for e in events if not e.type.startswith("directory.")]
    assert events[: len(events) - len(usage)] == [
        e for e in events if e.type.startswith("directory.")
    ]
    times = [e.occurred_at for e in usage]
    assert times == sorted(times)


def test_the_mix_covers_every_kind_of_usage() -> None:
    """The generated usage has every type, titles, sub-chats, agent builds and late sessions."""
    events = _events(users=30, days=14)
    types = Counter(e.type for e in events)
    assert set(types) == {
        "activity.session.v1",
        "api.usage.v1",
        "chat.usage.v1",
        "directory.group.v1",
        "directory.project.v1",
        "directory.team.v1",
        "directory.user.v1",
        "storage.sample.v1",
        "workspace.build.v1",
    }
    chats = [e for e in events if isinstance(e, ChatUsageRecorded)]
    assert any(c.data.purpose == "title" for c in chats)
    assert any(c.data.root_chat_id is not None for c in chats)
    assert any(c.data.cache_read_tokens > 0 for c in chats)
    assert any(c.data.model == PROVIDER_BILLED_MODEL and c.data.cost_micros for c in chats)
    assert all(c.data.cost_micros is None for c in chats if c.data.model != PROVIDER_BILLED_MODEL)
    assert len({c.data.model for c in chats}) >= 5
    agent = [c for c in chats if c.data.runtime_ms is not None]
    assert agent
    assert any(c.data.runtime_ms is None and c.data.purpose == "chat" for c in chats)
    assert all(c.data.purpose == "chat" for c in agent)
    assert all(200 <= (c.data.runtime_ms or 0) <= 15 * 60_000 for c in agent)
    # A chat is an agent chat or not as a whole: all its messages have runtime, or none does.
    assert len(
        {(c.data.chat_id, c.data.runtime_ms is None) for c in chats if c.data.purpose == "chat"}
    ) == len({c.data.chat_id for c in chats if c.data.purpose == "chat"})
    reasoning = [c for c in chats if c.data.reasoning_tokens is not None]
    assert reasoning
    assert all(0 <= (c.data.reasoning_tokens or 0) <= c.data.output_tokens for c in reasoning)
    builds = [e for e in events if isinstance(e, WorkspaceBuilt)]
    assert any(b.data.agent_managed for b in builds)
    assert any(not b.data.agent_managed for b in builds)
    sessions = [e for e in events if isinstance(e, ActivitySessionRecorded)]
    assert {s.data.category for s in sessions} == {"ide", "login", "app", "tunnel", "web_terminal"}
    assert any(
        (s.occurred_at + timedelta(milliseconds=s.data.duration_ms)).date() > s.occurred_at.date()
        for s in sessions
    ), "some sessions run past midnight"
    assert any(isinstance(e, StorageSampled) for e in events)


def test_every_team_has_members_and_every_user_one_team() -> None:
    """Teams partition the users, so per-team chargeback figures add up to the users'."""
    sim = Simulation(SimulationConfig(seed=9, users=20, days=1, end=END))
    members = [m for _, _, team in sim.teams for m in team]
    assert sorted(members) == sorted(u.id for u in sim.users)
    assert all(team for _, _, team in sim.teams)


@pytest.mark.parametrize(("users", "days"), [(0, 1), (1, 0)])
def test_a_simulation_needs_users_and_days(users: int, days: int) -> None:
    """An empty simulation is refused at configuration time."""
    with pytest.raises(ValueError, match="at least one"):
        SimulationConfig(seed=1, users=users, days=days, end=END)


def test_end_must_be_timezone_aware() -> None:
    """A naive end time is refused rather than guessed."""
    with pytest.raises(ValueError, match="timezone"):
        SimulationConfig(seed=1, end=datetime(2026, 1, 1))  # noqa: DTZ001
