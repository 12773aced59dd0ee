"""Encoding and decoding events: fixtures, error reasons, upcasting and round-trip properties."""

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.events import (
    DEFAULT_UPCASTERS,
    EVENT_TYPES,
    ChatUsage,
    ChatUsageRecorded,
    DecodeError,
    EventValidationError,
    Upcasters,
    decode,
    encode,
    parse_event,
)
from libs.events.bounds import MAX_EVENT_COST_MICROS, MAX_EVENT_TOKENS, may_hold_unstorable
from libs.events.codec import format_validation_errors
from libs.events.rejections import RejectReason

FIXTURES = Path(__file__).parent.parent / "fixtures" / "events"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))


def fixture(type_name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads((FIXTURES / f"{type_name}.json").read_bytes())
    return loaded


def test_every_registered_type_has_a_fixture() -> None:
    """Each type in the catalogue has exactly one fixture file named after it."""
    assert {path.stem for path in FIXTURE_FILES} == set(EVENT_TYPES)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda path: path.stem)
def test_fixture_round_trips(path: Path) -> None:
    """A fixture decodes to its type and re-encodes to the same JSON and the same event."""
    raw = path.read_bytes()
    event = decode(raw)
    assert event.type == path.stem
    encoded = encode(event)
    assert orjson.loads(encoded) == orjson.loads(raw)
    assert decode(encoded) == event


def test_encode_writes_utc_times_with_z() -> None:
    """Times are written in UTC with a `Z` suffix, whatever offset they were given in."""
    event = fixture("directory.user.v1")
    event["occurred_at"] = "2026-11-01T10:30:00+02:00"
    event["data"]["created_at"] = "2025-03-14T10:09:26.5-05:00"
    body = orjson.loads(encode(parse_event(event)))
    assert body["occurred_at"] == "2026-11-01T08:30:00Z"
    assert body["data"]["created_at"] == "2025-03-14T15:09:26.500000Z"


def test_decode_reports_invalid_json() -> None:
    """Bytes that are not JSON give a reason starting with `invalid JSON`."""
    with pytest.raises(DecodeError) as caught:
        decode(b'{"id": ')
    assert caught.value.reason.startswith("invalid JSON: ")
    assert caught.value.event_id is None


def test_decode_reports_invalid_utf8() -> None:
    """Bytes that are not UTF-8 are reported as such, with the offending position."""
    with pytest.raises(DecodeError) as caught:
        decode(b'{"id": "\xff"}')
    assert caught.value.reason == "invalid UTF-8 at byte 8"


def test_decode_reports_unknown_type() -> None:
    """An unknown type is a decode error that names the type and keeps the event id."""
    raw = orjson.dumps({**fixture("api.usage.v1"), "type": "api.usage.v7"})
    with pytest.raises(DecodeError) as caught:
        decode(raw)
    assert caught.value.reason == "type: unknown event type 'api.usage.v7'"
    assert caught.value.event_id == "01JC8Z6F4K8T1Y5A3C9MP2VD6G"


def test_decode_reports_validation_failures_with_paths() -> None:
    """A schema violation is a decode error whose reason names the field path."""
    event = fixture("chat.usage.v1")
    event["data"]["input_tokens"] = -5
    with pytest.raises(DecodeError) as caught:
        decode(orjson.dumps(event))
    assert isinstance(caught.value, EventValidationError)
    assert caught.value.reason == "data.input_tokens: Input should be greater than or equal to 0"


def test_decode_reports_a_record_without_value() -> None:
    """A Kafka record with a null value is a decode error, not a crash."""
    with pytest.raises(DecodeError, match="record has no value"):
        decode(None)


@pytest.mark.parametrize("raw", [b"[]", b'"chat.usage.v1"', b"null", b"42"])
def test_decode_rejects_json_that_is_not_an_object(raw: bytes) -> None:
    """A JSON value other than an object is not an event."""
    with pytest.raises(DecodeError, match="an event must be a JSON object"):
        decode(raw)


def test_parse_event_joins_every_error() -> None:
    """Several problems are reported together, separated by `; `, each with its path."""
    event = fixture("chat.usage.v1")
    event["id"] = 7
    event["data"]["input_tokens"] = "12"
    event["data"]["purpose"] = "summary"
    message = parse_event_message(event)
    assert message == (
        "id: Input should be a valid string; "
        "data.input_tokens: Input should be a valid integer; "
        "data.purpose: Input should be 'chat' or 'title'"
    )


def test_parse_event_keeps_only_string_ids() -> None:
    """The error carries the raw id when it was a string, and None otherwise."""
    event = fixture("chat.usage.v1")
    event["data"]["model"] = ""
    with pytest.raises(EventValidationError) as caught:
        parse_event(event)
    assert caught.value.event_id == "01JC8Z3K5W9F2T6Y4N7QH1RB0D"
    event["id"] = ["not", "an", "id"]
    with pytest.raises(EventValidationError) as caught:
        parse_event(event)
    assert caught.value.event_id is None


@pytest.mark.parametrize(
    ("type_value", "message"),
    [
        (None, "type: Field required"),
        (["chat.usage.v1"], "type: Input should be a valid string"),
        ({"name": "chat.usage.v1"}, "type: Input should be a valid string"),
    ],
)
def test_parse_event_rejects_missing_or_malformed_type(type_value: object, message: str) -> None:
    """A missing or non-string type is a validation error, not a crash."""
    event = fixture("chat.usage.v1")
    if type_value is None:
        del event["type"]
    else:
        event["type"] = type_value
    assert parse_event_message(event) == message


def test_long_error_lists_are_capped() -> None:
    """Hundreds of invalid members produce a bounded message that says how many were left out."""
    event = fixture("directory.group.v1")
    event["data"]["member_ids"] = [""] * 300
    message = parse_event_message(event)
    assert message.count("String should have at least 1 character") == 10
    assert message.endswith("; and 290 more errors")


def test_format_validation_errors_of_a_root_error_has_no_path() -> None:
    """An error without a location is rendered as its bare message."""
    assert format_validation_errors([]) == ""
    error: Any = {"type": "value_error", "loc": (), "msg": "Value error, broken", "input": None}
    assert format_validation_errors([error]) == "Value error, broken"


def test_parse_event_does_not_modify_its_input() -> None:
    """Validation leaves the caller's dict untouched."""
    event = fixture("chat.usage.v1")
    event["occurred_at"] = "2026-11-02T12:15:00+02:00"
    before = orjson.dumps(event)
    parse_event(event)
    assert orjson.dumps(event) == before


def parse_event_message(obj: object) -> str:
    with pytest.raises(EventValidationError) as caught:
        parse_event(obj)
    return caught.value.message


# Upcasting


def chat_v1_as(old_type: str) -> dict[str, Any]:
    event = fixture("chat.usage.v1")
    event["type"] = old_type
    return event


def test_upcasters_chain_through_every_version() -> None:
    """An old event passes through each registered step, in order, to the current type."""
    upcasters = Upcasters()
    steps: list[str] = []

    def v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
        steps.append(raw["type"])
        data = {k: v for k, v in raw["data"].items() if k != "cost_micros"}
        # v1 of the synthetic type called input tokens "prompt_tokens".
        data["prompt_tokens"] = data.pop("input_tokens")
        return {**raw, "type": "legacy.chat.v2", "data": data}

    def v2_to_current(raw: dict[str, Any]) -> dict[str, Any]:
        steps.append(raw["type"])
        data = dict(raw["data"])
        data["input_tokens"] = data.pop("prompt_tokens")
        return {**raw, "type": "chat.usage.v1", "data": data}

    upcasters.register("legacy.chat.v2", v2_to_current)
    upcasters.register("legacy.chat.v1", v1_to_v2)
    old = chat_v1_as("legacy.chat.v1")

    event = decode(orjson.dumps(old), upcasters=upcasters)

    assert steps == ["legacy.chat.v1", "legacy.chat.v2"]
    assert isinstance(event, ChatUsageRecorded)
    assert event.data.input_tokens == 1843
    assert event.data.cost_micros is None
    assert old["type"] == "legacy.chat.v1"


def test_upcasters_are_not_global() -> None:
    """An upcaster registered on one instance does not affect the default decoder."""
    upcasters = Upcasters()
    upcasters.register("legacy.chat.v1", lambda raw: {**raw, "type": "chat.usage.v1"})
    assert "legacy.chat.v1" in upcasters
    assert "legacy.chat.v1" not in DEFAULT_UPCASTERS
    assert parse_event(chat_v1_as("legacy.chat.v1"), upcasters=upcasters).type == "chat.usage.v1"
    with pytest.raises(EventValidationError, match=r"unknown event type 'legacy\.chat\.v1'"):
        parse_event(chat_v1_as("legacy.chat.v1"))


def test_current_types_cannot_be_upcast() -> None:
    """Registering an upcaster for a type still in the catalogue is refused."""
    with pytest.raises(ValueError, match="current event type"):
        Upcasters().register("chat.usage.v1", lambda raw: raw)


def test_an_old_type_has_one_upcaster() -> None:
    """A second upcaster for one old type is refused rather than replacing the first."""
    upcasters = Upcasters()
    upcasters.register("legacy.chat.v1", lambda raw: raw)
    with pytest.raises(ValueError, match="already registered"):
        upcasters.register("legacy.chat.v1", lambda raw: raw)


def test_upcaster_cycles_are_reported() -> None:
    """Upcasters that lead back to an old type fail with a validation error instead of looping."""
    upcasters = Upcasters()
    upcasters.register("legacy.a.v1", lambda raw: {**raw, "type": "legacy.b.v1"})
    upcasters.register("legacy.b.v1", lambda raw: {**raw, "type": "legacy.a.v1"})
    with pytest.raises(EventValidationError, match="form a cycle"):
        parse_event(chat_v1_as("legacy.a.v1"), upcasters=upcasters)


def test_failing_upcaster_becomes_a_validation_error() -> None:
    """An old event the upcaster cannot read is rejected with its id, not raised as a crash."""
    upcasters = Upcasters()
    upcasters.register("legacy.chat.v1", lambda raw: {**raw, "data": raw["data"]["missing"]})
    with pytest.raises(EventValidationError) as caught:
        parse_event(chat_v1_as("legacy.chat.v1"), upcasters=upcasters)
    assert caught.value.message.startswith("type: cannot upgrade 'legacy.chat.v1' events: ")
    assert caught.value.event_id == "01JC8Z3K5W9F2T6Y4N7QH1RB0D"


# Properties

# Every storable character: no control characters (category Cc) and no surrogates (Cs).
storable = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))
ids = st.text(storable, min_size=1, max_size=128)
names = st.text(storable, min_size=1, max_size=256)
tokens = st.integers(min_value=0, max_value=MAX_EVENT_TOKENS)
costs = st.integers(min_value=0, max_value=MAX_EVENT_COST_MICROS)
offsets = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
)
# Hypothesis takes naive bounds and attaches a zone from `timezones`.
times = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=offsets,
)

chat_usage_events = st.builds(
    ChatUsageRecorded,
    id=ids,
    occurred_at=times,
    org_id=st.none() | ids,
    user_id=ids,
    data=st.builds(
        ChatUsage,
        chat_id=ids,
        root_chat_id=st.none() | ids,
        message_id=ids,
        model=names,
        provider=st.none() | names,
        input_tokens=tokens,
        output_tokens=tokens,
        cache_read_tokens=tokens,
        cache_write_tokens=tokens,
        cost_micros=st.none() | costs,
        priced=st.booleans(),
        reported_cost_micros=st.none() | costs,
        purpose=st.sampled_from(["chat", "title"]),
    ),
)


@given(chat_usage_events)
def test_chat_usage_round_trips(event: ChatUsageRecorded) -> None:
    """Any valid chat usage decodes back to an equal event with its time in UTC."""
    decoded = decode(encode(event))
    assert decoded == event
    assert decoded.occurred_at.tzinfo is UTC
    assert encode(decoded) == encode(event)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
chat_fields = st.sampled_from(
    [*fixture("chat.usage.v1"), *(f"data.{name}" for name in fixture("chat.usage.v1")["data"])]
)


@given(field=chat_fields, value=json_values)
def test_any_json_value_in_any_field_is_accepted_or_rejected_cleanly(
    field: str, value: object
) -> None:
    """Whatever JSON value a field holds, parsing either succeeds or raises EventValidationError."""
    event = fixture("chat.usage.v1")
    target = event["data"] if field.startswith("data.") else event
    target[field.removeprefix("data.")] = value
    try:
        parse_event(event)
    except EventValidationError as exc:
        message = exc.message
    else:
        message = "valid"
    assert message


unstorable_chars = st.sampled_from(["\x00", "\x01", "\x1f", "\x7f", "\x85", "\x9f"])
text_fields = st.sampled_from(
    ["id", "user_id", "org_id", "data.chat_id", "data.message_id", "data.model", "data.provider"]
)


@given(field=text_fields, char=unstorable_chars, at=st.integers(min_value=0, max_value=5))
def test_a_control_character_in_any_text_field_is_refused_naming_it(
    field: str, char: str, at: int
) -> None:
    """A NUL or other control character anywhere in a string is refused with the field's path."""
    event = fixture("chat.usage.v1")
    target = event["data"] if field.startswith("data.") else event
    name = field.removeprefix("data.")
    target[name] = str(target[name])[:at] + char + str(target[name])[at:]
    with pytest.raises(EventValidationError) as caught:
        decode(orjson.dumps(event))
    assert caught.value.message.startswith(f"{field}: contains a control character")
    assert f"U+{ord(char):04X}" in caught.value.message


def test_a_control_character_in_a_member_list_or_field_name_is_refused() -> None:
    """Strings in lists and in unknown field names are checked too, not only known fields."""
    group = fixture("directory.group.v1")
    group["data"]["member_ids"] = ["ok", "bad\x00"]
    with pytest.raises(EventValidationError, match=r"data\.member_ids\[1\]: contains"):
        parse_event(group)
    chat = fixture("chat.usage.v1")
    chat["data"]["odd\x07"] = 1
    with pytest.raises(EventValidationError, match="the field name contains"):
        parse_event(chat)


def test_the_text_walk_is_skipped_only_for_bytes_that_cannot_hold_such_a_character() -> None:
    """Plain bytes skip the walk; escapes, DEL and U+0080-U+00BF bytes always get it."""
    assert not may_hold_unstorable(b'{"id": "plain ascii and \xc3\xa9"}')
    for raw in (b'"\\u0000"', b'"\\n"', b'"\x7f"', b'"\xc2\x85"'):
        assert may_hold_unstorable(raw), raw
    accented = fixture("chat.usage.v1")
    accented["data"]["model"] = "mod\u00e8le-\u00a0"
    decoded = decode(orjson.dumps(accented))
    assert isinstance(decoded, ChatUsageRecorded)
    assert decoded.data.model == "mod\u00e8le-\u00a0"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, RejectReason.NO_VALUE),
        (b'{"id": "\xff"}', RejectReason.INVALID_UTF8),
        (b'{"id": ', RejectReason.INVALID_JSON),
        (b"[]", RejectReason.NOT_AN_OBJECT),
        (b'{"id": "e", "user_id": "a\\u0000b"}', RejectReason.UNSTORABLE_TEXT),
        (b'{"id": "e", "type": "chat.usage.v9"}', RejectReason.UNKNOWN_TYPE),
        (b'{"id": "e", "type": "chat.usage.v1"}', RejectReason.INVALID),
        (b'{"id": "e"}', RejectReason.INVALID),
    ],
)
def test_every_decode_failure_carries_the_code_of_its_cause(
    raw: bytes | None, code: RejectReason
) -> None:
    """The code is decided where decoding fails, so nothing downstream reads it from the message."""
    with pytest.raises(DecodeError) as caught:
        decode(raw)
    assert caught.value.code is code


def test_a_failing_upcaster_is_not_upgradable() -> None:
    """An old type whose upcaster raises is refused as `not_upgradable`, naming the type."""
    upcasters = Upcasters()

    def broken(raw: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("data")

    upcasters.register("chat.usage.v0", broken)
    with pytest.raises(EventValidationError) as caught:
        parse_event({"id": "e", "type": "chat.usage.v0"}, upcasters=upcasters)
    assert caught.value.code is RejectReason.NOT_UPGRADABLE
    assert caught.value.reason.startswith("type: cannot upgrade 'chat.usage.v0' events")
