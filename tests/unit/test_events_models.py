"""What the event catalogue accepts and rejects, and how each event is keyed on the log."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from libs.events import (
    EVENT_ADAPTER,
    EVENT_TYPES,
    ChatUsage,
    ChatUsageRecorded,
    DirectoryGroup,
    Envelope,
    EventValidationError,
    StorageSampled,
    UnknownEventTypeError,
    event_class,
    parse_event,
)
from libs.events.codec import encode
from libs.events.models import MAX_RUNTIME_MS

FIXTURES = Path(__file__).parent.parent / "fixtures" / "events"

USER_SCOPED = [
    "chat.usage.v1",
    "workspace.build.v1",
    "activity.session.v1",
    "api.usage.v1",
    "directory.user.v1",
]


def fixture(type_name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads((FIXTURES / f"{type_name}.json").read_bytes())
    return loaded


def with_data(type_name: str, **changes: object) -> dict[str, Any]:
    event = fixture(type_name)
    event["data"].update(changes)
    return event


def rejection(obj: object) -> str:
    with pytest.raises(EventValidationError) as caught:
        parse_event(obj)
    return caught.value.message


@pytest.mark.parametrize(
    ("type_name", "key"),
    [
        ("chat.usage.v1", "u-7f3a9c2e"),
        ("workspace.build.v1", "u-7f3a9c2e"),
        ("activity.session.v1", "u-7f3a9c2e"),
        ("api.usage.v1", "u-4b81d0f5"),
        ("directory.user.v1", "u-7f3a9c2e"),
        ("storage.sample.v1", "proj-llm-evals"),
        ("directory.group.v1", "grp-platform"),
        ("directory.team.v1", "team-research"),
        ("directory.project.v1", "proj-llm-evals"),
    ],
)
def test_partition_key_is_the_subject(type_name: str, key: str) -> None:
    """Each type is keyed by its subject: the user, or the group, team or project."""
    assert parse_event(fixture(type_name)).partition_key == key


@pytest.mark.parametrize("type_name", USER_SCOPED)
def test_user_scoped_types_require_user_id(type_name: str) -> None:
    """An event about a user's own activity without user_id is rejected, naming user_id."""
    event = fixture(type_name)
    del event["user_id"]
    assert rejection(event) == "user_id: Field required"


@pytest.mark.parametrize("type_name", USER_SCOPED)
def test_user_scoped_types_reject_null_user_id(type_name: str) -> None:
    """An explicit null user_id is as invalid as a missing one."""
    event = fixture(type_name)
    event["user_id"] = None
    assert rejection(event).startswith("user_id: ")


@pytest.mark.parametrize(
    "type_name",
    ["storage.sample.v1", "directory.group.v1", "directory.team.v1", "directory.project.v1"],
)
def test_non_user_types_need_no_user_id(type_name: str) -> None:
    """Project and directory entity events are valid without a user."""
    event = fixture(type_name)
    del event["user_id"]
    assert parse_event(event).user_id is None


def test_unknown_type_is_rejected_by_name() -> None:
    """An unregistered type string is reported as an unknown event type."""
    event = fixture("chat.usage.v1")
    event["type"] = "chat.usage.v9"
    assert rejection(event) == "type: unknown event type 'chat.usage.v9'"


def test_event_class_raises_for_unknown_type() -> None:
    """The registry lookup names the unknown type in its error."""
    with pytest.raises(UnknownEventTypeError, match=r"unknown event type 'nope\.v1'"):
        event_class("nope.v1")


def test_registry_maps_every_type_to_its_class() -> None:
    """Every type string maps to the class whose `type` literal it is."""
    assert len(EVENT_TYPES) == 9
    for type_name, cls in EVENT_TYPES.items():
        assert cls.model_fields["type"].default == type_name
        assert event_class(type_name) is cls


def test_missing_data_field_is_named() -> None:
    """A missing required data field is reported with its path."""
    event = fixture("chat.usage.v1")
    del event["data"]["message_id"]
    assert rejection(event) == "data.message_id: Field required"


def test_missing_occurred_at_is_named() -> None:
    """A missing envelope field is reported with its name."""
    event = fixture("api.usage.v1")
    del event["occurred_at"]
    assert rejection(event) == "occurred_at: Field required"


def test_negative_tokens_are_rejected() -> None:
    """Token counts below zero are rejected with the field path and bound."""
    message = rejection(with_data("chat.usage.v1", input_tokens=-1))
    assert message == "data.input_tokens: Input should be greater than or equal to 0"


@pytest.mark.parametrize("value", ["5", 5.0, True, None])
def test_tokens_must_be_json_integers(value: object) -> None:
    """Strings, floats, booleans and nulls are not coerced into token counts."""
    assert rejection(with_data("chat.usage.v1", output_tokens=value)).startswith(
        "data.output_tokens: "
    )


def test_tokens_above_json_safe_range_are_rejected() -> None:
    """Integers beyond 2**53 - 1 are rejected before they can overflow a store."""
    assert rejection(with_data("chat.usage.v1", cost_micros=2**60)).startswith(
        "data.cost_micros: Input should be less than or equal to"
    )


@pytest.mark.parametrize(
    ("type_name", "field", "value"),
    [
        ("workspace.build.v1", "agent_managed", "true"),
        ("chat.usage.v1", "priced", 1),
        ("directory.user.v1", "suspended", "false"),
        ("storage.sample.v1", "size_mb", "12.5"),
        ("activity.session.v1", "duration_ms", "1000"),
        ("api.usage.v1", "count", 0),
        ("activity.session.v1", "category", "email"),
        ("chat.usage.v1", "purpose", "summary"),
        ("directory.group.v1", "member_ids", "u-1"),
    ],
)
def test_wrong_types_and_values_are_rejected(type_name: str, field: str, value: object) -> None:
    """A value of the wrong type or outside the allowed set is rejected at its path."""
    assert rejection(with_data(type_name, **{field: value})).startswith(f"data.{field}: ")


def test_unknown_field_in_data_is_rejected() -> None:
    """An unexpected field inside data is rejected rather than dropped."""
    message = rejection(with_data("chat.usage.v1", thinking_budget=10))
    assert message == "data.thinking_budget: Extra inputs are not permitted"


def test_unknown_field_in_envelope_is_rejected() -> None:
    """An unexpected top-level field is rejected rather than dropped."""
    event = fixture("chat.usage.v1")
    event["tenant"] = "acme"
    assert rejection(event) == "tenant: Extra inputs are not permitted"


def test_id_longer_than_128_characters_is_rejected() -> None:
    """Event ids are capped at 128 characters."""
    event = fixture("chat.usage.v1")
    event["id"] = "e" * 129
    assert rejection(event) == "id: String should have at most 128 characters"


def test_id_of_exactly_128_characters_is_accepted() -> None:
    """The id length limit is inclusive."""
    event = fixture("chat.usage.v1")
    event["id"] = "e" * 128
    assert parse_event(event).id == "e" * 128


def test_empty_id_is_rejected() -> None:
    """An empty id cannot serve as a deduplication key."""
    event = fixture("chat.usage.v1")
    event["id"] = ""
    assert rejection(event) == "id: String should have at least 1 character"


def test_naive_occurred_at_is_rejected() -> None:
    """A time without a timezone is rejected with a message asking for one."""
    event = fixture("chat.usage.v1")
    event["occurred_at"] = "2026-11-02T10:15:00"
    assert rejection(event) == (
        "occurred_at: Input should include a timezone, e.g. 2026-11-02T10:15:00Z"
    )


def test_naive_created_at_in_data_is_rejected() -> None:
    """Times inside data follow the same timezone rule as the envelope's."""
    message = rejection(with_data("directory.user.v1", created_at="2025-03-14T15:09:26"))
    assert message.startswith("data.created_at: Input should include a timezone")


@pytest.mark.parametrize("value", [1_762_078_500, "1762078500", 1_762_078_500.5])
def test_unix_timestamps_are_not_times(value: object) -> None:
    """Numbers, and strings of digits, are not read as Unix timestamps."""
    event = fixture("chat.usage.v1")
    event["occurred_at"] = value
    assert rejection(event).startswith("occurred_at: Input should be an ISO 8601 date-time string")


def test_offset_times_are_normalised_to_utc() -> None:
    """A time with an offset is stored as the same instant in UTC."""
    event = fixture("chat.usage.v1")
    event["occurred_at"] = "2026-11-02T12:15:00+02:00"
    parsed = parse_event(event)
    assert parsed.occurred_at == datetime(2026, 11, 2, 10, 15, tzinfo=UTC)
    assert parsed.occurred_at.tzinfo is UTC


def test_defaults_fill_optional_chat_fields() -> None:
    """A minimal chat usage gets zero cache tokens, no cost, unpriced and purpose chat."""
    event = fixture("chat.usage.v1")
    event["data"] = {
        "chat_id": "c1",
        "message_id": "m1",
        "model": "gpt-4o",
        "input_tokens": 10,
        "output_tokens": 2,
    }
    parsed = parse_event(event)
    assert isinstance(parsed, ChatUsageRecorded)
    assert parsed.data == ChatUsage(
        chat_id="c1",
        message_id="m1",
        model="gpt-4o",
        input_tokens=10,
        output_tokens=2,
        cache_read_tokens=0,
        cache_write_tokens=0,
        cost_micros=None,
        priced=False,
        purpose="chat",
    )


@pytest.mark.parametrize("size", [0, 0.01, 2048])
def test_storage_sizes_may_be_fractional_or_whole(size: float) -> None:
    """Storage sizes accept fractional and integral megabytes."""
    parsed = parse_event(with_data("storage.sample.v1", size_mb=size))
    assert isinstance(parsed, StorageSampled)
    assert parsed.data.size_mb == size


def test_negative_storage_size_is_rejected() -> None:
    """A storage sample cannot be negative."""
    assert rejection(with_data("storage.sample.v1", size_mb=-0.5)).startswith("data.size_mb: ")


def test_member_list_errors_name_the_index() -> None:
    """An invalid member id is reported with its position in the list."""
    message = rejection(with_data("directory.group.v1", member_ids=["u-1", ""]))
    assert message == "data.member_ids[1]: String should have at least 1 character"


def test_events_are_immutable() -> None:
    """Assigning to a field of a decoded event fails."""
    parsed = parse_event(fixture("chat.usage.v1"))
    with pytest.raises(ValidationError):
        parsed.user_id = "someone-else"  # type: ignore[misc]


def test_envelope_base_cannot_be_instantiated() -> None:
    """Only concrete event types, which define their partition key, can be built."""
    with pytest.raises(TypeError):
        Envelope(  # type: ignore[abstract]
            id="e1",
            type="x",
            occurred_at=datetime.now(UTC),
            data=ChatUsage.model_validate(fixture("chat.usage.v1")["data"]),
        )


def test_adapter_dispatches_on_type() -> None:
    """The discriminated union validates each fixture as its own class."""
    for type_name, cls in EVENT_TYPES.items():
        assert type(EVENT_ADAPTER.validate_python(fixture(type_name))) is cls


def test_adapter_produces_a_json_schema() -> None:
    """The union has a JSON Schema that services can publish in their OpenAPI documents."""
    schema = EVENT_ADAPTER.json_schema()
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES)


def test_constructing_in_python_applies_the_same_rules() -> None:
    """Events built in code are validated exactly like events parsed from JSON."""
    with pytest.raises(ValidationError, match=r"member_ids\.1"):
        DirectoryGroup(group_id="g-1", name="Group", member_ids=("u-1", "u" * 129))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"output_tokens": 100, "reasoning_tokens": 101},
            (
                "data.reasoning_tokens: Input should be at most output_tokens (100): reasoning "
                "tokens are part of the output tokens"
            ),
        ),
        (
            {"reasoning_tokens": -1},
            "data.reasoning_tokens: Input should be greater than or equal to 0",
        ),
        ({"reasoning_tokens": "5"}, "data.reasoning_tokens: Input should be a valid integer"),
        ({"runtime_ms": -1}, "data.runtime_ms: Input should be greater than or equal to 0"),
        (
            {"runtime_ms": MAX_RUNTIME_MS + 1},
            "data.runtime_ms: Input should be less than or equal to 86400000",
        ),
        ({"runtime_ms": 1.5}, "data.runtime_ms: Input should be a valid integer"),
        ({"runtime_ms": True}, "data.runtime_ms: Input should be a valid integer"),
        (
            {"runtime_ms": "12\x00"},
            (
                "data.runtime_ms: contains a control character (U+0000 at position 2), which no"
                " text column can hold"
            ),
        ),
        (
            {"purpose": "title", "runtime_ms": 10},
            (
                "data.runtime_ms: Input should be absent for title generation, which Agent Time "
                "does not count"
            ),
        ),
    ],
)
def test_reasoning_and_runtime_outside_their_bounds_are_rejected_by_name(
    changes: dict[str, object], message: str
) -> None:
    """Reasoning above the output, runtime outside 0 to a day, or on a title, name the field."""
    assert rejection(with_data("chat.usage.v1", **changes)) == message


def test_reasoning_may_be_all_of_the_output_and_runtime_a_whole_day() -> None:
    """The bounds themselves are accepted."""
    event = parse_event(
        with_data("chat.usage.v1", output_tokens=50, reasoning_tokens=50, runtime_ms=MAX_RUNTIME_MS)
    )
    assert isinstance(event, ChatUsageRecorded)
    assert (event.data.reasoning_tokens, event.data.runtime_ms) == (50, MAX_RUNTIME_MS)


def test_absent_reasoning_and_runtime_are_left_out_of_the_encoded_event() -> None:
    """Chat usage without the added fields encodes as before, so older readers still decode it."""
    raw = fixture("chat.usage.v1")
    del raw["data"]["reasoning_tokens"], raw["data"]["runtime_ms"]
    data = orjson.loads(encode(parse_event(raw)))["data"]
    assert "reasoning_tokens" not in data
    assert "runtime_ms" not in data
    full = orjson.loads(encode(parse_event(fixture("chat.usage.v1"))))["data"]
    assert (full["reasoning_tokens"], full["runtime_ms"]) == (208, 18342)
