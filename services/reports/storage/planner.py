"""How a query range becomes the arrays the SQL unnests: rollup spans, exact spans, edges.

`domain.cover` says which rollup periods (and which parts of days or hours, read from the
archive) make up a range; these helpers lay them out as the parallel arrays that the
statements in `sql` take as parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from services.reports.domain import ACTIVITY_GRAINS, Span, cover, floor_day

__all__ = ["ActivityPlan", "Edges", "activity_args", "like_pattern", "split_spans"]


def split_spans(spans: Sequence[Span]) -> tuple[list[object], list[object]]:
    """Rollup spans as (grains, los, his) arrays and exact spans as (los, his) arrays."""
    rollup = [s for s in spans if s.grain != "x"]
    exact = [s for s in spans if s.grain == "x"]
    return (
        [[s.grain for s in rollup], [s.lo for s in rollup], [s.hi for s in rollup]],
        [[s.lo for s in exact], [s.hi for s in exact]],
    )


@dataclass
class ActivityPlan:
    """Every bucket's rollup spans and exact spans, as the arrays the activity queries unnest.

    The rollup spans of bucket i are the 1-based, inclusive slice `[first[i], last[i]]` of the
    span arrays (an empty slice has first > last); its exact spans (parts of days) are listed
    with their bucket's index, for `SELECT_ACTIVITY_EDGES`.
    """

    grains: list[str] = field(default_factory=list)
    los: list[datetime] = field(default_factory=list)
    his: list[datetime] = field(default_factory=list)
    first: list[int] = field(default_factory=list)
    last: list[int] = field(default_factory=list)
    x_index: list[int] = field(default_factory=list)
    x_days: list[datetime] = field(default_factory=list)
    x_los: list[datetime] = field(default_factory=list)
    x_his: list[datetime] = field(default_factory=list)
    # Whether a bucket is exactly one rollup period (a week from a Monday, a month from the
    # 1st, a day from midnight): then each of its users has one row per org.
    single: list[bool] = field(default_factory=list)

    @classmethod
    def of(cls, ranges: Iterable[tuple[datetime, datetime]]) -> ActivityPlan:
        plan = cls()
        for i, (start, end) in enumerate(ranges):
            plan.first.append(len(plan.grains) + 1)
            spans = cover(start, end, ACTIVITY_GRAINS)
            for span in spans:
                if span.grain == "x":
                    plan.x_index.append(i)
                    plan.x_days.append(floor_day(span.lo))
                    plan.x_los.append(span.lo)
                    plan.x_his.append(span.hi)
                else:
                    plan.grains.append(span.grain)
                    plan.los.append(span.lo)
                    plan.his.append(span.hi)
            plan.last.append(len(plan.grains))
            plan.single.append(len(spans) == 1 and spans[0].grain != "x" and spans[0].periods == 1)
        return plan


@dataclass
class Edges:
    """What the archive adds to each bucket (from `SELECT_ACTIVITY_EDGES`), sliced per bucket."""

    user_ids: list[str] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    first: list[int] = field(default_factory=list)
    last: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, rows: Sequence[asyncpg.Record], buckets: int) -> Edges:
        edges = cls()
        by_bucket: list[list[asyncpg.Record]] = [[] for _ in range(buckets)]
        for row in rows:
            by_bucket[row["bucket"]].append(row)
        for found in by_bucket:
            edges.first.append(len(edges.user_ids) + 1)
            for row in found:
                edges.user_ids.append(row["user_id"])
                edges.durations.append(row["duration_us"])
                edges.counts.append(row["sessions"])
            edges.last.append(len(edges.user_ids))
        return edges


def activity_args(plan: ActivityPlan, edges: Edges) -> tuple[list[Any], ...]:
    """`$1`–`$10` of `SELECT_ACTIVITY` and `SELECT_ACTIVITY_JSON`."""
    return (
        plan.grains, plan.los, plan.his, edges.user_ids, edges.durations, edges.counts,
        plan.first, plan.last, edges.first, edges.last,
    )  # fmt: skip


def like_pattern(search: str) -> str:
    """A case-insensitive substring pattern with LIKE's wildcards taken literally."""
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
