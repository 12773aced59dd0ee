"""Reports' pure rules: times, buckets, covering a range with rollup periods, report shapes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.events.bounds import MAX_SIZE_MB, MAX_TOTAL
from services.reports.domain import (
    ACTIVITY_GRAINS,
    COST_DETAIL_GRAINS,
    COST_TOTAL_GRAINS,
    Bucket,
    BucketActivity,
    ChargebackData,
    Grain,
    InvalidQueryError,
    ProjectState,
    TeamState,
    UsageMonth,
    UserProfile,
    activity_body,
    add_months,
    chargeback_body,
    cover,
    make_buckets,
    parse_category,
    parse_interval,
    parse_month,
    parse_time,
)


def utc(*parts: int) -> datetime:
    year, month, day, hour, minute, second, us = (*parts, 0, 0, 0, 0)[:7]
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2022-08-01T00:00:00.000000Z", utc(2022, 8, 1)),
        ("2022-08-01T02:00:00+02:00", utc(2022, 8, 1)),
        ("2022-08-01T02:00:00 02:00", utc(2022, 8, 1)),
        ("2022-08-01", utc(2022, 8, 1)),
        ("2022-08-01T10:15:30.5Z", utc(2022, 8, 1, 10, 15, 30, 500_000)),
    ],
)
def test_times_parse_to_utc(raw: str, expected: datetime) -> None:
    """RFC 3339 times (and a `+` lost to query-string decoding) and bare dates become UTC."""
    assert parse_time("start", raw) == expected


@pytest.mark.parametrize("raw", ["yesterday", "2022-08-01T00:00:00", "1690848000", "2022-13-01"])
def test_bad_times_name_the_parameter(raw: str) -> None:
    """A time without a timezone, a number or garbage is refused with the parameter's name."""
    with pytest.raises(InvalidQueryError) as err:
        parse_time("start", raw)
    assert err.value.field == "start"
    assert err.value.message.startswith("start: ")


def test_intervals_and_categories_accept_coders_spellings() -> None:
    """The five intervals (plural and case tolerated) and the six categories are accepted."""
    assert parse_interval("1 week").days == 7
    assert parse_interval(" 90 Days ").days == 90
    assert parse_interval("1 month").months == 1
    assert parse_interval("1 year").months == 12
    assert parse_category("any") == "*"
    assert parse_category("web_terminal") == "web_terminal"
    with pytest.raises(InvalidQueryError, match="interval"):
        parse_interval("2 weeks")
    with pytest.raises(InvalidQueryError, match="category"):
        parse_category("ssh")


def test_week_buckets_start_at_start_and_the_last_is_cut_at_end() -> None:
    """Coder's example: August by week gives five buckets, the last one three days long."""
    buckets = make_buckets(utc(2022, 8, 1), utc(2022, 9, 1), parse_interval("1 week"))
    assert [b.start.day for b in buckets] == [1, 8, 15, 22, 29]
    assert buckets[0].duration_ms == 7 * 86_400_000
    assert buckets[-1].end == utc(2022, 9, 1)
    assert buckets[-1].duration_ms == 3 * 86_400_000


def test_month_buckets_keep_the_day_without_drifting() -> None:
    """From January 31st, months end on the last day of short months and return to the 31st."""
    buckets = make_buckets(utc(2024, 1, 31), utc(2024, 6, 1), parse_interval("1 month"))
    assert [b.start.date().isoformat() for b in buckets] == [
        "2024-01-31",
        "2024-02-29",
        "2024-03-31",
        "2024-04-30",
        "2024-05-31",
    ]
    assert add_months(utc(2023, 1, 31), 1) == utc(2023, 2, 28)


def test_bucket_limits_are_clear_errors() -> None:
    """End before start, an empty range and more than 10,000 buckets are refused."""
    day = parse_interval("1 day")
    with pytest.raises(InvalidQueryError, match="before start"):
        make_buckets(utc(2024, 2, 1), utc(2024, 1, 1), day)
    with pytest.raises(InvalidQueryError, match="empty"):
        make_buckets(utc(2024, 1, 1), utc(2024, 1, 1), day)
    with pytest.raises(InvalidQueryError, match="10000 buckets"):
        make_buckets(utc(1990, 1, 1), utc(2024, 1, 1), day)
    assert len(make_buckets(utc(2000, 1, 1), utc(2000, 1, 1) + timedelta(days=10_000), day)) == (
        10_000
    )


def test_month_parameter_is_yyyy_mm() -> None:
    """`reportMonth` takes YYYY-MM and nothing else."""
    assert parse_month("2026-02") == utc(2026, 2, 1)
    for bad in ("2026-2", "2026-13", "2026-02-01", "Feb 2026"):
        with pytest.raises(InvalidQueryError, match="reportMonth"):
            parse_month(bad)


# Hypothesis takes naive bounds and attaches the timezone itself.
_times = st.datetimes(
    min_value=datetime(2023, 1, 1),  # noqa: DTZ001
    max_value=datetime(2025, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@settings(max_examples=300, deadline=None)
@given(
    _times,
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=500)),
    st.sampled_from([ACTIVITY_GRAINS, COST_TOTAL_GRAINS, COST_DETAIL_GRAINS]),
)
def test_cover_is_exact_disjoint_and_aligned(
    start: datetime, length: timedelta, grains: frozenset[Grain]
) -> None:
    """Spans tile [start, end) exactly; rollup spans are whole periods; `x` spans are short edges."""
    end = start + length
    spans = cover(start, end, grains)
    if length == timedelta(0):
        assert spans == []
        return
    assert spans[0].lo == start
    assert spans[-1].hi == end
    finest = timedelta(hours=1) if "h" in grains else timedelta(days=1)
    for a, b in itertools.pairwise(spans):
        assert a.hi == b.lo
        assert a.grain != b.grain or a.grain == "x"
    for i, span in enumerate(spans):
        assert span.lo < span.hi
        if span.grain == "x":
            assert i in (0, 1, len(spans) - 2, len(spans) - 1)
            assert span.hi - span.lo < finest
            assert span.lo.date() == (span.hi - timedelta(microseconds=1)).date()
            continue
        assert span.grain in grains
        assert span.lo.minute == span.lo.second == span.lo.microsecond == 0
        if span.grain != "h":
            assert span.lo.hour == 0
            assert span.hi.hour == 0
        if span.grain == "w":
            assert span.lo.weekday() == 0
            assert (span.hi - span.lo) % timedelta(days=7) == timedelta(0)
        if span.grain == "m":
            assert span.lo.day == 1
            assert span.hi.day == 1


def test_cover_prefers_months_and_weeks() -> None:
    """A year from a Monday reads months where whole months fit and weeks or days around them."""
    spans = cover(utc(2024, 1, 1), utc(2025, 1, 1), ACTIVITY_GRAINS)
    assert [(s.grain, s.lo, s.hi) for s in spans] == [("m", utc(2024, 1, 1), utc(2025, 1, 1))]
    spans = cover(utc(2024, 1, 3, 10, 30), utc(2024, 3, 20), ACTIVITY_GRAINS)
    assert [s.grain for s in spans] == ["x", "d", "w", "d", "m", "d", "w", "d"]
    assert spans[0].hi == utc(2024, 1, 4)
    spans = cover(utc(2024, 1, 3, 10, 30), utc(2024, 1, 3, 18, 0, 0, 1), COST_TOTAL_GRAINS)
    assert [s.grain for s in spans] == ["x", "h", "x"]


def _profile(user_id: str, username: str, *, licensed: bool = True) -> UserProfile:
    return UserProfile(
        user_id=user_id,
        username=username,
        name=username.title(),
        email=f"{username}@example.com",
        roles=("site-member",),
        avatar_hash="ab" * 32,
        created_at=utc(2021, 4, 20, 8, 52, 7, 532_000),
        suspended=False,
        licensed=licensed,
    )


def test_activity_body_has_coders_shape_in_milliseconds() -> None:
    """Buckets carry time, duration and user_activity; users carry profile and totals."""
    buckets = [Bucket(utc(2022, 8, 1), utc(2022, 8, 8)), Bucket(utc(2022, 8, 8), utc(2022, 8, 9))]
    body = activity_body(
        buckets,
        [
            BucketActivity.of({"u2": (2_500, 3), "u1": (72_000_000_000, 1200), "u3": (0, 0)}),
            BucketActivity.of({"u1": (1_000, 0)}),
        ],
        {"u1": _profile("u1", "joe2")},
    )
    assert body["activity"] == [
        {
            "time": utc(2022, 8, 1),
            "duration": 604_800_000,
            "user_activity": [
                {"user_id": "u1", "duration": 72_000_000, "count": 1200},
                {"user_id": "u2", "duration": 2, "count": 3},
            ],
        },
        {
            "time": utc(2022, 8, 8),
            "duration": 86_400_000,
            "user_activity": [{"user_id": "u1", "duration": 1, "count": 0}],
        },
    ]
    assert body["users"] == {
        "u1": {
            "id": "u1",
            "name": "Joe2",
            "username": "joe2",
            "roles": ["site-member"],
            "avatar_hash": "ab" * 32,
            "total_count": 1200,
            "total_duration": 72_000_001,
        },
        "u2": {
            "id": "u2",
            "name": "",
            "username": "",
            "roles": [],
            "avatar_hash": None,
            "total_count": 3,
            "total_duration": 2,
        },
    }


def test_chargeback_body_is_comets_format_with_llm_cost_and_agent_builds() -> None:
    """Workspaces sum their projects and members; licensed users carry UI/SDK usage and cost."""
    data = ChargebackData(
        teams=[TeamState("t1", "workspace 1", ("u1", "u2"))],
        projects=[
            ProjectState("p1", "t1", "some project name", 0.01, 1, "u1"),
            ProjectState("p2", "t1", "other", 2.5, 4, None),
            ProjectState("p3", "t-gone", "orphan", 9.0, 9, "u1"),
        ],
        profiles={"u1": _profile("u1", "some user"), "u2": _profile("u2", "b", licensed=False)},
        usage={
            "u1": UsageMonth(ui_calls=3, ui_last=utc(2021, 3, 5), cost_micros=700, agent_builds=2),
            "u2": UsageMonth(cost_micros=300, builds=4, agent_builds=1),
        },
    )
    body = chargeback_body(utc(2021, 3, 1), data, utc(2021, 4, 20, 8, 52, 7, 587_000))
    assert body["reportDate"] == "2021-03"
    workspaces = body["workspaces"]
    assert isinstance(workspaces, list)
    [workspace] = workspaces
    assert workspace["name"] == "workspace 1"
    assert workspace["numberOfMembers"] == 2
    assert workspace["totalSizeInMb"] == 2.51
    assert workspace["numberOfExperiments"] == 5
    assert workspace["llmCostMicros"] == 1000
    assert workspace["agentBuilds"] == 3
    assert workspace["members"][0] == {
        "userId": "u2",
        "userName": "b",
        "email": "b@example.com",
        "numberOfExperiments": 0,
        "totalSizeInMb": 0.0,
        "llmCostMicros": 300,
        "agentBuilds": 1,
    }
    assert workspace["members"][1]["numberOfExperiments"] == 1
    assert [p["name"] for p in workspace["projects"]] == ["other", "some project name"]
    assert body["users"] == {
        "licensedUsers": [
            {
                "userId": "u1",
                "username": "some user",
                "email": "some user@example.com",
                "created_at": 1618908727532,
                "uiUsageCount": 3,
                "uiUsageUpdateTs": 1614902400000,
                "sdkUsageCount": 0,
                "sdkUsageUpdateTs": 0,
                "suspended": False,
                "llmCostMicros": 700,
                "agentBuilds": 2,
            }
        ],
        "numberOfUsers": 1,
        "createdAt": 1618908727587,
    }


def test_cover_and_buckets_reach_the_ends_of_the_calendar() -> None:
    """Ranges at year 1 and year 9999 are covered without overflowing the calendar."""
    end = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    spans = cover(utc(9999, 10, 13, 5), end, ACTIVITY_GRAINS)
    assert spans[0].lo == utc(9999, 10, 13, 5)
    assert spans[-1].hi == end
    assert "m" in {s.grain for s in spans}
    buckets = make_buckets(utc(9999, 1, 31), end, parse_interval("1 month"))
    assert len(buckets) == 12
    assert buckets[-1].end == end
    assert cover(utc(1, 1, 1), utc(1, 3, 1), COST_TOTAL_GRAINS)[0].grain == "m"


def test_chargeback_sums_stay_finite_and_exact_over_values_stored_before_the_bounds() -> None:
    """Sizes of 1e308 (stored before they were refused) and totals at the cap never break the report."""
    data = ChargebackData(
        teams=[TeamState("t1", "team", ("u1", "u2"))],
        projects=[
            ProjectState("p1", "t1", "a", 1e308, MAX_TOTAL, "u1"),
            ProjectState("p2", "t1", "b", 1e308, MAX_TOTAL, "u1"),
            ProjectState("p3", "t1", "c", float("nan"), 1, "u2"),
        ],
        profiles={"u1": _profile("u1", "a"), "u2": _profile("u2", "b")},
        usage={
            "u1": UsageMonth(cost_micros=MAX_TOTAL, agent_builds=MAX_TOTAL),
            "u2": UsageMonth(cost_micros=MAX_TOTAL),
        },
    )
    body = chargeback_body(utc(2021, 3, 1), data, utc(2021, 4, 1))
    encoded = orjson.dumps(body)
    [workspace] = orjson.loads(encoded)["workspaces"]
    assert workspace["totalSizeInMb"] == 2 * MAX_SIZE_MB
    assert workspace["numberOfExperiments"] == MAX_TOTAL
    assert workspace["llmCostMicros"] == MAX_TOTAL
    assert workspace["agentBuilds"] == MAX_TOTAL
    owner = next(m for m in workspace["members"] if m["userId"] == "u1")
    assert owner["totalSizeInMb"] == 2 * MAX_SIZE_MB
