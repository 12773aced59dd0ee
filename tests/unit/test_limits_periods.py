"""UTC period math of the limits service: Monday weeks, month ends, leap years, midnights."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.events.vocabulary import PERIODS, Period
from services.limits.domain import (
    DAY,
    MONTH,
    WEEK,
    Calendar,
    CurrentPeriod,
    Ledger,
    day_number,
    period_bounds,
    period_key,
)


def utc(*parts: int) -> datetime:
    """A UTC datetime."""
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type, misc]


@pytest.mark.parametrize(
    ("at", "start", "end"),
    [
        # 2026-11-01 is a Sunday: its week began on Monday 26 October.
        (utc(2026, 11, 1, 23, 59, 59), utc(2026, 10, 26), utc(2026, 11, 2)),
        (utc(2026, 11, 2), utc(2026, 11, 2), utc(2026, 11, 9)),
        (utc(2026, 11, 4, 12), utc(2026, 11, 2), utc(2026, 11, 9)),
        # A week that spans a year end.
        (utc(2027, 1, 1, 8), utc(2026, 12, 28), utc(2027, 1, 4)),
        # The week of 1970-01-01 (a Thursday) began in 1969.
        (utc(1970, 1, 1), utc(1969, 12, 29), utc(1970, 1, 5)),
    ],
)
def test_weeks_start_on_monday(at: datetime, start: datetime, end: datetime) -> None:
    """A week runs from Monday 00:00 UTC to the next Monday, across month and year ends."""
    assert period_bounds("week", at) == (start, end)
    assert start.weekday() == 0


@pytest.mark.parametrize(
    ("at", "start", "end"),
    [
        (utc(2026, 1, 31, 23, 59, 59, 999_999), utc(2026, 1, 1), utc(2026, 2, 1)),
        (utc(2026, 2, 1), utc(2026, 2, 1), utc(2026, 3, 1)),
        (utc(2026, 4, 30, 18), utc(2026, 4, 1), utc(2026, 5, 1)),
        (utc(2026, 12, 31, 23, 59), utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2027, 1, 1), utc(2027, 1, 1), utc(2027, 2, 1)),
    ],
)
def test_months_start_on_the_first(at: datetime, start: datetime, end: datetime) -> None:
    """A month runs from the 1st 00:00 UTC to the next 1st, December rolling into January."""
    assert period_bounds("month", at) == (start, end)


@pytest.mark.parametrize(
    ("at", "day_end", "month_end"),
    [
        (utc(2028, 2, 28, 12), utc(2028, 2, 29), utc(2028, 3, 1)),
        (utc(2028, 2, 29, 12), utc(2028, 3, 1), utc(2028, 3, 1)),
        (utc(2000, 2, 29), utc(2000, 3, 1), utc(2000, 3, 1)),
        # 2100 is not a leap year: February ends on the 28th.
        (utc(2100, 2, 28, 23), utc(2100, 3, 1), utc(2100, 3, 1)),
        (utc(2027, 2, 28, 23), utc(2027, 3, 1), utc(2027, 3, 1)),
    ],
)
def test_leap_years(at: datetime, day_end: datetime, month_end: datetime) -> None:
    """February 29th exists in leap years only, and days and months end accordingly."""
    assert period_bounds("day", at)[1] == day_end
    assert period_bounds("month", at)[1] == month_end


def test_exactly_midnight_belongs_to_the_new_period() -> None:
    """An instant at 00:00:00 UTC opens a day, and one microsecond before closes the last."""
    midnight = utc(2026, 12, 1)
    before = midnight - timedelta(microseconds=1)
    assert period_bounds("day", midnight)[0] == midnight
    assert period_bounds("month", midnight)[0] == midnight
    assert period_bounds("month", before)[1] == midnight
    assert period_key("day", midnight) == period_key("day", before) + 1
    assert period_key("month", midnight) == period_key("month", before) + 1
    assert day_number(midnight) - day_number(before) == 1


def test_other_timezones_are_read_in_utc() -> None:
    """A time with an offset falls in the UTC day it denotes, not its local day."""
    local = datetime(2026, 11, 2, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert period_bounds("day", local) == (utc(2026, 11, 1), utc(2026, 11, 2))
    assert period_bounds("week", local) == (utc(2026, 10, 26), utc(2026, 11, 2))


def test_ledger_puts_a_midnight_event_in_the_new_day_week_and_month() -> None:
    """Spend at exactly midnight of a Monday the 1st counts in the new day, week and month only."""
    ledger = Ledger()
    midnight = utc(2027, 3, 1)  # a Monday
    assert midnight.weekday() == 0
    ledger.add_spend("u", 7, midnight)
    ledger.add_spend("u", 5, midnight - timedelta(microseconds=1))
    for index, period in ((DAY, "day"), (WEEK, "week"), (MONTH, "month")):
        p: Period = period  # type: ignore[assignment]
        assert ledger.spent(index, period_key(p, midnight), "u") == 7
        assert ledger.spent(index, period_key(p, midnight) - (7 if p == "week" else 1), "u") == 5


def test_calendar_turns_over_at_midnight_and_follows_a_clock_set_back() -> None:
    """The cached current periods move at midnight and are recomputed if the clock goes back."""
    calendar = Calendar()
    midnight = utc(2027, 1, 1).timestamp()
    day, week, month = calendar.at(midnight - 0.001)
    assert (day.start, week.start, month.start) == (
        utc(2026, 12, 31),
        utc(2026, 12, 28),
        utc(2026, 12, 1),
    )
    assert day.end_iso == "2027-01-01T00:00:00Z"
    day, week, month = calendar.at(midnight)
    assert (day.start, week.start, month.start) == (
        utc(2027, 1, 1),
        utc(2026, 12, 28),
        utc(2027, 1, 1),
    )
    assert month.end_iso == "2027-02-01T00:00:00Z"
    assert month.start_iso == "2027-01-01T00:00:00Z"
    assert calendar.at(midnight - 3600)[DAY].start == utc(2026, 12, 31)


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1),  # noqa: DTZ001  # hypothesis wants naive bounds
        max_value=datetime(2199, 12, 31),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
    st.sampled_from(PERIODS),
)
def test_every_instant_lies_in_one_period_that_starts_at_midnight(
    at: datetime, period: Period
) -> None:
    """For any instant, its period starts at a midnight at or before it and ends at the next start."""
    start, end = period_bounds(period, at)
    assert start <= at < end
    assert (start.hour, start.minute, start.second, start.microsecond) == (0, 0, 0, 0)
    assert period_bounds(period, end)[0] == end
    assert period_bounds(period, end - timedelta(microseconds=1))[0] == start
    if period == "week":
        assert start.weekday() == 0
        assert end - start == timedelta(days=7)
    if period == "month":
        assert start.day == 1
    current = CurrentPeriod.of(period, at)
    assert (current.start, current.end) == (start, end)
