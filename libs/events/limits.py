"""The limit status contract: what limits answers; reports, the client and the simulator read it."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from libs.events.vocabulary import LimitSource, Period


class LimitStatus(BaseModel):
    """A user's limit, spend and period now (`GET /api/v1/limits/status/{user_id}`)."""

    model_config = ConfigDict(frozen=True)

    is_limited: bool
    period: Period
    limit_micros: int | None
    spent_micros: int
    period_start: datetime
    period_end: datetime
    source: LimitSource
    group_id: str | None
    org_id: str | None
