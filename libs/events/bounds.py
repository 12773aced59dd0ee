"""What any consumer can store and sum: the one set of bounds every part of Tollgate relies on.

Ingest refuses an event that breaks these rules (a 422-style rejection naming the field), and
every consumer decodes with the same rules, so what ingest accepts, every consumer can store,
and a record that breaks them (produced straight to Kafka) is dead-lettered by all of them
alike. The numbers are derived here once:

- JSON clients (JavaScript above all) hold integers exactly up to 2^53 - 1, PostgreSQL's
  bigint up to 2^63 - 1. Every total (a user's spend in a period, a rollup's tokens, a team's
  experiments) therefore *saturates* at `MAX_TOTAL` = 2^53 - 1: below it every figure is
  exact, at it a figure means "at least this much", and no sum can ever overflow a bigint
  (the stored total plus one batch's saturated sum is below 2^54).
- One event may cost at most `MAX_EVENT_COST_MICROS` (10^12 micro-dollars, $1,000,000), so a
  user's period holds at least `MAX_TOTAL // MAX_EVENT_COST_MICROS` (9,007) such events
  exactly before saturating.
- Token counts are at most `MAX_EVENT_TOKENS` (10^12) per kind and prices at most
  `MAX_PRICE_PER_MILLION` ($1,000,000 per million tokens, i.e. 10^6 micro-dollars per token):
  Σ tokens × price then stays below 2^63 for anyone who prices in 64-bit integers, and ingest
  refuses the event when that cost is above the per-event cap.
- Counts (sessions, API calls, experiments) are at most `MAX_EVENT_COUNT` (10^9) per event,
  a session lasts at most `MAX_DURATION_MS` (366 days), and a storage sample is at most
  `MAX_SIZE_MB` (10^12 MB, an exabyte) and finite: a month's sum over a million projects is
  still a finite double.
- Text: PostgreSQL's text and jsonb cannot hold U+0000, and UTF-8 cannot encode a lone
  surrogate. No string anywhere in an event may contain a control character (U+0000-U+001F,
  U+007F-U+009F) or a surrogate (U+D800-U+DFFF); ids, names and emails never need one.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

__all__ = [
    "MAX_DURATION_MS",
    "MAX_EVENT_COST_MICROS",
    "MAX_EVENT_COUNT",
    "MAX_EVENT_TOKENS",
    "MAX_JSON_INT",
    "MAX_PRICE_PER_MILLION",
    "MAX_SIZE_MB",
    "MAX_TOTAL",
    "capped",
    "find_unstorable",
    "may_hold_unstorable",
    "text_problem",
]

#: The largest integer every JSON client holds exactly.
MAX_JSON_INT: Final = 2**53 - 1
#: Every total saturates here: exact below, "at least this much" at it, never an overflow.
MAX_TOTAL: Final = MAX_JSON_INT
#: The largest cost one event may carry ($1,000,000).
MAX_EVENT_COST_MICROS: Final = 10**12
#: The largest token count of one kind in one event.
MAX_EVENT_TOKENS: Final = 10**12
#: The largest count (sessions, calls, experiments) one event may carry.
MAX_EVENT_COUNT: Final = 10**9
#: The longest session one event may report: 366 days.
MAX_DURATION_MS: Final = 366 * 86_400_000
#: The largest storage sample, in MB (10^12 MB is an exabyte).
MAX_SIZE_MB: Final = 1e12
#: The highest price per million tokens of any kind, in dollars.
MAX_PRICE_PER_MILLION: Final = Decimal(1_000_000)

_UNSTORABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Bytes of a JSON document that can stand for such a character: any escape (the only way to
# write U+0000-U+001F or a surrogate), DEL, and the UTF-8 lead byte of U+0080-U+00BF.
_MAYBE_UNSTORABLE_BYTES = (b"\\", b"\x7f", b"\xc2")


def capped(total: int) -> int:
    """A sum brought down to `MAX_TOTAL`, as every consumer saturates its totals."""
    return min(total, MAX_TOTAL)


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None when it can."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    char = found.group()
    what = "a surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
    return (
        f"contains {what} (U+{ord(char):04X} at position {found.start()}), "
        "which no text column can hold"
    )


def may_hold_unstorable(raw: bytes) -> bool:
    """Whether JSON bytes can hold an unstorable character at all (most events cannot)."""
    return any(marker in raw for marker in _MAYBE_UNSTORABLE_BYTES)


def find_unstorable(value: object, path: str = "") -> str | None:
    """`path: problem` for the first string (key or value) in a JSON value that cannot be stored."""
    if isinstance(value, str):
        problem = text_problem(value)
        return None if problem is None else f"{path or 'value'}: {problem}"
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and (problem := text_problem(key)) is not None:
                return f"{where}: the field name {problem}"
            found = find_unstorable(item, where)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_unstorable(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None
