"""Durations in settings: `17m`, `2s`, `500ms`, `1h30m`, `30d`, or a plain number of seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Final

from pydantic import BeforeValidator

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _span(seconds: float, shown: object) -> timedelta:
    """A timedelta of `seconds`, or a ValueError naming `shown` when none can hold it."""
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {shown!r}: not a finite number")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(
            f"invalid duration {shown!r}: longer than {timedelta.max.days} days"
        ) from None


def parse_duration(text: str) -> timedelta:
    """`17m`, `2s`, `500ms`, `1h30m`, `30d` or a plain number of seconds, as a timedelta."""
    value = text.strip().lower()
    if not value:
        raise ValueError("empty duration; use e.g. 17m, 2s or 500ms")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return _span(seconds, text)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ValueError(f"invalid duration {text!r}; use e.g. 17m, 2s, 500ms or 1h30m")
    return _span(total, text)


def format_duration(value: timedelta) -> str:
    """The shortest of `500ms`, `2s`, `17m`, `4h`, `30d` that says `value` exactly."""
    ms = round(value.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _duration(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _span(value, value)
    return value


#: A settings field that reads `17m`, `2s`, `500ms`, `1h30m` or a number of seconds.
Duration = Annotated[timedelta, BeforeValidator(_duration)]


def _seconds(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value).total_seconds()
    return value


#: A settings field in seconds that also reads `500ms`, `15s` or `2m`.
Seconds = Annotated[float, BeforeValidator(_seconds)]
