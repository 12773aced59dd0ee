"""The closed sets of strings that more than one service, the client or the simulator speak.

Each set is a `Literal` (so pydantic models list it as an `enum` in the OpenAPI document and
mypy checks every spelling) with its values as a tuple beside it, derived from the `Literal`
rather than written again. A module that needs one of these sets imports it from here.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

#: What an `activity.session.v1` was spent in (Coder's Activity API categories).
ActivityCategory = Literal["ide", "login", "app", "tunnel", "web_terminal"]
ACTIVITY_CATEGORIES: Final[tuple[ActivityCategory, ...]] = get_args(ActivityCategory)
#: The activity query's category meaning "every category".
ANY_CATEGORY: Final = "any"
#: What the activity query's `category` accepts.
ACTIVITY_CATEGORY_FILTERS: Final[tuple[str, ...]] = (ANY_CATEGORY, *ACTIVITY_CATEGORIES)

#: The activity query's bucket lengths.
ActivityInterval = Literal["1 day", "1 week", "1 month", "90 day", "1 year"]
ACTIVITY_INTERVALS: Final[tuple[ActivityInterval, ...]] = get_args(ActivityInterval)

#: The calendar period (UTC) a usage limit applies to.
Period = Literal["day", "week", "month"]
PERIODS: Final[tuple[Period, ...]] = get_args(Period)

#: Where a user's limit comes from: their own override, a group's, the default, or nowhere.
LimitSource = Literal["user", "group", "default", "none"]
LIMIT_SOURCES: Final[tuple[LimitSource, ...]] = get_args(LimitSource)

#: The budget notifications limits records and reports delivers.
BudgetNotification = Literal["budget.warning", "budget.limit_reached"]
BUDGET_WARNING: Final[BudgetNotification] = "budget.warning"
BUDGET_LIMIT_REACHED: Final[BudgetNotification] = "budget.limit_reached"
BUDGET_NOTIFICATIONS: Final[tuple[BudgetNotification, ...]] = get_args(BudgetNotification)
