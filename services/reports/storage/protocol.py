"""What the reports ask of their store: `ReportStore`."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from services.reports.domain import (
    Bucket,
    BucketActivity,
    ChargebackData,
    CostSummary,
    CostUsersPage,
    GroupInfo,
    ProfilePage,
    UserProfile,
    Window,
)

__all__ = ["ReportStore"]


class ReportStore(Protocol):
    """Answers the reports' questions."""

    async def ping(self) -> bool:
        """Whether the store answers."""
        ...

    async def activity(
        self, buckets: Sequence[Bucket], *, category: str, org: str | None
    ) -> list[BucketActivity]:
        """Per bucket, each active user's overlap and session count (`category` '*' = any)."""
        ...

    async def activity_report(
        self, buckets: Sequence[Bucket], *, category: str, org: str | None
    ) -> dict[str, object]:
        """The Activity response body (`domain.activity_body`'s shape) for these buckets."""
        ...

    async def profiles(self, user_ids: Collection[str]) -> dict[str, UserProfile]:
        """Directory entries of the users that have one."""
        ...

    async def cost_users(
        self,
        window: Window,
        *,
        search: str | None,
        limit: int | None,
        offset: int,
        ascending: bool = False,
    ) -> CostUsersPage:
        """Per-user chat spend in the window, cost descending (or ascending), filtered by name
        or username."""
        ...

    async def directory_users(self, *, search: str | None, limit: int, offset: int) -> ProfilePage:
        """Directory users by username, filtered by a substring of name or username, or an id."""
        ...

    async def directory_groups(self) -> list[GroupInfo]:
        """Every directory group with its member count, by name."""
        ...

    async def cost_user(self, window: Window, user_id: str) -> CostSummary | None:
        """One user's chat spend in the window; None for a user never seen."""
        ...

    async def chargeback(self, month: Window) -> ChargebackData:
        """Directory state and the month's usage for the chargeback report."""
        ...
