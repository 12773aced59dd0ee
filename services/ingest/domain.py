"""The rules an event must meet at the front door; no I/O here (pricing: libs.events.pricing)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from libs.events.models import Envelope
from libs.events.rejections import RejectReason


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one event of a batch was refused; rejections at the front door are permanent."""

    index: int
    id: str | None
    message: str
    reason: RejectReason

    def as_json(self) -> dict[str, object]:
        """The contract's shape (plus the index, for events without an id, and the code)."""
        return {
            "id": self.id,
            "index": self.index,
            "message": self.message,
            "permanent": True,
            "reason": self.reason.value,
        }


def check_time(event: Envelope, now: datetime, max_skew: timedelta) -> str | None:
    """A message naming `occurred_at` when the event claims to be from too far in the future."""
    if event.occurred_at > now + max_skew:
        return f"occurred_at: {event.occurred_at.isoformat()} is more than {max_skew} in the future"
    return None
