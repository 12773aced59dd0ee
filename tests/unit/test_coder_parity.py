"""Coder's own test tables for chat cost and usage limits, replayed against Tollgate's domain.

Each case is Coder's, written down as data with the Coder file and case it comes from, and the
answer Coder's test expects. Tollgate's code must give the same answer, or the case names a
deliberate difference that the README's "Where Tollgate differs from Coder" sections explain
(`DIFFERENCES` below holds the phrase each explanation must contain).

Sources (coder/coder):
- `coderd/x/chatd/chatcost/chatcost_test.go`: `TestCalculateTotalCostMicros`
- `coderd/x/chatd/usagelimit_internal_test.go`: `TestComputeUsagePeriodBounds`
- `coderd/x/chatd/usagelimit_test.go`: `TestResolveUsageLimitStatus_OrgScoped`
- `coderd/database/queries/chats.sql`: `GetUserChatSpendInPeriod`, `ResolveUserChatSpendLimit`,
  `GetUserGroupSpendLimit` (and `CountEnabledModelsWithoutPricing`, replayed against
  PostgreSQL in `tests/integration/test_coder_parity_prices.py`)
- `coderd/x/chatd/chatd.go`: `checkUsageLimit` (blocked when spend >= limit)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Final, Literal

import pytest
from pydantic import ValidationError

from libs.events.models import ChatUsage, ChatUsageRecorded
from libs.events.pricing import ModelPrice, price_event
from libs.events.vocabulary import Period
from services.limits.domain import Ledger, Limiter, LimitsConfig, period_bounds

README: Final = Path(__file__).resolve().parents[2] / "README.md"

#: Each deliberate difference, and a phrase its explanation in the README must contain.
DIFFERENCES: Final[dict[str, str]] = {
    "token-counts-are-numbers": "token counts are numbers, never absent",
}


def _differences_in_readme() -> str:
    """Every "Where Tollgate differs from Coder" part of the README, up to the next heading."""
    text = README.read_text()
    parts = re.findall(
        r"Where Tollgate differs from Coder.*?(?=\n#{2,4} |\Z)", text, flags=re.DOTALL
    )
    return "\n".join(" ".join(part.split()) for part in parts)


def test_every_difference_the_tables_name_is_explained_in_the_readme() -> None:
    """A case may differ from Coder only where the README says so and why."""
    explained = _differences_in_readme()
    assert explained, "the README has no 'Where Tollgate differs from Coder' part"
    cases = (*COST_CASES, *ORG_CASES, *SQL_CASES)
    for key in {c.differs for c in cases if c.differs is not None}:
        assert key in DIFFERENCES, key
        assert DIFFERENCES[key] in explained, (key, DIFFERENCES[key])


# -- chatcost: TestCalculateTotalCostMicros ----------------------------------------------------

#: Coder's `ModelCostConfig` of a case: None (no cost config), "empty" (one with no price set),
#: or the prices it sets, in dollars per million tokens.
CostConfig = dict[str, str] | Literal["empty"] | None


@dataclass(frozen=True)
class CostCase:
    """One row of Coder's table: usage (absent counts left out), cost config, Coder's answer."""

    name: str
    usage: dict[str, int]
    cost: CostConfig
    coder: int | None
    tollgate: int | None = None
    differs: str | None = None

    @property
    def expected(self) -> int | None:
        """What Tollgate must answer: Coder's answer unless the case names a difference."""
        return self.coder if self.differs is None else self.tollgate


# coder/coder coderd/x/chatd/chatcost/chatcost_test.go, TestCalculateTotalCostMicros.
# Usage keys are Tollgate's fields; Coder's CacheCreationTokens is cache_write_tokens. Coder's
# TotalTokens and ContextLimit have no counterpart (nothing prices them) and are left out.
COST_CASES: Final = (
    CostCase("nil cost returns nil", {"input_tokens": 1000}, None, coder=None),
    CostCase(
        "all priced usage fields nil returns nil",
        {},
        {"input": "3"},
        coder=None,
        tollgate=0,
        differs="token-counts-are-numbers",
    ),
    CostCase("sub-micro total rounds up to 1", {"input_tokens": 1}, {"input": "0.01"}, coder=1),
    CostCase("simple input only", {"input_tokens": 1000}, {"input": "3"}, coder=3000),
    CostCase("simple output only", {"output_tokens": 500}, {"output": "15"}, coder=7500),
    CostCase(
        "reasoning tokens included in output total",
        {"output_tokens": 500, "reasoning_tokens": 200},
        {"output": "15"},
        coder=7500,
    ),
    CostCase("cache read tokens", {"cache_read_tokens": 10000}, {"cache_read": "0.3"}, coder=3000),
    CostCase(
        "cache creation tokens", {"cache_write_tokens": 5000}, {"cache_write": "3.75"}, coder=18750
    ),
    CostCase(
        "full mixed usage totals all components exactly",
        {
            "input_tokens": 101,
            "output_tokens": 201,
            "reasoning_tokens": 52,
            "cache_read_tokens": 1005,
            "cache_write_tokens": 33,
        },
        {"input": "1.23", "output": "4.56", "cache_read": "0.7", "cache_write": "7.89"},
        coder=2005,
    ),
    CostCase(
        "partial pricing only input contributes",
        {
            "input_tokens": 1234,
            "output_tokens": 999,
            "reasoning_tokens": 111,
            "cache_read_tokens": 500,
            "cache_write_tokens": 250,
        },
        {"input": "2.5"},
        coder=3085,
    ),
    CostCase(
        "zero tokens with pricing returns zero pointer",
        {"input_tokens": 0},
        {"input": "3"},
        coder=0,
    ),
    CostCase(
        "usage only in unpriced categories returns nil",
        {"input_tokens": 1000},
        {"output": "15"},
        coder=None,
    ),
    CostCase(
        "non nil usage with empty cost config returns nil",
        {"input_tokens": 42},
        "empty",
        coder=None,
    ),
)


def _price(cost: CostConfig) -> ModelPrice | None:
    """The price table's row for Coder's cost config (None: the model has no row)."""
    if cost is None:
        return None
    if cost == "empty":
        # Tollgate refuses a price that sets no kind (a model without a price has no row).
        with pytest.raises(ValidationError, match="set at least one of"):
            ModelPrice()
        return None
    return ModelPrice.model_validate({f"{kind}_price_per_million": v for kind, v in cost.items()})


@pytest.mark.parametrize("case", COST_CASES, ids=lambda c: c.name)
def test_chatcost_table(case: CostCase) -> None:
    """Ingest prices each of Coder's chatcost cases as Coder does (or as the README explains)."""
    price = _price(case.cost)
    event = ChatUsageRecorded(
        id="e1",
        occurred_at=datetime(2026, 11, 2, tzinfo=UTC),
        user_id="u1",
        data=ChatUsage.model_validate(
            {"chat_id": "c", "message_id": "m", "model": "m", "input_tokens": 0, "output_tokens": 0}
            | case.usage
        ),
    )
    priced = price_event(event, {} if price is None else {"m": price})
    assert priced.data.cost_micros == case.expected
    assert priced.data.priced is (case.expected is not None)


# -- usage limits: TestComputeUsagePeriodBounds -----------------------------------------------

NEW_YORK_SUMMER = timezone(timedelta(hours=-4))  # America/New_York in June (EDT)


def _utc(year: int, month: int, day: int, *time: int) -> datetime:
    """A UTC time, as Go's `time.Date(..., time.UTC)` gives one."""
    hour, minute, second = (*time, 0, 0, 0)[:3]
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# coder/coder coderd/x/chatd/usagelimit_internal_test.go, TestComputeUsagePeriodBounds:
# (name, now, period, start, end).
PERIOD_CASES: Final[tuple[tuple[str, datetime, Period, datetime, datetime], ...]] = (
    ("day/mid_day", _utc(2025, 6, 15, 14, 30), "day", _utc(2025, 6, 15), _utc(2025, 6, 16)),
    ("day/midnight_exactly", _utc(2025, 6, 15), "day", _utc(2025, 6, 15), _utc(2025, 6, 16)),
    (
        "day/end_of_day",
        _utc(2025, 6, 15, 23, 59, 59),
        "day",
        _utc(2025, 6, 15),
        _utc(2025, 6, 16),
    ),
    ("week/wednesday", _utc(2025, 6, 11, 10), "week", _utc(2025, 6, 9), _utc(2025, 6, 16)),
    ("week/monday", _utc(2025, 6, 9), "week", _utc(2025, 6, 9), _utc(2025, 6, 16)),
    ("week/sunday", _utc(2025, 6, 15, 23), "week", _utc(2025, 6, 9), _utc(2025, 6, 16)),
    ("week/year_boundary", _utc(2024, 12, 31, 12), "week", _utc(2024, 12, 30), _utc(2025, 1, 6)),
    ("month/mid_month", _utc(2025, 6, 15), "month", _utc(2025, 6, 1), _utc(2025, 7, 1)),
    ("month/first_day", _utc(2025, 6, 1), "month", _utc(2025, 6, 1), _utc(2025, 7, 1)),
    ("month/last_day", _utc(2025, 6, 30, 23, 59, 59), "month", _utc(2025, 6, 1), _utc(2025, 7, 1)),
    ("month/february", _utc(2025, 2, 15, 12), "month", _utc(2025, 2, 1), _utc(2025, 3, 1)),
    (
        "month/leap_year_february",
        _utc(2024, 2, 29, 12),
        "month",
        _utc(2024, 2, 1),
        _utc(2024, 3, 1),
    ),
    (
        "day/non_utc_timezone",
        datetime(2025, 6, 15, 22, tzinfo=NEW_YORK_SUMMER),
        "day",
        _utc(2025, 6, 16),
        _utc(2025, 6, 17),
    ),
)


@pytest.mark.parametrize(
    ("now", "period", "start", "end"),
    [c[1:] for c in PERIOD_CASES],
    ids=[c[0] for c in PERIOD_CASES],
)
def test_usage_period_bounds_table(
    now: datetime, period: Period, start: datetime, end: datetime
) -> None:
    """Every period of Coder's table starts and resets where Coder's does (UTC)."""
    assert period_bounds(period, now) == (start, end)


# -- usage limits: TestResolveUsageLimitStatus_OrgScoped and chats.sql ---------------------------

A, B, C = "org-a", "org-b", "org-c"
NOW: Final = _utc(2026, 11, 18, 15, 30)


@dataclass(frozen=True)
class Setup:
    """Directory, configuration and spend, as Coder's test builds them in its database."""

    #: group id -> (organisation, spend limit, members)
    groups: dict[str, tuple[str, int | None, tuple[str, ...]]] = field(default_factory=dict)
    user_overrides: dict[str, int] = field(default_factory=dict)
    default: int | None = 100_000_000
    enabled: bool = True
    #: (user, organisation of the chat, cost; None = unpriced, how long before NOW)
    spend: tuple[tuple[str, str | None, int | None, timedelta], ...] = ()


@dataclass(frozen=True)
class OrgCase:
    """One assertion of Coder's: the limit (and spend) a user gets in an organisation."""

    name: str
    setup: Setup
    user: str
    org: str | None
    limit: int | None
    spent: int | None = None
    #: Tollgate's own answer fields (not Coder's): the tier and the organisation it names.
    source: str | None = None
    scope: str | None = None
    differs: str | None = None


# TestResolveUsageLimitStatus_OrgScoped's database: orgs A and B, `user` in groupA ($5) and
# groupA2 ($20) of A and groupB ($50) of B, a $100 monthly default; each spend subtest has a
# user of its own.
ORG_SCOPED: Final = Setup(
    groups={
        "group-a": (A, 5_000_000, ("user", "spend-user", "user2")),
        "group-a2": (A, 20_000_000, ("user",)),
        "group-b": (B, 50_000_000, ("user", "spend-user")),
    },
    user_overrides={"user2": 10_000_000, "user3": 10_000_000},
    spend=(
        ("spend-user", A, 3_000_000, timedelta(0)),
        ("user3", A, 6_000_000, timedelta(0)),
        ("user3", B, 6_000_000, timedelta(0)),
        ("user4", A, 30_000_000, timedelta(0)),
        ("user4", C, 40_000_000, timedelta(0)),
    ),
)
_ORG = "coderd/x/chatd/usagelimit_test.go TestResolveUsageLimitStatus_OrgScoped/"

# coder/coder coderd/x/chatd/usagelimit_test.go, TestResolveUsageLimitStatus_OrgScoped: one
# case per assertion of each subtest.
ORG_CASES: Final = (
    OrgCase(_ORG + "OrgA_gets_orgA_limit", ORG_SCOPED, "user", A, 5_000_000, 0, "group", A),
    OrgCase(_ORG + "OrgB_gets_orgB_limit", ORG_SCOPED, "user", B, 50_000_000, 0, "group", B),
    OrgCase(
        _ORG + "UnknownOrg_gets_global_default",
        ORG_SCOPED,
        "user",
        "org-random",
        100_000_000,
        0,
        "default",
    ),
    OrgCase(_ORG + "NilOrg_gets_global_min", ORG_SCOPED, "user", None, 5_000_000, 0, "group"),
    OrgCase(
        _ORG + "Spend_scoped_to_org (orgB)", ORG_SCOPED, "spend-user", B, 50_000_000, 0, "group", B
    ),
    OrgCase(
        _ORG + "Spend_scoped_to_org (orgA)",
        ORG_SCOPED,
        "spend-user",
        A,
        5_000_000,
        3_000_000,
        "group",
        A,
    ),
    OrgCase(
        _ORG + "Spend_scoped_to_org (nil org)",
        ORG_SCOPED,
        "spend-user",
        None,
        5_000_000,
        3_000_000,
        "group",
    ),
    OrgCase(_ORG + "User_override_beats_group", ORG_SCOPED, "user2", A, 10_000_000, 0, "user"),
    OrgCase(
        _ORG + "UserOverride_spend_is_global",
        ORG_SCOPED,
        "user3",
        A,
        10_000_000,
        12_000_000,
        "user",
    ),
    OrgCase(
        _ORG + "GlobalDefault_spend_is_global",
        ORG_SCOPED,
        "user4",
        C,
        100_000_000,
        70_000_000,
        "default",
    ),
)

_SQL = "coderd/database/queries/chats.sql "
ONE_GROUP = Setup(groups={"g": (A, 5_000_000, ("u",))}, default=7_000_000)

# coder/coder coderd/database/queries/chats.sql: what the usage-limit queries return.
SQL_CASES: Final = (
    # ResolveUserChatSpendLimit: 'disabled' (-1) when limits are off, whatever is set.
    OrgCase(
        _SQL + "ResolveUserChatSpendLimit disabled",
        Setup(groups={"g": (A, 1, ("u",))}, user_overrides={"u": 1}, default=1, enabled=False),
        "u",
        A,
        None,
        source="none",
    ),
    # ResolveUserChatSpendLimit: the user override wins even above the group's limit.
    OrgCase(
        _SQL + "ResolveUserChatSpendLimit user over group",
        Setup(groups={"g": (A, 5_000_000, ("u",))}, user_overrides={"u": 9_000_000}),
        "u",
        A,
        9_000_000,
        source="user",
    ),
    # ResolveUserChatSpendLimit / GetUserGroupSpendLimit: MIN over the groups with a limit
    # (a group without one is no candidate).
    OrgCase(
        _SQL + "ResolveUserChatSpendLimit min of groups with a limit",
        Setup(
            groups={
                "g1": (A, 8_000_000, ("u",)),
                "g2": (A, 6_000_000, ("u",)),
                "g3": (A, None, ("u",)),
            }
        ),
        "u",
        A,
        6_000_000,
        source="group",
        scope=A,
    ),
    # GetUserGroupSpendLimit: -1 when no group of the organisation has a limit: the default.
    OrgCase(
        _SQL + "GetUserGroupSpendLimit no group in scope",
        ONE_GROUP,
        "u",
        B,
        7_000_000,
        0,
        "default",
    ),
    # GetUserChatSpendInPeriod: [start, end) of the period, priced messages only, one org.
    OrgCase(
        _SQL + "GetUserChatSpendInPeriod window, priced only, org-scoped",
        Setup(
            groups=ONE_GROUP.groups,
            spend=(
                ("u", A, 1_000, timedelta(0)),
                ("u", A, None, timedelta(0)),  # unpriced: total_cost_micros IS NULL
                ("u", A, 200, NOW - _utc(2026, 11, 1)),  # exactly the period's start
                ("u", A, 30, NOW - _utc(2026, 11, 1) + timedelta(microseconds=1)),  # before it
                ("u", B, 4, timedelta(0)),  # another organisation
            ),
        ),
        "u",
        A,
        5_000_000,
        1_200,
        "group",
        A,
    ),
    # GetUserChatSpendInPeriod with a NULL organisation: every organisation's spend.
    OrgCase(
        _SQL + "GetUserChatSpendInPeriod NULL organisation",
        Setup(spend=(("u", A, 1_000, timedelta(0)), ("u", B, 4, timedelta(0)))),
        "u",
        None,
        100_000_000,
        1_004,
        "default",
    ),
    # checkUsageLimit (chatd.go): blocked once spend reaches the limit (>=).
    OrgCase(
        "coderd/x/chatd/chatd.go checkUsageLimit blocks at spend >= limit",
        Setup(spend=(("u", A, 7_000_000, timedelta(0)),), default=7_000_000),
        "u",
        A,
        7_000_000,
        7_000_000,
        "default",
    ),
)


def _limiter(setup: Setup) -> Limiter:
    limiter = Limiter(
        config=LimitsConfig(
            enabled=setup.enabled,
            period="month",
            default_limit_micros=setup.default,
            user_overrides=setup.user_overrides,
            group_overrides={g: lim for g, (_, lim, _) in setup.groups.items() if lim is not None},
        )
    )
    ledger: Ledger = limiter.ledger
    for order, (group_id, (group_org, _, members)) in enumerate(setup.groups.items()):
        ledger.set_group(group_id, members, (0, 0, order), org_id=group_org)
    for n, (user, org, cost, before) in enumerate(setup.spend):
        at = NOW - before
        ledger.apply(
            ChatUsageRecorded(
                id=f"msg-{n}",
                occurred_at=at,
                user_id=user,
                org_id=org,
                data=ChatUsage(
                    chat_id=f"chat-{n}",
                    message_id=f"m-{n}",
                    model="gpt-4o-mini",
                    input_tokens=100,
                    output_tokens=50,
                    cost_micros=cost,
                    priced=cost is not None,
                ),
            ),
            partition=0,
            offset=n,
            log_ms=int(at.timestamp() * 1000),
        )
    return limiter


@pytest.mark.parametrize("case", ORG_CASES + SQL_CASES, ids=lambda c: c.name)
def test_usage_limit_resolution_table(case: OrgCase) -> None:
    """The limit, the spend counted against it and the blocking match Coder's for each case."""
    assert case.differs is None
    decision = _limiter(case.setup).decide(case.user, NOW.timestamp(), case.org)
    assert decision.limit_micros == case.limit
    if case.spent is not None:
        assert decision.spent_micros == case.spent
        assert decision.allowed is (case.limit is None or case.spent < case.limit)
    assert (decision.source, decision.org_id) == (case.source, case.scope)
    assert decision.limited is (case.limit is not None)


def test_the_tables_replay_every_case_they_were_written_from() -> None:
    """The replay holds each case of Coder's tables once: 13 chatcost, 13 period bounds, 10
    assertions of the eight org-scoped subtests and 7 query behaviours."""
    assert (len(COST_CASES), len(PERIOD_CASES), len(ORG_CASES), len(SQL_CASES)) == (13, 13, 10, 7)
    org_subtests = {c.name.split("/")[-1].split(" (")[0] for c in ORG_CASES}
    assert len(org_subtests) == 8
    assert sum(c.differs is not None for c in COST_CASES + ORG_CASES + SQL_CASES) == 1
