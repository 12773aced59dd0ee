"""When a budget notification is due, decided from the limiter's own decision (no I/O).

A notification is due once per user, period (its kind and start) and type:

- `budget.warning` when the period's spend is at least `warning_threshold_percent` of the
  effective limit (integer arithmetic: `spent × 100 ≥ limit × percent`);
- `budget.limit_reached` when the spend is at least the limit: exactly when a check would
  answer 409 (`not decision.allowed`).

Both are *levels*, not edges: whoever evaluates a user whose spend is at or past a threshold
finds the same notification due, and the store records it once under its key. That is what
makes replays, several replicas and restarts harmless, and what lets a replica that died
before its record was written be replaced by any later evaluation (see `recorder.py`).
The limit, its source and the group come from `Limiter.decide`, the one place that applies
the priority rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from libs.events.vocabulary import (
    BUDGET_LIMIT_REACHED,
    BUDGET_WARNING,
    BudgetNotification,
    Period,
)
from services.limits.domain import Decision

Kind = BudgetNotification
WARNING: Final = BUDGET_WARNING
LIMIT_REACHED: Final = BUDGET_LIMIT_REACHED
#: The order notifications of one user are recorded (and delivered) in.
KINDS: Final[tuple[Kind, ...]] = (WARNING, LIMIT_REACHED)
#: `threshold_percent` of a limit notice.
LIMIT_PERCENT: Final = 100

#: (type, user, organisation scope, period, period start as epoch seconds): the unique key.
CrossingKey = tuple[str, str, str, str, int]


@dataclass(frozen=True, slots=True)
class Crossing:
    """One notification that is due, with the facts limits decided it on."""

    kind: Kind
    user_id: str
    org_id: str | None
    period: Period
    period_start: datetime
    period_end: datetime
    threshold_percent: int
    limit_micros: int
    spent_micros: int
    source: str
    group_id: str | None

    @property
    def key(self) -> CrossingKey:
        """What makes it once-only: type, user, organisation, period and its start."""
        return (
            self.kind,
            self.user_id,
            self.org_id or "",
            self.period,
            int(self.period_start.timestamp()),
        )

    def facts(self) -> dict[str, object]:
        """The notification's data as limits knows it; the notifier adds the names."""
        return {
            "user_id": self.user_id,
            "org_id": self.org_id,
            "threshold_percent": self.threshold_percent,
            "limit_micros": self.limit_micros,
            "spent_micros": self.spent_micros,
            "period": self.period,
            "period_start": _iso(self.period_start),
            "period_end": _iso(self.period_end),
            "source": self.source,
            "group_id": self.group_id,
        }


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def warning_reached(spent_micros: int, limit_micros: int, percent: int) -> bool:
    """Whether `spent_micros` is at least `percent` % of `limit_micros`, exactly."""
    return spent_micros * 100 >= limit_micros * percent


def due(decision: Decision, user_id: str, warning_percent: int | None) -> list[Crossing]:
    """The notifications due for a user at this decision, warning first.

    Nothing is due without a limit. The warning is due at or past its share, unless warnings
    are off (`None`); the limit notice when the check itself would refuse (spent ≥ limit).
    """
    limit = decision.limit_micros
    if not decision.limited or limit is None:
        return []
    kinds: list[tuple[Kind, int]] = []
    if warning_percent is not None and warning_reached(
        decision.spent_micros, limit, warning_percent
    ):
        kinds.append((WARNING, warning_percent))
    if not decision.allowed:
        kinds.append((LIMIT_REACHED, LIMIT_PERCENT))
    current = decision.current
    return [
        Crossing(
            kind=kind,
            user_id=user_id,
            # The organisation whose limit applied (None when it holds across organisations),
            # so a limit reached in one organisation is told once, apart from another's.
            org_id=decision.org_id,
            period=current.period,
            period_start=current.start,
            period_end=current.end,
            threshold_percent=percent,
            limit_micros=limit,
            spent_micros=decision.spent_micros,
            source=decision.source,
            group_id=decision.group_id,
        )
        for kind, percent in kinds
    ]
