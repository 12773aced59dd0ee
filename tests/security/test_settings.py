"""Hostile configuration: every duration setting of every service, given a value no duration can
hold, stops the service with a message naming the setting, never with an OverflowError."""

from __future__ import annotations

import typing
from datetime import timedelta

import pytest
from pydantic import ValidationError

from libs.service.settings import CommonSettings
from services.ingest.config import IngestSettings
from services.limits.config import LimitsSettings
from services.publisher.config import PublisherSettings
from services.reports.config import ReportsSettings

SETTINGS: tuple[type[CommonSettings], ...] = (
    IngestSettings,
    LimitsSettings,
    ReportsSettings,
    PublisherSettings,
)
HOSTILE = ("inf", "-inf", "nan", "1e400", "1e308", "99999999999d", "5m\x00", "\x1b[31m5s", "-5s")


def _durations(settings: type[CommonSettings]) -> list[str]:
    """The environment names of the settings that read a duration (`17m`, `2s`, `500ms`)."""
    hints = typing.get_type_hints(settings, include_extras=True)
    names = []
    for name, field in settings.model_fields.items():
        base = typing.get_args(hints[name])[0] if typing.get_args(hints[name]) else hints[name]
        if base in (timedelta, float) and any(
            "duration" in repr(m).lower() or "_seconds" in repr(m) for m in field.metadata
        ):
            names.append(field.alias or name)
    return names


CASES = [
    (settings, variable, value)
    for settings in SETTINGS
    for variable in _durations(settings)
    for value in HOSTILE
]


def test_the_duration_settings_are_found() -> None:
    """The walk below finds the duration settings (it would pass vacuously otherwise)."""
    found = {v for _, v, _ in CASES}
    assert {"TOLLGATE_NOTIFY_RETENTION", "TOLLGATE_NOTIFY_POLL", "PUBLISH_INTERVAL"} <= found


@pytest.mark.parametrize(("settings", "variable", "value"), CASES)
def test_a_hostile_duration_is_refused_naming_the_setting(
    settings: type[CommonSettings], variable: str, value: str
) -> None:
    """Non-finite, astronomically long, negative or control-laden durations are a validation
    error that names the variable."""
    with pytest.raises(ValidationError, match=variable):
        settings.model_validate({"DATABASE_URL": "postgresql://unused", variable: value})
