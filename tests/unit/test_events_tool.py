"""`tollgate events tail` without a broker: arguments, filters, the table and the JSON lines."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.events import decode
from libs.events.models import Event
from libs.service.events_tool import (
    EVENT_TYPES,
    Record,
    TailOptions,
    _parser,
    dollars,
    json_line,
    options_from,
    printable,
    summary,
    table_header,
    table_row,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "events"


def _fixture(type_name: str, **changes: object) -> Event:
    doc = orjson.loads((FIXTURES / f"{type_name}.json").read_bytes())
    doc.update(changes)
    return decode(orjson.dumps(doc))


def _record(event: Event | None, error: str | None = None) -> Record:
    return Record(
        partition=3,
        offset=41,
        timestamp_ms=1_793_614_500_123,
        key="u-7f3a9c2e",
        headers=(),
        event=event,
        error=error,
    )


def test_every_type_of_the_catalogue_can_be_filtered_on() -> None:
    """--type knows exactly the catalogue's types, one fixture each."""
    assert sorted(path.stem for path in FIXTURES.glob("*.json")) == list(EVENT_TYPES)


@pytest.mark.parametrize(
    ("type_name", "expected"),
    [
        (
            "chat.usage.v1",
            (
                "claude-sonnet-4-5 in=1843 out=612 (reasoning=208) cache_read=12800 "
                "cache_write=0 $0.018549 runtime=18.342s chat=chat-5d1e8b40"
            ),
        ),
        (
            "workspace.build.v1",
            "workspace=ws-3c0b7d19 build=build-000142 template=python-devcontainer agent-managed",
        ),
        ("activity.session.v1", "ide/vscode 30m00s"),
        ("api.usage.v1", "sdk x37"),
        ("storage.sample.v1", "project=proj-llm-evals 512.75 MB experiments=48"),
        ("directory.user.v1", "username=ada roles=member,template-admin"),
        ("directory.group.v1", "group=grp-platform name=Platform members=3"),
        ("directory.team.v1", "team=team-research name=Research members=2"),
        ("directory.project.v1", "project=proj-llm-evals team=team-research name=LLM evals"),
    ],
)
def test_each_type_has_a_one_line_summary(type_name: str, expected: str) -> None:
    """The table's detail column shows the fields a person looks for first, per type."""
    assert summary(_fixture(type_name)) == expected


def test_money_is_shown_from_integer_micros_without_rounding() -> None:
    """Micro-dollars print as dollars with six decimals, exact for the largest integers."""
    assert dollars(0) == "$0.000000"
    assert dollars(10_350) == "$0.010350"
    assert dollars(2**53 - 1) == "$9007199254.740991"


def test_a_row_of_the_table_lines_up_with_the_header() -> None:
    """A row starts with the event's UTC time, type, user and id, in the header's columns."""
    header = table_header()
    row = table_row(_record(_fixture("chat.usage.v1")))
    assert row.startswith("2026-11-02 10:15:00  chat.usage.v1")
    for title, value in [("USER", "u-7f3a9c2e"), ("ID", "01JC8Z3K5W9F2T6Y4N7Q"), ("DETAIL", "cla")]:
        assert row.index(value) == header.index(title), title
    # A long id is cut to its column, marked as cut.
    assert "01JC8Z3K5W9F2T6Y4N7QH1R…" in row


def test_text_from_the_log_cannot_drive_the_terminal() -> None:
    """Bidi overrides and line separators (storable in an event) and escape sequences in a record's key (which no decoder checks) are printed escaped."""
    event = _fixture("api.usage.v1", user_id="eve\u202e\u2028x")
    row = table_row(_record(event))
    assert "\u202e" not in row
    assert "\u2028" not in row
    assert "eve\\u202e\\u2028x" in row
    record = _record(None, error="invalid JSON")
    hostile = Record(3, 41, record.timestamp_ms, "k\x1b[2J\ny", (), None, "invalid JSON")
    row = table_row(hostile)
    assert "\x1b" not in row
    assert "\n" not in row
    assert "k\\x1b[2J\\ny" in row
    assert printable("plain text") == "plain text"


def test_an_undecodable_record_is_shown_with_its_reason_and_position() -> None:
    """A record that is no event is a row of its own, and a JSON line with the error."""
    record = _record(None, error="invalid JSON: unexpected character")
    assert "(undecodable)" in table_row(record)
    assert "p3@41" in table_row(record)
    assert orjson.loads(json_line(record)) == {
        "partition": 3,
        "offset": 41,
        "timestamp": "2026-11-02T10:15:00.123Z",
        "key": "u-7f3a9c2e",
        "error": "invalid JSON: unexpected character",
    }


def test_a_json_line_holds_the_event_as_ingest_takes_it() -> None:
    """The event object of a JSON line is the envelope, so it can be sent to ingest again."""
    source = orjson.loads((FIXTURES / "chat.usage.v1.json").read_bytes())
    record = Record(3, 41, 1_793_614_500_123, "k", (("reason", "x"),), _fixture("chat.usage.v1"))
    doc = orjson.loads(json_line(record))
    assert doc["event"] == source
    assert doc["headers"] == {"reason": "x"}


@pytest.mark.parametrize(
    ("event", "options", "shown"),
    [
        ("chat.usage.v1", TailOptions(bootstrap="b"), True),
        ("chat.usage.v1", TailOptions(bootstrap="b", types=frozenset({"chat.usage.v1"})), True),
        ("api.usage.v1", TailOptions(bootstrap="b", types=frozenset({"chat.usage.v1"})), False),
        ("chat.usage.v1", TailOptions(bootstrap="b", users=frozenset({"u-7f3a9c2e"})), True),
        ("chat.usage.v1", TailOptions(bootstrap="b", users=frozenset({"u-other"})), False),
        ("directory.team.v1", TailOptions(bootstrap="b", users=frozenset({"u-7f3a9c2e"})), False),
        (None, TailOptions(bootstrap="b"), True),
        (None, TailOptions(bootstrap="b", types=frozenset({"chat.usage.v1"})), False),
    ],
)
def test_filters(event: str | None, options: TailOptions, shown: bool) -> None:
    """Type and user filters both have to match; an undecodable record shows only unfiltered."""
    record = _record(None if event is None else _fixture(event), error="bad")
    assert record.matches(options) is shown


def test_arguments_become_options() -> None:
    """Repeated and comma-separated --type, repeated --user, --limit and --follow are read."""
    args = _parser().parse_args(
        [
            "tail",
            "--bootstrap-server",
            "kafka:9092",
            "--type",
            "chat.usage.v1,api.usage.v1",
            "--type",
            "workspace.build.v1",
            "--user",
            "alice",
            "--user",
            "bob,carol",
            "--limit",
            "5",
            "-f",
            "--format",
            "json",
        ]
    )
    assert options_from(args) == TailOptions(
        bootstrap="kafka:9092",
        follow=True,
        types=frozenset({"chat.usage.v1", "api.usage.v1", "workspace.build.v1"}),
        users=frozenset({"alice", "bob,carol"}),
        limit=5,
        output="json",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tail", "--type", "chat.usage"], "unknown event type chat.usage; known: "),
        (["tail", "--limit", "0"], "must be a whole number of at least 1"),
        (["tail", "--limit", "many"], "must be a whole number of at least 1"),
        (["tail", "--format", "yaml"], "invalid choice"),
    ],
)
def test_bad_arguments_are_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown type, a bad limit or format exits with status 2 and says what is wrong."""
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@given(st.text())
def test_any_text_prints_as_one_printable_line(text: str) -> None:
    """Whatever a record holds, the table cell and the JSON line are printable and lose nothing."""
    assert printable(text).isprintable()
    line = json_line(Record(0, 0, 0, text, (("h", text),), None, error=text))
    assert line.isprintable()
    assert orjson.loads(line)["key"] == orjson.loads(line)["error"] == text
