"""Bytes on the log to event models and back, with upcasting of old versions.

Consumers call `decode` on every record, ingest calls `parse_event` on
every element of a batch it already parsed, and both must turn any bad
input into one exception carrying a reason fit for a 4xx body or a
dead-letter record. Old type versions are rewritten to the current one
on the raw dict before validation, so models only ever describe the
current shape.
"""

from collections.abc import Callable, Iterable
from typing import Any, Final, cast

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from libs.events.bounds import find_unstorable, may_hold_unstorable
from libs.events.models import Envelope, Event
from libs.events.registry import EVENT_TYPES
from libs.events.rejections import RejectReason

__all__ = [
    "DEFAULT_UPCASTERS",
    "DecodeError",
    "EventValidationError",
    "Upcaster",
    "Upcasters",
    "decode",
    "encode",
    "format_validation_errors",
    "parse_event",
    "register_upcaster",
]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# A batch of thousands of bad member ids must not become a megabyte of error text.
_MAX_REPORTED_ERRORS: Final = 10


class DecodeError(ValueError):
    """Raw input is not a valid event; `reason` says why in one line, `code` as a stable code."""

    def __init__(
        self,
        reason: str,
        *,
        event_id: str | None = None,
        code: RejectReason = RejectReason.INVALID,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id
        self.code = code


class EventValidationError(DecodeError):
    """A parsed JSON value is not a valid event; `message` names the offending field paths."""

    @property
    def message(self) -> str:
        return self.reason


class Upcasters:
    """Functions that rewrite an old event type's raw dict into its successor.

    Each function returns a new dict whose `type` is the next version; the
    chain is followed until a type without an upcaster is reached, so
    v1 -> v2 -> v3 needs only one function per step.
    """

    def __init__(self) -> None:
        self._by_type: dict[str, Upcaster] = {}

    def register(self, old_type: str, fn: Upcaster) -> None:
        """Rewrite events of `old_type` with `fn` before validation."""
        if old_type in EVENT_TYPES:
            raise ValueError(f"{old_type!r} is a current event type and cannot be upcast")
        if old_type in self._by_type:
            raise ValueError(f"an upcaster for {old_type!r} is already registered")
        self._by_type[old_type] = fn

    def __contains__(self, type_name: object) -> bool:
        return isinstance(type_name, str) and type_name in self._by_type

    def upcast(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Follow the upcasters from `raw["type"]` to a current type; `raw` itself is left as is."""
        # A chain can visit each registered type once; more steps means a cycle.
        for _ in range(len(self._by_type) + 1):
            type_name = raw.get("type")
            fn = self._by_type.get(type_name) if isinstance(type_name, str) else None
            if fn is None:
                return raw
            raw = fn(raw)
        raise ValueError(f"upcasters for {raw.get('type')!r} form a cycle")


# Upcasters registered by the modules that introduce new versions; tests use their own instance.
DEFAULT_UPCASTERS: Final = Upcasters()


def register_upcaster(old_type: str, fn: Upcaster) -> None:
    """Register `fn` on the default upcasters used by `decode` and `parse_event`."""
    DEFAULT_UPCASTERS.register(old_type, fn)


def encode(event: Envelope) -> bytes:
    """Serialise an event to compact JSON with UTC times ending in `Z`."""
    return orjson.dumps(event.model_dump(mode="json"))


def decode(raw: bytes | None, *, upcasters: Upcasters = DEFAULT_UPCASTERS) -> Event:
    """Parse one event from JSON bytes, raising `DecodeError` for anything invalid."""
    # A record without a value (a tombstone) is as undecodable as garbage, and
    # must reach the dead-letter topic rather than stop a consumer.
    if raw is None:
        raise DecodeError("record has no value", code=RejectReason.NO_VALUE)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason, code = _json_failure(raw, exc)
        raise DecodeError(reason, code=code) from None
    # Most records hold no escape at all, and then no character that text cannot store.
    return parse_event(obj, upcasters=upcasters, check_text=may_hold_unstorable(raw))


def parse_event(
    obj: object, *, upcasters: Upcasters = DEFAULT_UPCASTERS, check_text: bool = True
) -> Event:
    """Validate an already-parsed JSON value as an event, raising `EventValidationError`.

    Besides the model's own rules, no string anywhere in it may hold a character that
    PostgreSQL text cannot store (see `libs.events.bounds`); `check_text=False` skips that
    walk for input known to hold none.
    """
    if not isinstance(obj, dict):
        raise EventValidationError(
            "an event must be a JSON object", code=RejectReason.NOT_AN_OBJECT
        )
    raw_id = obj.get("id")
    event_id = raw_id if isinstance(raw_id, str) else None
    if check_text:
        problem = find_unstorable(obj)
        if problem is not None:
            raise EventValidationError(
                problem, event_id=event_id, code=RejectReason.UNSTORABLE_TEXT
            )
    type_name = obj.get("type")
    if type_name in upcasters:
        try:
            obj = upcasters.upcast(obj)
        except Exception as exc:
            raise EventValidationError(
                f"type: cannot upgrade {type_name!r} events: {exc}",
                event_id=event_id,
                code=RejectReason.NOT_UPGRADABLE,
            ) from exc
        type_name = obj.get("type")
    if type_name is None:
        raise EventValidationError("type: Field required", event_id=event_id)
    if not isinstance(type_name, str):
        raise EventValidationError("type: Input should be a valid string", event_id=event_id)
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        raise EventValidationError(
            f"type: unknown event type {type_name!r}",
            event_id=event_id,
            code=RejectReason.UNKNOWN_TYPE,
        )
    try:
        event = cls.model_validate(obj)
    except ValidationError as exc:
        raise EventValidationError(
            format_validation_errors(exc.errors(include_url=False, include_input=False)),
            event_id=event_id,
        ) from None
    # Every class in EVENT_TYPES is a member of the Event union.
    return cast("Event", event)


def format_validation_errors(errors: Iterable[ErrorDetails]) -> str:
    """Render pydantic errors as `path: message` joined by `; `, e.g. `data.input_tokens: ...`."""
    parts: list[str] = []
    total = 0
    for error in errors:
        total += 1
        if total > _MAX_REPORTED_ERRORS:
            continue
        path = _path(error["loc"])
        parts.append(f"{path}: {error['msg']}" if path else error["msg"])
    if total > _MAX_REPORTED_ERRORS:
        parts.append(f"and {total - _MAX_REPORTED_ERRORS} more errors")
    return "; ".join(parts)


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def _json_failure(raw: bytes, exc: orjson.JSONDecodeError) -> tuple[str, RejectReason]:
    # Only failed input pays for finding out whether the bytes were the problem.
    try:
        bytes(raw).decode()
    except UnicodeDecodeError as utf8:
        return f"invalid UTF-8 at byte {utf8.start}", RejectReason.INVALID_UTF8
    return f"invalid JSON: {exc}", RejectReason.INVALID_JSON
