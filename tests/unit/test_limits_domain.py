"""The limits ledger and limiter: priority, blocking, dedup, exclusions, groups, snapshots."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.events.bounds import MAX_EVENT_COST_MICROS, MAX_TOTAL
from libs.events.models import (
    ApiUsage,
    ApiUsageRecorded,
    ChatUsage,
    ChatUsageRecorded,
    DirectoryGroup,
    Event,
    GroupUpdated,
)
from services.limits import snapshot
from services.limits.domain import (
    DAY,
    MONTH,
    SPLIT,
    WEEK,
    CurrentPeriod,
    Ledger,
    Limiter,
    LimitsConfig,
    RecentIds,
    period_key,
    resolve_limit,
    unpriced_models,
)

NOW = datetime(2026, 11, 18, 15, 30, tzinfo=UTC)  # a Wednesday
NOW_S = NOW.timestamp()
NOW_MS = int(NOW_S * 1000)
HOUR_MS = 3_600_000
ORGS = ("acme", "beta", "gamma")


def chat(
    event_id: str,
    user: str,
    cost: int | None,
    *,
    at: datetime = NOW,
    purpose: str = "chat",
    model: str = "sonnet",
    org: str | None = None,
) -> ChatUsageRecorded:
    """A chat usage event (in organisation `org`)."""
    return ChatUsageRecorded(
        id=event_id,
        occurred_at=at,
        user_id=user,
        org_id=org,
        data=ChatUsage.model_validate(
            {
                "chat_id": "c1",
                "message_id": f"m-{event_id}",
                "model": model,
                "input_tokens": 10,
                "output_tokens": 5,
                "cost_micros": cost,
                "purpose": purpose,
            }
        ),
    )


def group(
    event_id: str,
    group_id: str,
    members: Sequence[str],
    *,
    at: datetime = NOW,
    org: str | None = None,
) -> GroupUpdated:
    """A group membership event (a group of organisation `org`)."""
    return GroupUpdated(
        id=event_id,
        occurred_at=at,
        org_id=org,
        data=DirectoryGroup(group_id=group_id, name=group_id, member_ids=tuple(members)),
    )


def month_total(ledger: Ledger, user: str, at: datetime = NOW) -> int:
    """A user's spend in the month of `at`."""
    return ledger.spent(MONTH, period_key("month", at), user)


def fold(ledger: Ledger, events: Sequence[tuple[Event, int, int]], log_ms: int = NOW_MS) -> None:
    """Apply (event, partition, offset) triples and move the positions."""
    for event, partition, offset in events:
        ledger.apply(event, partition=partition, offset=offset, log_ms=log_ms)
        ledger.positions[partition] = offset + 1


# -- priority ---------------------------------------------------------------------------------

CONFIG = LimitsConfig(
    enabled=True,
    period="month",
    default_limit_micros=1_000_000,
    user_overrides={"vip": 5_000_000},
    group_overrides={"eng": 3_000_000, "ops": 2_000_000, "tie-b": 700_000, "tie-a": 700_000},
)


@pytest.mark.parametrize(
    ("config", "user", "groups", "expected"),
    [
        (CONFIG, "vip", ("ops",), (5_000_000, "user", None)),
        (CONFIG, "dev", ("eng",), (3_000_000, "group", "eng")),
        (CONFIG, "dev", ("eng", "ops"), (2_000_000, "group", "ops")),
        (CONFIG, "dev", ("ops", "eng", "unknown"), (2_000_000, "group", "ops")),
        (CONFIG, "dev", ("tie-b", "tie-a"), (700_000, "group", "tie-a")),
        (CONFIG, "dev", ("unknown",), (1_000_000, "default", None)),
        (CONFIG, "dev", None, (1_000_000, "default", None)),
        (LimitsConfig(enabled=True, group_overrides={"eng": 9}), "dev", None, (None, "none", None)),
        (
            LimitsConfig(enabled=True, group_overrides={"eng": 9}),
            "dev",
            ("eng",),
            (9, "group", "eng"),
        ),
        (
            LimitsConfig(enabled=False, default_limit_micros=1, user_overrides={"vip": 1}),
            "vip",
            None,
            (None, "none", None),
        ),
    ],
    ids=[
        "user-override-beats-groups",
        "one-group",
        "lowest-of-two-groups",
        "groups-without-override-are-skipped",
        "equal-groups-name-the-smallest-id",
        "default-when-no-group-has-a-limit",
        "default-without-groups",
        "none-without-default",
        "group-higher-than-nothing",
        "disabled-means-none",
    ],
)
def test_priority_table(
    config: LimitsConfig,
    user: str,
    groups: tuple[str, ...] | None,
    expected: tuple[int | None, str, str | None],
) -> None:
    """User override, then the lowest group limit, then the default, then none; off means none."""
    # Without an organisation every limit holds across organisations: no scope.
    assert resolve_limit(config, user, groups) == (*expected, None)


def test_a_group_limit_above_the_default_still_applies() -> None:
    """Groups rank above the default, so a member gets the group's limit even when it is higher."""
    config = LimitsConfig(enabled=True, default_limit_micros=1_000, group_overrides={"big": 9_000})
    assert resolve_limit(config, "dev", ("big",)) == (9_000, "group", "big", None)


def test_blocked_exactly_when_spend_reaches_the_limit() -> None:
    """One micro-dollar under the limit is allowed; at the limit and over it the user is blocked."""
    limiter = Limiter(config=LimitsConfig(enabled=True, default_limit_micros=1_000))
    limiter.ledger.add_spend("u", 999, NOW)
    first = limiter.decide("u", NOW_S)
    assert (first.allowed, first.spent_micros, first.remaining_micros) == (True, 999, 1)
    limiter.ledger.add_spend("u", 1, NOW)
    at_limit = limiter.decide("u", NOW_S)
    assert (at_limit.allowed, at_limit.limited, at_limit.remaining_micros) == (False, True, 0)
    limiter.ledger.add_spend("u", 500, NOW)
    over = limiter.decide("u", NOW_S)
    assert (over.allowed, over.spent_micros, over.remaining_micros) == (False, 1_500, 0)


def test_decision_reports_the_configured_period_and_its_reset() -> None:
    """A check reports the spend of the configured period, its start, and the next start."""
    limiter = Limiter(config=LimitsConfig(enabled=True, period="week", default_limit_micros=10))
    limiter.ledger.add_spend("u", 3, NOW)
    limiter.ledger.add_spend("u", 4, NOW - timedelta(days=3))  # the Sunday before: last week
    decision = limiter.decide("u", NOW_S)
    assert decision.spent_micros == 3
    assert decision.current == CurrentPeriod.of("week", NOW)
    assert decision.current.start_iso == "2026-11-16T00:00:00Z"
    assert decision.current.end_iso == "2026-11-23T00:00:00Z"
    limiter.config = LimitsConfig(enabled=True, period="month", default_limit_micros=10)
    assert limiter.decide("u", NOW_S).spent_micros == 7


def test_unknown_user_and_disabled_limits_are_allowed() -> None:
    """A user never seen is allowed with nothing spent; disabled limits allow with `limited` false."""
    limiter = Limiter(config=LimitsConfig(enabled=True, default_limit_micros=1))
    fresh = limiter.decide("never-seen", NOW_S)
    assert (fresh.allowed, fresh.spent_micros, fresh.source) == (True, 0, "default")
    limiter.ledger.add_spend("spender", 50, NOW)
    limiter.config = LimitsConfig(enabled=False, default_limit_micros=1)
    off = limiter.decide("spender", NOW_S)
    assert (off.allowed, off.limited, off.limit_micros, off.spent_micros) == (True, False, None, 50)
    assert (off.source, off.remaining_micros) == ("none", None)


# -- what counts -----------------------------------------------------------------------------


def test_title_generation_never_counts() -> None:
    """Usage with purpose `title` adds no spend, in any period."""
    ledger = Ledger()
    assert (
        ledger.apply(chat("t1", "u", 900, purpose="title"), partition=0, offset=0, log_ms=NOW_MS)
        == "title"
    )
    assert ledger.apply(chat("c1", "u", 100), partition=0, offset=1, log_ms=NOW_MS) == "spend"
    for index, period in ((DAY, "day"), (WEEK, "week"), (MONTH, "month")):
        assert ledger.spent(index, period_key(period, NOW), "u") == 100  # type: ignore[arg-type]


def test_unpriced_usage_counts_nothing_and_a_model_is_unpriced_while_it_has_no_price() -> None:
    """A null cost adds no spend; a used model is listed exactly while the price table lacks it."""
    ledger = Ledger()
    assert (
        ledger.apply(chat("a", "u", None, model="new-model"), partition=0, offset=0, log_ms=NOW_MS)
        == "unpriced"
    )
    ledger.apply(
        chat("b", "u", None, model="title-only", purpose="title"),
        partition=0,
        offset=1,
        log_ms=NOW_MS,
    )
    ledger.apply(chat("c", "u", 10, model="emitter-costed"), partition=0, offset=2, log_ms=NOW_MS)
    assert month_total(ledger, "u") == 10
    # Title generation is no chat usage; an emitter's own cost is no price of the deployment.
    assert ledger.models_used() == ["emitter-costed", "new-model"]
    assert unpriced_models(ledger.models, set()) == ["emitter-costed", "new-model"]
    # Pricing a model takes it off at once, whatever its earlier usage cost; unpricing it
    # (the price deleted) puts it back.
    assert unpriced_models(ledger.models, {"new-model"}) == ["emitter-costed"]
    assert unpriced_models(ledger.models, {"new-model", "emitter-costed", "x"}) == []


def test_other_event_types_are_ignored() -> None:
    """Events limits do not use change nothing."""
    ledger = Ledger()
    event = ApiUsageRecorded(id="x", occurred_at=NOW, user_id="u", data=ApiUsage(client="ui"))
    assert ledger.apply(event, partition=0, offset=0, log_ms=NOW_MS) == "ignored"
    assert ledger.applied == 0


def test_late_events_count_in_the_period_they_occurred_in() -> None:
    """An event read today that occurred last month adds to last month, not to this one."""
    ledger = Ledger()
    last_month = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
    ledger.apply(chat("late", "u", 400, at=last_month), partition=0, offset=0, log_ms=NOW_MS)
    ledger.apply(chat("now", "u", 100), partition=0, offset=1, log_ms=NOW_MS)
    assert month_total(ledger, "u") == 100
    assert month_total(ledger, "u", last_month) == 400


def test_past_periods_are_dropped_and_future_ones_kept() -> None:
    """Pruning drops buckets no check can read again and keeps today's and tomorrow's."""
    limiter = Limiter(config=LimitsConfig(enabled=True, period="day", default_limit_micros=10))
    ledger = limiter.ledger
    tomorrow = NOW + timedelta(days=1)
    ledger.add_spend("u", 1, NOW - timedelta(days=40))
    ledger.add_spend("u", 2, NOW)
    ledger.add_spend("u", 3, tomorrow)
    assert ledger.prune(limiter.current_periods(NOW_S)) == 3  # the old day, week and month
    assert sorted(ledger.spend[MONTH]) == [period_key("month", NOW)]
    # Events of a pruned period change nothing any more; tomorrow's count when tomorrow comes.
    ledger.add_spend("u", 1, NOW - timedelta(days=40))
    assert sorted(ledger.spend[DAY]) == [period_key("day", NOW), period_key("day", tomorrow)]
    assert limiter.decide("u", NOW_S).spent_micros == 2
    assert limiter.decide("u", tomorrow.timestamp()).spent_micros == 3


# -- organisations ---------------------------------------------------------------------------


def month_in(ledger: Ledger, user: str, org: str) -> int:
    """A user's spend this month that counts for `org`'s group limits."""
    return ledger.spent_in_org(MONTH, period_key("month", NOW), user, org)


def test_a_user_spending_in_one_organisation_costs_one_entry_and_no_split() -> None:
    """All spend in one organisation: `user_orgs` names it, nothing is split, other orgs see 0."""
    ledger = Ledger()
    ledger.apply(chat("e1", "u", 700, org="acme"), partition=0, offset=0, log_ms=NOW_MS)
    ledger.apply(chat("e2", "u", 300, org="acme"), partition=0, offset=1, log_ms=NOW_MS)
    assert ledger.user_orgs == {"u": "acme"}
    assert ledger.org_spend == ({}, {}, {})
    assert (month_in(ledger, "u", "acme"), month_in(ledger, "u", "beta")) == (1000, 0)
    assert month_total(ledger, "u") == 1000


def test_a_second_organisation_splits_what_was_spent_before_in_every_period() -> None:
    """Spend in a second organisation keeps each organisation's share exact in every bucket."""
    ledger = Ledger()
    yesterday = NOW - timedelta(days=1)
    ledger.apply(chat("e1", "u", 700, org="acme", at=yesterday), partition=0, offset=0, log_ms=0)
    ledger.apply(chat("e2", "u", 300, org="beta"), partition=0, offset=1, log_ms=NOW_MS)
    ledger.apply(chat("e3", "u", 20, org="acme"), partition=0, offset=2, log_ms=NOW_MS)
    assert ledger.user_orgs == {"u": SPLIT}
    assert (month_in(ledger, "u", "acme"), month_in(ledger, "u", "beta")) == (720, 300)
    assert month_in(ledger, "u", "gamma") == 0
    today = period_key("day", NOW)
    assert ledger.spent_in_org(DAY, today, "u", "acme") == 20
    assert ledger.spent_in_org(DAY, period_key("day", yesterday), "u", "acme") == 700
    assert ledger.spent_in_org(DAY, period_key("day", yesterday), "u", "beta") == 0
    assert month_total(ledger, "u") == 1020


def test_spend_that_names_no_organisation_counts_in_every_one() -> None:
    """Spend without org_id (or recorded before organisations) counts for every organisation."""
    ledger = Ledger()
    ledger.apply(chat("e1", "anon", 100), partition=0, offset=0, log_ms=NOW_MS)
    assert "anon" not in ledger.user_orgs
    assert (month_in(ledger, "anon", "acme"), month_in(ledger, "anon", "beta")) == (100, 100)
    ledger.apply(chat("e2", "anon", 50, org="acme"), partition=0, offset=1, log_ms=NOW_MS)
    assert (month_in(ledger, "anon", "acme"), month_in(ledger, "anon", "beta")) == (150, 100)
    # The other way round: spend in one organisation, then some without one.
    ledger.apply(chat("e3", "one", 40, org="beta"), partition=0, offset=2, log_ms=NOW_MS)
    ledger.apply(chat("e4", "one", 2), partition=0, offset=3, log_ms=NOW_MS)
    assert (month_in(ledger, "one", "beta"), month_in(ledger, "one", "acme")) == (42, 2)


@settings(max_examples=60, deadline=None)
@given(
    spends=st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2"]),
            st.sampled_from([None, "acme", "beta", "gamma"]),
            st.integers(1, 10_000),
            st.sampled_from([0, 0, 1, 2, 9, 35]),
        ),
        max_size=40,
    )
)
def test_spend_per_organisation_equals_a_plain_sum_in_every_period(
    spends: list[tuple[str, str | None, int, int]],
) -> None:
    """Whatever the order of organisations, each period's figure for an org is its own spend plus
    the spend of none, and the total is everything."""
    ledger = Ledger()
    for user, org, cost, days_ago in spends:
        ledger.add_spend(user, cost, NOW - timedelta(days=days_ago), org)
    for index, period in ((DAY, "day"), (WEEK, "week"), (MONTH, "month")):
        for days_ago in (0, 1, 2, 9, 35):
            at = NOW - timedelta(days=days_ago)
            key = period_key(period, at)  # type: ignore[arg-type]
            for user in ("u1", "u2"):
                mine = [
                    (o, c)
                    for u, o, c, d in spends
                    if u == user and period_key(period, NOW - timedelta(days=d)) == key  # type: ignore[arg-type]
                ]
                assert ledger.spent(index, key, user) == sum(c for _, c in mine)
                for org in ORGS:
                    expected = sum(c for o, c in mine if o in (org, None))
                    assert ledger.spent_in_org(index, key, user, org) == expected


def test_a_new_month_forgets_where_users_without_spend_spent() -> None:
    """When a month's buckets go, users left without spend leave `user_orgs` too, a few per call."""
    limiter = Limiter()
    ledger = limiter.ledger
    ledger.add_spend("gone", 5, NOW, "acme")
    ledger.add_spend("stays", 5, NOW, "acme")
    ledger.add_spend("stays", 5, NOW + timedelta(days=20), "beta")
    ledger.prune(limiter.current_periods(NOW_S))
    assert set(ledger.user_orgs) == {"gone", "stays"}
    next_month = NOW + timedelta(days=20)
    # The walk over the users is spread over the calls that follow, one user per call here.
    ledger.prune(limiter.current_periods(next_month.timestamp()), sweep=1)
    assert ledger.user_orgs == {"gone": "acme", "stays": SPLIT}  # "stays" looked at first
    ledger.prune(limiter.current_periods(next_month.timestamp()), sweep=1)
    assert ledger.user_orgs == {"stays": SPLIT}
    nxt = period_key("month", next_month)
    assert ledger.spent_in_org(MONTH, nxt, "stays", "beta") == 5
    assert ledger.spent_in_org(MONTH, nxt, "stays", "acme") == 0
    assert ledger.spent_in_org(MONTH, nxt, "gone", "acme") == 0


def test_a_groups_organisation_is_its_newest_directory_events() -> None:
    """A group moves with its newest event; an older one read later changes nothing."""
    ledger = Ledger()
    later = NOW + timedelta(minutes=1)
    fold(ledger, [(group("g1", "eng", ["u"], org="acme"), 0, 0)])
    assert ledger.group_orgs == {"eng": "acme"}
    fold(ledger, [(group("g2", "eng", ["u"], org="beta", at=later), 0, 1)])
    fold(ledger, [(group("g3", "eng", ["u"], org="gamma"), 1, 0)])
    assert ledger.group_orgs == {"eng": "beta"}
    fold(ledger, [(group("g4", "eng", ["u"], at=later + timedelta(minutes=1)), 0, 2)])
    assert ledger.group_orgs == {}


def test_a_format_2_snapshot_loads_with_its_spend_counting_in_every_organisation() -> None:
    """A snapshot the previous release wrote loads: totals, ids, groups and models carry over;
    its spend named no organisation, so every organisation's group tier counts it."""
    loaded = snapshot.decode(FORMAT_2.read_bytes())
    assert (month_total(loaded, "ann"), month_total(loaded, "bob")) == (1000, 50)
    assert (month_in(loaded, "ann", "acme"), month_in(loaded, "ann", "beta")) == (1000, 1000)
    assert loaded.positions == {0: 2, 1: 2, 2: 1}
    assert loaded.user_groups == {"ann": ("eng",), "bob": ("eng",)}
    assert loaded.group_orgs == {}
    assert loaded.models_used() == ["mystery", "sonnet"]
    resend = chat("e1", "ann", 700, org="acme")
    assert loaded.apply(resend, partition=0, offset=9, log_ms=NOW_MS) == "duplicate"
    # New spend is kept by organisation from here on.
    loaded.apply(chat("e9", "ann", 5, org="acme"), partition=0, offset=10, log_ms=NOW_MS)
    assert (month_in(loaded, "ann", "acme"), month_in(loaded, "ann", "beta")) == (1005, 1000)
    assert snapshot.decode(snapshot.encode(loaded)).user_orgs == {"ann": SPLIT}


# -- duplicates ------------------------------------------------------------------------------


def test_a_duplicate_id_counts_once() -> None:
    """The same event id twice on a partition is counted once, however far apart in the batch."""
    ledger = Ledger()
    assert ledger.apply(chat("e1", "u", 100), partition=3, offset=0, log_ms=NOW_MS) == "spend"
    assert ledger.apply(chat("e2", "u", 50), partition=3, offset=1, log_ms=NOW_MS) == "spend"
    assert (
        ledger.apply(chat("e1", "u", 100), partition=3, offset=2, log_ms=NOW_MS + 1000)
        == "duplicate"
    )
    assert month_total(ledger, "u") == 150
    assert ledger.applied == 2


def test_duplicates_are_caught_for_the_whole_window_of_log_time() -> None:
    """A resend 47 hours of log time later is caught; one after the 48-hour window counts again."""
    ledger = Ledger(dedup_window_ms=48 * HOUR_MS)
    ledger.apply(chat("e1", "u", 100), partition=0, offset=0, log_ms=NOW_MS)
    ledger.apply(chat("e2", "u", 1), partition=0, offset=1, log_ms=NOW_MS + 47 * HOUR_MS)
    assert (
        ledger.apply(chat("e1", "u", 100), partition=0, offset=2, log_ms=NOW_MS + 47 * HOUR_MS)
        == "duplicate"
    )
    ledger.apply(chat("e3", "u", 1), partition=0, offset=3, log_ms=NOW_MS + 50 * HOUR_MS)
    assert (
        ledger.apply(chat("e1", "u", 100), partition=0, offset=4, log_ms=NOW_MS + 50 * HOUR_MS)
        == "spend"
    )


def test_window_follows_the_partition_not_a_wall_clock() -> None:
    """A partition whose log time stands still keeps its ids however late they are re-read."""
    recent = RecentIds(24 * HOUR_MS)
    assert recent.add("a", 1_000)
    assert not recent.add("a", 1_000)
    # Timestamps that go backwards (producer clocks differ) do not shrink the window.
    assert recent.add("b", 500)
    assert not recent.add("b", 2_000)
    assert len(recent) == 2


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 200)),  # (id number, log hours advanced ×)
        min_size=1,
        max_size=120,
    ),
    evict_every=st.integers(1, 10),
)
def test_dedup_decisions_do_not_depend_on_when_the_window_is_trimmed(
    ops: list[tuple[int, int]], evict_every: int
) -> None:
    """Trimming the window at any moment never changes which records count as duplicates."""
    window = 24 * HOUR_MS
    plain, trimmed = RecentIds(window), RecentIds(window)
    log_ms = NOW_MS
    for step, (id_number, advance) in enumerate(ops):
        log_ms += advance * 60_000 * 10
        a = plain.add(f"id-{id_number}", log_ms)
        b = trimmed.add(f"id-{id_number}", log_ms)
        assert a == b
        if step % evict_every == 0:
            trimmed._evict()


# -- groups ----------------------------------------------------------------------------------


def test_group_membership_is_the_newest_full_list() -> None:
    """Each group event replaces the member list; a member removed loses the group's limit."""
    limiter = Limiter(
        config=LimitsConfig(enabled=True, default_limit_micros=1_000, group_overrides={"g": 10})
    )
    ledger = limiter.ledger
    ledger.apply(group("g-1", "g", ["ann", "bob"]), partition=2, offset=0, log_ms=NOW_MS)
    assert limiter.decide("bob", NOW_S).source == "group"
    later = NOW + timedelta(minutes=1)
    ledger.apply(group("g-2", "g", ["ann"], at=later), partition=2, offset=1, log_ms=NOW_MS)
    assert ledger.user_groups == {"ann": ("g",)}
    bob = limiter.decide("bob", NOW_S)
    assert (bob.source, bob.limit_micros) == ("default", 1_000)
    ann = limiter.decide("ann", NOW_S)
    assert (ann.source, ann.group_id, ann.limit_micros) == ("group", "g", 10)


def test_an_older_group_event_read_later_does_not_win() -> None:
    """Membership follows `occurred_at` (then log position), whatever order partitions are read in."""
    ledger = Ledger()
    newer = group("n", "g", ["ann"], at=NOW + timedelta(minutes=1))
    older = group("o", "g", ["bob"], at=NOW)
    assert ledger.apply(newer, partition=0, offset=9, log_ms=NOW_MS) == "group"
    assert ledger.apply(older, partition=5, offset=1, log_ms=NOW_MS) == "stale"
    assert ledger.user_groups == {"ann": ("g",)}
    # Same time: the later log position wins; re-reading the same event changes nothing.
    same = group("s", "g", ["cat"], at=NOW + timedelta(minutes=1))
    assert ledger.apply(same, partition=0, offset=10, log_ms=NOW_MS) == "group"
    assert ledger.apply(same, partition=0, offset=10, log_ms=NOW_MS) == "group"
    assert ledger.user_groups == {"cat": ("g",)}


# -- snapshots -------------------------------------------------------------------------------


def sample_events(seed: int, count: int) -> list[tuple[Event, int, int]]:
    """A reproducible mix of usage (with resends), titles, unpriced usage and group changes."""
    rng = random.Random(seed)
    users = [f"user-{i}" for i in range(8)]
    offsets = [0] * 4
    sent: list[ChatUsageRecorded] = []
    out: list[tuple[Event, int, int]] = []
    for n in range(count):
        roll = rng.random()
        event: Event
        if roll < 0.1 and sent:
            event = rng.choice(sent)  # a resend of the very same event
        elif roll < 0.2:
            members = rng.sample(users, rng.randint(0, 4))
            at = NOW + timedelta(seconds=rng.randint(-100, 100))
            org = rng.choice([None, *ORGS])
            event = group(f"grp-{n}", rng.choice(["g1", "g2"]), members, at=at, org=org)
        else:
            at = NOW - timedelta(days=rng.choice([0, 0, 0, 1, 3, 20, 40]))
            cost = rng.choice([None, 0, 1, 250, 10_000])
            purpose = "title" if rng.random() < 0.1 else "chat"
            # Most users spend in one organisation; a few in several, some without one.
            user = rng.choice(users)
            org = rng.choice(
                [ORGS[users.index(user) % 2], ORGS[users.index(user) % 2], *ORGS, None]
            )
            usage = chat(f"evt-{n}", user, cost, at=at, purpose=purpose, org=org)
            sent.append(usage)
            event = usage
        key = event.partition_key
        partition = sum(map(ord, key)) % 4
        out.append((event, partition, offsets[partition]))
        offsets[partition] += 1
    return out


def totals(limiter: Limiter) -> dict[str, object]:
    """Every answer a check can read, and the rest of the state."""
    limiter.ledger.prune(limiter.current_periods(NOW_S))
    current = limiter.current_periods(NOW_S)
    return {
        "spend": [limiter.ledger.totals(i, current[i].key) for i in (DAY, WEEK, MONTH)],
        "groups": {u: sorted(g) for u, g in limiter.ledger.user_groups.items()},
        "models": limiter.ledger.models_used(),
        "orgs": {
            u: [limiter.ledger.spent_in_org(MONTH, current[MONTH].key, u, o) for o in ORGS]
            for u in limiter.ledger.totals(MONTH, current[MONTH].key)
        },
        "positions": dict(limiter.ledger.positions),
    }


def test_snapshot_round_trip_keeps_every_answer_and_the_dedup_window() -> None:
    """A ledger dumped and loaded answers the same, dumps the same, and still knows the ids seen."""
    events = sample_events(1, 300)
    ledger = Ledger()
    fold(ledger, events)
    loaded = snapshot.decode(snapshot.encode(ledger))
    assert totals(Limiter(loaded)) == totals(Limiter(ledger))
    assert {p: r.buckets for p, r in loaded.recent.items()} == {
        p: r.buckets for p, r in ledger.recent.items()
    }
    assert (loaded.applied, loaded.models, loaded.groups, loaded.group_orgs) == (
        ledger.applied,
        ledger.models,
        ledger.groups,
        ledger.group_orgs,
    )
    assert (loaded.user_orgs, loaded.org_spend) == (ledger.user_orgs, ledger.org_spend)
    resend, partition, _ = next(
        e for e in events if isinstance(e[0], ChatUsageRecorded) and e[0].data.purpose == "chat"
    )
    assert loaded.apply(resend, partition=partition, offset=999, log_ms=NOW_MS) == "duplicate"


def test_unknown_snapshot_format_is_refused() -> None:
    """A snapshot of another format is refused rather than misread."""
    with pytest.raises(ValueError, match="format"):
        snapshot.decode(b'{"format": 999}')


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), split=st.integers(0, 200), overlap=st.integers(0, 40))
def test_replaying_the_tail_from_any_snapshot_gives_the_same_totals(
    seed: int, split: int, overlap: int
) -> None:
    """Folding a prefix, snapshotting, loading and folding the rest (re-reading some) changes nothing."""
    events = sample_events(seed, 200)
    straight = Ledger()
    fold(straight, events)
    first = Ledger()
    fold(first, events[:split])
    resumed = snapshot.decode(snapshot.encode(first))
    # A crash after applying but before the snapshot: some events come again.
    fold(resumed, events[max(0, split - overlap) :])
    assert totals(Limiter(resumed)) == totals(Limiter(straight))


def test_snapshot_image_is_detached_and_large_buckets_round_trip() -> None:
    """An image is unaffected by later events, and buckets bigger than one encoding chunk survive."""
    ledger = Ledger()
    for n in range(25_000):
        ledger.add_spend(f"user-{n}", n + 1, NOW)
    ledger.apply(chat("e1", "user-1", 5), partition=0, offset=0, log_ms=NOW_MS)
    image = snapshot.image(ledger)
    ledger.add_spend("user-1", 1_000, NOW)
    ledger.apply(chat("e2", "user-2", 5), partition=0, offset=1, log_ms=NOW_MS)
    loaded = snapshot.decode(image.encode())
    assert month_total(loaded, "user-1") == 2 + 5
    assert month_total(loaded, "user-24999") == 25_000
    assert len(loaded.spend[MONTH][period_key("month", NOW)]) == 25_000
    assert loaded.apply(chat("e2", "user-2", 5), partition=0, offset=1, log_ms=NOW_MS) == "spend"
    assert (
        loaded.apply(chat("e1", "user-1", 5), partition=0, offset=2, log_ms=NOW_MS) == "duplicate"
    )


# -- identity, saturation and old snapshots ------------------------------------------------------


def test_one_id_for_two_users_is_two_events_and_a_copy_is_one() -> None:
    """Duplicates are by identity: the same id for another user counts for that user too."""
    ledger = Ledger()
    assert ledger.apply(chat("same", "x", 100), partition=0, offset=0, log_ms=NOW_MS) == "spend"
    assert ledger.apply(chat("same", "y", 40), partition=0, offset=1, log_ms=NOW_MS) == "spend"
    resend = chat("same", "x", 999)
    assert ledger.apply(resend, partition=0, offset=2, log_ms=NOW_MS) == "duplicate"
    assert (month_total(ledger, "x"), month_total(ledger, "y")) == (100, 40)


def test_spend_saturates_at_the_largest_exact_total() -> None:
    """A period's total never passes 2^53 - 1, whatever is added and in whatever order."""
    ledger = Ledger()
    for n in range(9_008):
        ledger.apply(
            chat(f"big-{n}", "whale", MAX_EVENT_COST_MICROS), partition=1, offset=n, log_ms=NOW_MS
        )
    assert month_total(ledger, "whale") == MAX_TOTAL
    ledger.add_spend("whale", 1, NOW)
    assert month_total(ledger, "whale") == MAX_TOTAL
    assert ledger.spent(DAY, period_key("day", NOW), "whale") == MAX_TOTAL


FORMAT_2 = Path(__file__).parent.parent / "fixtures" / "limits" / "snapshot-format-2.json"


def test_a_format_1_snapshot_keeps_its_spend_and_positions_but_not_its_ids() -> None:
    """Snapshots from before identities still load: totals and positions carry over."""
    doc = orjson.loads(FORMAT_2.read_bytes())
    doc["format"] = 1
    loaded = snapshot.decode(orjson.dumps(doc))
    assert (month_total(loaded, "ann"), month_total(loaded, "bob")) == (1000, 50)
    assert loaded.positions == {0: 2, 1: 2, 2: 1}
    assert loaded.user_groups == {"ann": ("eng",), "bob": ("eng",)}
    assert loaded.recent == {}
