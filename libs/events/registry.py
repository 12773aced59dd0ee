"""Lookup from a wire type name such as `chat.usage.v1` to its model.

Decoders dispatch on the type string themselves instead of through the
discriminated union: the lookup is one dict access, an unknown type gets a
message that says so, and validation errors carry paths without the union
tag in front.
"""

from collections.abc import Mapping
from types import MappingProxyType
from typing import get_args

from libs.events.models import Envelope, Event

__all__ = ["EVENT_TYPES", "UnknownEventTypeError", "event_class"]


class UnknownEventTypeError(LookupError):
    """The type string names no event in the catalogue."""

    def __init__(self, type_name: str) -> None:
        super().__init__(f"unknown event type {type_name!r}")
        self.type_name = type_name


def _build() -> Mapping[str, type[Envelope]]:
    union, _discriminator = get_args(Event)
    table: dict[str, type[Envelope]] = {}
    for cls in get_args(union):
        type_name = cls.model_fields["type"].default
        if not isinstance(type_name, str) or type_name in table:
            raise RuntimeError(f"{cls.__name__} needs a unique default for `type`")
        table[type_name] = cls
    return MappingProxyType(table)


EVENT_TYPES: Mapping[str, type[Envelope]] = _build()


def event_class(type_name: str) -> type[Envelope]:
    """Return the model for `type_name`, or raise `UnknownEventTypeError`."""
    try:
        return EVENT_TYPES[type_name]
    except KeyError:
        raise UnknownEventTypeError(type_name) from None
