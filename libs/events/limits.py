"""The limits contract: its paths, the message over the limit, and the limit status model.

Limits answers with `LimitStatus`; reports (the cost detail view), the client library
(`TollgateClient.limit_status`) and the simulator read it with the same model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from pydantic import BaseModel, ConfigDict

from libs.events.vocabulary import LimitSource, Period

LIMIT_CHECK_PATH: Final = "/api/v1/limits/check"
LIMIT_STATUS_PATH: Final = "/api/v1/limits/status/{user_id}"
#: The `message` of a check refused because the user's spend reached their limit.
LIMIT_EXCEEDED_MESSAGE: Final = "Chat usage limit exceeded."


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
