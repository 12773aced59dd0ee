"""The expected totals: the same cost rule as ingest, periods, buckets, chargeback and billing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import orjson

from libs.events.models import (
    ActivitySession,
    ActivitySessionRecorded,
    ApiUsage,
    ApiUsageRecorded,
    ChatUsage,
    ChatUsageRecorded,
    DirectoryProject,
    DirectoryTeam,
    DirectoryUser,
    ProjectUpdated,
    StorageSample,
    StorageSampled,
    TeamUpdated,
    UserUpdated,
    WorkspaceBuild,
    WorkspaceBuilt,
)
from libs.events.pricing import ModelPrice, price_event
from tools.simulator.expected import Tally, bucket_starts, period_starts
from tools.simulator.generate import Simulation, SimulationConfig

PRICE = ModelPrice(
    input_price_per_million=Decimal("3.00"),
    output_price_per_million=Decimal("15.00"),
    cache_read_price_per_million=Decimal("0.30"),
    cache_write_price_per_million=Decimal("3.75"),
)
# "m" is priced; "x" and "other" are not, so the costs tests give are what counts for them.
PRICES = {"m": PRICE}
# A Wednesday.
NOW = datetime(2026, 11, 4, 12, 0, tzinfo=UTC)
NOTIFY_END = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)


def _chat(
    n: int,
    at: datetime,
    *,
    user: str = "u1",
    purpose: str = "chat",
    tokens: int = 1000,
    cost: int | None = None,
    model: str = "m",
    chat: str = "c1",
    root: str | None = None,
) -> ChatUsageRecorded:
    return ChatUsageRecorded(
        id=f"e{n}",
        occurred_at=at,
        user_id=user,
        data=ChatUsage(
            chat_id=chat,
            root_chat_id=root,
            message_id=f"m{n}",
            model=model,
            input_tokens=tokens,
            output_tokens=tokens // 10,
            cache_read_tokens=tokens * 2,
            cache_write_tokens=7,
            cost_micros=cost,
            purpose=purpose,
        ),
    )


def _session(
    n: int, at: datetime, minutes: float, category: str = "ide"
) -> ActivitySessionRecorded:
    return ActivitySessionRecorded(
        id=f"s{n}",
        occurred_at=at,
        user_id="u1",
        data=ActivitySession(
            category=category,
            duration_ms=int(minutes * 60_000),
        ),
    )


def test_cost_is_ingests_own_rule() -> None:
    """The tally's cost of each simulated chat equals what ingest stamps on it."""
    sim = Simulation(SimulationConfig(seed=11, users=8, days=3, end=NOW))
    tally = Tally(sim.prices)
    for event in sim.events():
        if isinstance(event, ChatUsageRecorded):
            assert tally.cost_of(event) == price_event(event, sim.prices).data.cost_micros


def test_emitter_cost_is_kept_and_unknown_models_are_unpriced() -> None:
    """An unpriced model's emitter cost counts; without one it is unpriced, cost 0."""
    tally = Tally(PRICES)
    tally.observe(_chat(1, NOW, cost=55, model="other"))
    tally.observe(_chat(2, NOW, model="unknown"))
    costs = tally.costs(NOW.date(), NOW.date())["u1"]
    assert costs["total_cost_micros"] == 55
    assert costs["priced_message_count"] == 1
    assert costs["unpriced_message_count"] == 1


def test_title_generation_never_counts() -> None:
    """Title-generation usage is left out of limits and cost figures."""
    tally = Tally(PRICES)
    tally.observe(_chat(1, NOW, purpose="title"))
    assert tally.limits(NOW)["spent_micros"] == {}
    assert tally.costs(NOW.date(), NOW.date()) == {}
    assert tally.title_messages == 1


def test_limits_periods_start_at_midnight_monday_and_the_first() -> None:
    """Spend is summed over the UTC day, the week from Monday and the month from the 1st."""
    tally = Tally(PRICES)
    tally.observe(_chat(1, NOW, cost=1, model="other"))
    tally.observe(_chat(2, NOW - timedelta(days=1), cost=10, model="other"))  # Tuesday
    tally.observe(
        _chat(3, NOW - timedelta(days=2, hours=12), cost=100, model="other")
    )  # Monday 00:00
    tally.observe(
        _chat(4, NOW - timedelta(days=2, hours=12, seconds=1), cost=1_000, model="other")
    )  # Sunday
    tally.observe(_chat(5, datetime(2026, 10, 31, 23, 59, tzinfo=UTC), cost=10_000, model="other"))
    limits = tally.limits(NOW)
    assert limits["spent_micros"]["u1"] == {"day": 1, "week": 111, "month": 1_111}
    assert period_starts(NOW) == {
        "day": date(2026, 11, 4),
        "week": date(2026, 11, 2),
        "month": date(2026, 11, 1),
    }


def test_costs_roll_up_by_model_and_root_chat() -> None:
    """The per-user rollup counts chats, and `by_chat` folds sub-chats into their root."""
    tally = Tally(PRICES)
    tally.observe(_chat(1, NOW, cost=5, chat="root", model="y"))
    tally.observe(_chat(2, NOW, cost=7, chat="child", root="root", model="y"))
    tally.observe(_chat(3, NOW, cost=11, chat="other", model="x"))
    user = tally.costs(NOW.date(), NOW.date())["u1"]
    assert user["total_cost_micros"] == 23
    assert user["message_count"] == 3
    assert user["chat_count"] == 2
    assert user["distinct_chat_ids"] == 3
    assert user["by_chat"]["root"]["total_cost_micros"] == 12
    assert user["by_model"]["y"]["total_cost_micros"] == 12
    assert user["by_model"]["x"]["message_count"] == 1


def test_a_session_over_midnight_splits_its_duration_by_overlap() -> None:
    """A session spanning a bucket edge adds its overlap to each bucket, its count to the first."""
    tally = Tally(PRICES)
    start = datetime(2026, 11, 2, tzinfo=UTC)
    tally.observe(_session(1, start + timedelta(hours=23), 90))
    tally.observe(_session(2, start + timedelta(hours=30), 10, category="login"))
    answer = tally.activity(start, start + timedelta(days=3), "1 day")
    rows = [b["user_activity"] for b in answer["activity"]]
    assert rows[0] == [{"user_id": "u1", "duration": 3_600_000, "count": 1}]
    assert rows[1] == [{"user_id": "u1", "duration": 2_400_000, "count": 1}]
    assert rows[2] == []
    assert answer["users"]["u1"]["total_duration"] == 6_000_000
    assert answer["users"]["u1"]["total_count"] == 2
    ide = tally.activity(start, start + timedelta(days=3), "1 day", category="ide")
    assert ide["users"]["u1"]["total_count"] == 1


def test_sessions_outside_the_range_are_clipped() -> None:
    """Only the part of a session inside `[start, end)` counts; its count only if it starts there."""
    tally = Tally(PRICES)
    start = datetime(2026, 11, 2, tzinfo=UTC)
    tally.observe(_session(1, start - timedelta(minutes=30), 60))
    answer = tally.activity(start, start + timedelta(days=1), "1 day")
    assert answer["activity"][0]["user_activity"] == [
        {"user_id": "u1", "duration": 1_800_000, "count": 0}
    ]


def test_bucket_starts_follow_the_calendar_for_months_and_years() -> None:
    """Monthly buckets keep the day of month where it exists; fixed intervals step evenly."""
    jan31 = datetime(2026, 1, 31, tzinfo=UTC)
    months = bucket_starts(jan31, datetime(2026, 5, 1, tzinfo=UTC), "1 month")
    assert [m.date() for m in months] == [
        date(2026, 1, 31),
        date(2026, 2, 28),
        date(2026, 3, 31),
        date(2026, 4, 30),
    ]
    weeks = bucket_starts(jan31, jan31 + timedelta(days=15), "1 week")
    assert len(weeks) == 3
    assert len(bucket_starts(jan31, jan31 + timedelta(days=800), "1 year")) == 3
    assert len(bucket_starts(jan31, jan31 + timedelta(days=181), "90 day")) == 3


def test_chargeback_uses_the_latest_sample_and_the_months_usage() -> None:
    """Sizes come from each project's latest sample of the month; counts and cost add up."""
    tally = Tally(PRICES)
    created = datetime(2025, 1, 1, tzinfo=UTC)
    for user, licensed in (("u1", True), ("u2", False)):
        tally.observe(
            UserUpdated(
                id=f"d-{user}",
                occurred_at=created,
                user_id=user,
                data=DirectoryUser(
                    username=user,
                    name=user.upper(),
                    email=f"{user}@example.com",
                    roles=("member",),
                    created_at=created,
                    licensed=licensed,
                ),
            )
        )
    tally.observe(
        TeamUpdated(
            id="t",
            occurred_at=created,
            data=DirectoryTeam(team_id="t1", name="Team", member_ids=("u1", "u2")),
        )
    )
    tally.observe(
        ProjectUpdated(
            id="p",
            occurred_at=created,
            data=DirectoryProject(project_id="p1", team_id="t1", name="Proj"),
        )
    )
    for n, (day, size) in enumerate(((3, 10.5), (20, 30.25), (2, 99.0))):
        tally.observe(
            StorageSampled(
                id=f"st{n}",
                occurred_at=datetime(2026, 11, day, tzinfo=UTC),
                data=StorageSample(project_id="p1", size_mb=size, experiment_count=day),
            )
        )
    for n, client in enumerate(("ui", "ui", "sdk")):
        tally.observe(
            ApiUsageRecorded(
                id=f"a{n}",
                occurred_at=datetime(2026, 11, 2 + n, tzinfo=UTC),
                user_id="u1",
                data=ApiUsage(client=client, count=5),
            )
        )
    tally.observe(_chat(1, datetime(2026, 11, 3, tzinfo=UTC), cost=40, model="x"))
    tally.observe(_chat(2, datetime(2026, 11, 3, tzinfo=UTC), cost=2, model="x", user="u2"))
    tally.observe(_chat(3, datetime(2026, 10, 3, tzinfo=UTC), cost=1_000, model="x"))
    for n, agent in enumerate((True, False, True)):
        tally.observe(
            WorkspaceBuilt(
                id=f"b{n}",
                occurred_at=datetime(2026, 11, 5, tzinfo=UTC),
                user_id="u1",
                data=WorkspaceBuild(
                    workspace_id="w", build_id=f"b{n}", template="t", agent_managed=agent
                ),
            )
        )
    report = tally.chargeback("2026-11")
    team = report["workspaces"][0]
    assert team["totalSizeInMb"] == 30.25
    assert team["numberOfExperiments"] == 20
    assert team["numberOfMembers"] == 2
    assert team["llm_cost_micros"] == 42
    assert team["agent_builds"] == 2
    users = report["users"]["licensedUsers"]
    assert [u["username"] for u in users] == ["u1"]
    assert users[0]["uiUsageCount"] == 10
    assert users[0]["sdkUsageCount"] == 5
    assert users[0]["uiUsageUpdateTs"] == int(datetime(2026, 11, 3, tzinfo=UTC).timestamp() * 1000)
    assert users[0]["llm_cost_micros"] == 40
    assert tally.billing() == {"dc_managed_agents_v1": 2, "source_event_ids": ["b0", "b2"]}


def test_snapshot_is_json_ready() -> None:
    """The whole expected document of a simulation serialises with orjson, its cost window in the API's exclusive form."""
    sim = Simulation(SimulationConfig(seed=4, users=5, days=3, end=NOW))
    tally = Tally(sim.prices)
    tally.observe_all(sim.events())
    document = tally.snapshot(now=NOW, start=sim.start, end=sim.end)
    decoded = orjson.loads(orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS))
    assert decoded["summary"]["events"] == tally.events
    assert set(decoded) == {
        "summary",
        "prices",
        "limits",
        "costs",
        "activity",
        "chargeback",
        "billing",
        "agent_time",
    }
    hours = decoded["agent_time"]["hours"]
    assert len(hours) == 2 * 24 + 12
    assert next(iter(hours)) == "hb_agent_runtime_v1:2026-11-02_00:00:00"
    assert decoded["agent_time"]["total_runtime_ms"] == sum(hours.values()) > 0
    spent = decoded["limits"]["spent_micros"]
    assert sum(u["month"] for u in spent.values()) > 0
    # The cost window is written as the cost API takes it: the end date is exclusive.
    assert decoded["costs"]["start_date"] == sim.start.date().isoformat()
    assert decoded["costs"]["end_date"] == (sim.end.date() + timedelta(days=1)).isoformat()


def test_agent_time_sums_runtime_per_utc_hour_and_reports_idle_hours_as_zero() -> None:
    """Runtime of chat messages goes to the hour they occurred in; other hours are 0."""
    tally = Tally(PRICES)
    base = datetime(2026, 11, 2, 9, tzinfo=UTC)
    for n, (minutes, runtime) in enumerate([(0, 1_000), (59, 2_000), (61, 500)]):
        event = _chat(n, base + timedelta(minutes=minutes))
        tally.observe(
            event.model_copy(update={"data": event.data.model_copy(update={"runtime_ms": runtime})})
        )
    tally.observe(_chat(9, base, purpose="title"))
    hours = tally.agent_time(base - timedelta(minutes=30), base + timedelta(hours=2))
    assert hours == {
        "hb_agent_runtime_v1:2026-11-02_08:00:00": 0,
        "hb_agent_runtime_v1:2026-11-02_09:00:00": 3_000,
        "hb_agent_runtime_v1:2026-11-02_10:00:00": 500,
    }
    assert tally.costs(base.date(), base.date())["u1"]["total_runtime_ms"] == 3_500


def test_reasoning_tokens_are_shown_but_never_add_to_the_cost() -> None:
    """A message with reasoning costs what its output costs; the reasoning total is its own."""
    tally = Tally(PRICES)
    plain = _chat(1, NOW)
    tally.observe(plain)
    reasoning = _chat(2, NOW)
    tally.observe(
        reasoning.model_copy(
            update={"data": reasoning.data.model_copy(update={"reasoning_tokens": 60})}
        )
    )
    totals = tally.costs(NOW.date(), NOW.date())["u1"]
    assert totals["total_cost_micros"] == 2 * tally.cost_of(plain)  # type: ignore[operator]
    assert totals["total_reasoning_tokens"] == 60
    assert totals["by_model"]["m"]["total_reasoning_tokens"] == 60


def test_expected_notifications_follow_the_limit_priority_and_the_email_rule() -> None:
    """Users past 85 % get a warning, past the limit both; a group override applies; admins are emailed."""
    from services.limits.domain import LimitsConfig  # noqa: PLC0415  # only this test needs it

    sim = Simulation(SimulationConfig(seed=4, users=12, days=10, end=NOTIFY_END))
    tally = Tally(sim.prices)
    tally.observe_all(sim.events())
    start = datetime(2026, 11, 1, tzinfo=UTC).date()
    spends = sorted(tally.spend(u, start, NOTIFY_END.date()) for u in tally.user_ids())
    limit = spends[len(spends) // 2]
    group_id = next(iter(tally.groups))
    config = LimitsConfig(
        enabled=True,
        default_limit_micros=limit,
        group_overrides={group_id: 10**12},
        warning_threshold_percent=85,
    )
    doc = tally.notifications(NOTIFY_END, config, admin_emails=["ops@example.com"])
    by_user: dict[str, list[str]] = {}
    for item in doc["notifications"]:
        by_user.setdefault(item["user_id"], []).append(item["type"])
    assert by_user, "some users must cross the median limit"
    for user in tally.user_ids():
        spent = tally.spend(user, start, NOTIFY_END.date())
        in_group = group_id in tally.groups_of(user)
        effective = 10**12 if in_group else limit
        want = [
            k
            for k, t in (
                ("budget.warning", effective * 85),
                ("budget.limit_reached", effective * 100),
            )
            if spent * 100 >= t
        ]
        assert by_user.get(user, []) == want, user
    owner = next(u for u in sim.users if "owner" in u.roles)
    for item in doc["notifications"]:
        mails = [
            m for m in doc["emails"] if (m["type"], m["user_id"]) == (item["type"], item["user_id"])
        ]
        to = {m["to"] for m in mails}
        assert "ops@example.com" in to
        assert (owner.email in to) == (item["user_id"] != owner.id and not owner.suspended)
