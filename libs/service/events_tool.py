"""`tollgate events tail`: the events on the log, decoded, as a table for people or JSON lines.

It reads with aiokafka, as the services do, so it works against the embedded broker of
`make run` as well as a real Kafka; librdkafka-based clients (kcat, confluent-kafka) cannot
talk to the embedded broker. It reads without a consumer group and commits nothing, so
looking never disturbs a consumer.

- `tollgate events tail` prints what is on the topic now, from the beginning, and exits.
- `--follow` then keeps printing new events until Ctrl-C; `--new-only` skips what is there and
  prints only events that arrive from now on.
- `--type T` (repeatable, or comma-separated) and `--user U` (repeatable) filter; `--limit N`
  stops after N printed events; `--format json` prints one JSON object per record.
"""

# ruff: noqa: T201  # a command-line tool: printing is its output

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TextIO, assert_never, get_args

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from libs.events.codec import DecodeError, decode
from libs.events.models import (
    ActivitySessionRecorded,
    ApiUsageRecorded,
    ChatUsageRecorded,
    Event,
    GroupUpdated,
    ProjectUpdated,
    StorageSampled,
    TeamUpdated,
    UserUpdated,
    WorkspaceBuilt,
)
from libs.events.topics import USAGE_EVENTS
from libs.service.kafka import BrokerUnavailableError, bounded
from libs.service.local import kafka_bootstrap

Format = Literal["table", "json"]

#: Every event type string of the catalogue, for `--type`.
EVENT_TYPES: tuple[str, ...] = tuple(
    sorted(str(model.model_fields["type"].default) for model in get_args(get_args(Event)[0]))
)

# Table columns: (title, width); the last one takes the rest of the line.
_COLUMNS = (("OCCURRED_AT (UTC)", 19), ("TYPE", 19), ("USER", 20), ("ID", 24), ("DETAIL", 0))


class TailError(Exception):
    """A failure the user can act on, said in one line (no traceback)."""


@dataclass(frozen=True)
class TailOptions:
    """What to read and how to print it."""

    bootstrap: str
    topic: str = USAGE_EVENTS
    follow: bool = False
    new_only: bool = False
    types: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    limit: int | None = None
    output: Format = "table"
    timeout_s: float = 10.0


@dataclass(frozen=True)
class Record:
    """One record of the topic: where it is, and its event or why it could not be decoded."""

    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    headers: tuple[tuple[str, str], ...]
    event: Event | None
    error: str | None = None

    def matches(self, options: TailOptions) -> bool:
        """Whether the record passes the type and user filters (an undecodable one has neither)."""
        if not options.types and not options.users:
            return True
        if self.event is None:
            return False
        if options.types and self.event.type not in options.types:
            return False
        return not options.users or self.event.user_id in options.users


@dataclass
class TailResult:
    """What a tail read and printed."""

    read: int = 0
    printed: int = 0
    undecodable: int = 0


@dataclass
class _Progress:
    ends: dict[int, int] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)


def record_of(raw: Any) -> Record:
    """A `Record` from an aiokafka `ConsumerRecord`, decoded with the event codec."""
    event: Event | None = None
    error: str | None = None
    try:
        event = decode(raw.value)
    except DecodeError as exc:
        error = exc.reason
    key: bytes | None = raw.key
    return Record(
        partition=raw.partition,
        offset=raw.offset,
        timestamp_ms=raw.timestamp,
        key=None if key is None else key.decode(errors="backslashreplace"),
        headers=tuple(
            (name, (value or b"").decode(errors="backslashreplace")) for name, value in raw.headers
        ),
        event=event,
        error=error,
    )


# -- output ----------------------------------------------------------------------------------


def json_line(record: Record) -> str:
    """One JSON object: the record's position and either its event or the decode error."""
    doc: dict[str, Any] = {
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": _iso(record.timestamp_ms),
        "key": record.key,
    }
    if record.headers:
        doc["headers"] = dict(record.headers)
    if record.event is not None:
        doc["event"] = record.event.model_dump(mode="json")
    else:
        doc["error"] = record.error
    return _json_safe(orjson.dumps(doc).decode())


def table_header() -> str:
    """The table's title line."""
    return _row([title for title, _ in _COLUMNS])


def table_row(record: Record) -> str:
    """One line of the table; text from the log is escaped, so it cannot drive the terminal."""
    event = record.event
    if event is None:
        where = f"p{record.partition}@{record.offset}"
        return _row(["-", "(undecodable)", record.key or "-", where, record.error or ""])
    occurred = event.occurred_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return _row([occurred, event.type, event.user_id or "-", event.id, summary(event)])


def summary(event: Event) -> str:
    """The few fields of `data` a person looks for first, per type."""
    match event:
        case ChatUsageRecorded(data=d):
            tokens = f"in={d.input_tokens} out={d.output_tokens}"
            if d.reasoning_tokens is not None:
                tokens += f" (reasoning={d.reasoning_tokens})"
            if d.cache_read_tokens or d.cache_write_tokens:
                tokens += f" cache_read={d.cache_read_tokens} cache_write={d.cache_write_tokens}"
            cost = "unpriced" if d.cost_micros is None else dollars(d.cost_micros)
            title = " (title)" if d.purpose == "title" else ""
            runtime = "" if d.runtime_ms is None else f" runtime={_duration(d.runtime_ms)}"
            return f"{d.model} {tokens} {cost}{title}{runtime} chat={d.chat_id}"
        case WorkspaceBuilt(data=d):
            agent = " agent-managed" if d.agent_managed else ""
            return f"workspace={d.workspace_id} build={d.build_id} template={d.template}{agent}"
        case ActivitySessionRecorded(data=d):
            count = f" x{d.count}" if d.count != 1 else ""
            kind = f"{d.category}/{d.detail}" if d.detail else d.category
            return f"{kind} {_duration(d.duration_ms)}{count}"
        case ApiUsageRecorded(data=d):
            return f"{d.client} x{d.count}"
        case StorageSampled(data=d):
            return f"project={d.project_id} {d.size_mb:g} MB experiments={d.experiment_count}"
        case UserUpdated(data=d):
            flags = " suspended" if d.suspended else ""
            flags += "" if d.licensed else " unlicensed"
            return f"username={d.username} roles={','.join(d.roles) or '-'}{flags}"
        case GroupUpdated(data=d):
            return f"group={d.group_id} name={d.name} members={len(d.member_ids)}"
        case TeamUpdated(data=d):
            return f"team={d.team_id} name={d.name} members={len(d.member_ids)}"
        case ProjectUpdated(data=d):
            return f"project={d.project_id} team={d.team_id} name={d.name}"
        case _:
            # A new event type without a summary fails the type check here.
            assert_never(event)


def dollars(micros: int) -> str:
    """Micro-dollars as dollars with all six decimals, without going through a float."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), 1_000_000)
    return f"{sign}${whole}.{fraction:06d}"


def printable(text: str) -> str:
    """`text` with control, format and separator characters escaped (`\\x1b`, `\\u202e`)."""
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch == " " or not unicodedata.category(ch).startswith(("C", "Z"))
        else ch.encode("unicode_escape").decode()
        for ch in text
    )


def _json_safe(text: str) -> str:
    # JSON allows DEL, C1 controls, bidi overrides and line separators raw inside strings (the
    # only place such characters can be in compact JSON); escaped, the line stays one line
    # that cannot drive a terminal, and decodes to the same value.
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == " " or not unicodedata.category(ch).startswith(("C", "Z")):
            out.append(ch)
            continue
        units = ch.encode("utf-16-be")
        out.extend(f"\\u{int.from_bytes(units[i : i + 2]):04x}" for i in range(0, len(units), 2))
    return "".join(out)


def _row(cells: Sequence[str]) -> str:
    parts = []
    for (_, width), cell in zip(_COLUMNS, cells, strict=True):
        text = printable(cell)
        if width:
            text = text if len(text) <= width else text[: width - 1] + "…"
            parts.append(text.ljust(width))
        else:
            parts.append(text)
    return "  ".join(parts).rstrip()


def _duration(ms: int) -> str:
    seconds = ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{ms / 1000:g}s"


def _iso(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- reading ---------------------------------------------------------------------------------


async def tail(
    options: TailOptions,
    emit: Callable[[str], None],
    *,
    positioned: asyncio.Event | None = None,
) -> TailResult:
    """Read the topic and hand each matching record, formatted, to `emit`.

    `positioned` is set once the end of the log as it stood at the start is known, that is
    when a `--new-only` tail would print the next event produced.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=options.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        request_timeout_ms=int(options.timeout_s * 1000) + 30_000,
    )
    try:
        await bounded(consumer.start(), options.timeout_s, "connect")
    except (BrokerUnavailableError, KafkaError, OSError) as exc:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), options.timeout_s)
        why = f" ({exc})" if isinstance(exc, BrokerUnavailableError) else ""
        raise TailError(
            f"cannot reach the broker at {options.bootstrap}{why}; is it running? "
            "Set KAFKA_BOOTSTRAP_SERVERS or --bootstrap-server"
        ) from None
    try:
        tps = await _partitions(consumer, options)
        consumer.assign(tps)
        await bounded(consumer.seek_to_beginning(*tps), options.timeout_s, "seek")
        return await _read(consumer, tps, options, emit, positioned)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), options.timeout_s)


async def _partitions(consumer: AIOKafkaConsumer, options: TailOptions) -> list[TopicPartition]:
    # Metadata of every topic: asking for this one alone would make the embedded broker create
    # it (with 4 partitions) when it is missing.
    cluster = await bounded(
        consumer._client.fetch_all_metadata(),  # noqa: SLF001  # aiokafka's public `topics()` drops the partitions
        options.timeout_s,
        "metadata",
    )
    partitions = cluster.partitions_for_topic(options.topic)
    if not partitions:
        known = ", ".join(sorted(cluster.topics())) or "none"
        raise TailError(
            f"topic {options.topic} does not exist on {options.bootstrap} (topics: {known}); "
            "`tollgate create-topics` creates it"
        )
    return [TopicPartition(options.topic, p) for p in sorted(partitions)]


async def _read(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    options: TailOptions,
    emit: Callable[[str], None],
    positioned: asyncio.Event | None,
) -> TailResult:
    result = TailResult()
    progress = _Progress()
    follow = options.follow or options.new_only
    header = options.output == "table"
    deadline = time.monotonic() + options.timeout_s
    while True:
        fetched = await consumer.getmany(timeout_ms=200, max_records=2000)
        for tp, raws in fetched.items():
            end = progress.ends.get(tp.partition, consumer.highwater(tp))
            for raw in raws:
                if options.new_only and end is not None and raw.offset < end:
                    continue
                result.read += 1
                record = record_of(raw)
                result.undecodable += record.event is None
                if not record.matches(options):
                    continue
                if header:
                    emit(table_header())
                    header = False
                emit(table_row(record) if options.output == "table" else json_line(record))
                result.printed += 1
                if options.limit is not None and result.printed >= options.limit:
                    return result
        if len(progress.done) < len(tps):
            await _measure(consumer, tps, progress, options)
            if len(progress.done) == len(tps):
                if positioned is not None:
                    positioned.set()
                if not follow:
                    return result
            elif time.monotonic() > deadline:
                raise TailError(
                    f"the broker at {options.bootstrap} did not say where {options.topic} "
                    f"ends within {options.timeout_s}s"
                )


async def _measure(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    progress: _Progress,
    options: TailOptions,
) -> None:
    """Note each partition's end as first seen, and which partitions are read up to it."""
    for tp in tps:
        if tp.partition in progress.done:
            continue
        if tp.partition not in progress.ends:
            # `end_offsets()` is wrong on the embedded broker; the high watermark of a fetch
            # is right on every broker.
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            progress.ends[tp.partition] = highwater
            if options.new_only:
                # Nothing before the end is wanted: skip reading it at all.
                consumer.seek(tp, highwater)
        position = await bounded(consumer.position(tp), options.timeout_s, "position")
        if position >= progress.ends[tp.partition]:
            progress.done.add(tp.partition)


# -- command line ----------------------------------------------------------------------------


def _types(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in EVENT_TYPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown event type {', '.join(unknown) or repr(value)}; "
            f"known: {', '.join(EVENT_TYPES)}"
        )
    return names


def _limit(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {value!r}")
    return number


def reader_went_away() -> int:
    """After a `BrokenPipeError` on standard output (`| head`): stop quietly, with status 0.

    Standard output is pointed at /dev/null so that Python does not complain about the
    closed pipe when it flushes at exit.
    """
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollgate events", description="Look at the events on the log."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tail_cmd = sub.add_parser(
        "tail",
        help="print the decoded events of the topic",
        description=(
            "Print the events on the topic, decoded, from the beginning; with --follow keep "
            "printing new ones until Ctrl-C."
        ),
    )
    default_bootstrap = kafka_bootstrap()
    tail_cmd.add_argument(
        "--bootstrap-server",
        default=default_bootstrap,
        help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS, else the embedded "
        "broker of `make run`: %(default)s)",
    )
    tail_cmd.add_argument(
        "--topic",
        default=os.environ.get("TOLLGATE_EVENTS_TOPIC", USAGE_EVENTS),
        help="topic to read (default: %(default)s)",
    )
    tail_cmd.add_argument(
        "-f", "--follow", action="store_true", help="after the end, wait for new events"
    )
    tail_cmd.add_argument(
        "--new-only",
        action="store_true",
        help="skip the events already there: print only new ones (implies --follow)",
    )
    tail_cmd.add_argument(
        "--type",
        dest="types",
        action="append",
        type=_types,
        default=[],
        metavar="TYPE",
        help=f"only these types (repeatable or comma-separated): {', '.join(EVENT_TYPES)}",
    )
    tail_cmd.add_argument(
        "--user",
        dest="users",
        action="append",
        default=[],
        metavar="USER_ID",
        help="only events of this user (repeatable)",
    )
    tail_cmd.add_argument(
        "-n", "--limit", type=_limit, default=None, help="stop after printing this many events"
    )
    tail_cmd.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="a readable table, or one JSON object per line (default: %(default)s)",
    )
    tail_cmd.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the broker before giving up (default: %(default)s)",
    )
    return parser


def options_from(args: argparse.Namespace) -> TailOptions:
    """The tail options the parsed arguments ask for."""
    return TailOptions(
        bootstrap=args.bootstrap_server,
        topic=args.topic,
        follow=args.follow,
        new_only=args.new_only,
        types=frozenset(name for names in args.types for name in names),
        users=frozenset(args.users),
        limit=args.limit,
        output=args.format,
        timeout_s=args.timeout,
    )


def main(argv: Sequence[str]) -> int:
    """`tollgate events ...`; returns the exit status."""
    args = _parser().parse_args(list(argv))
    # aiokafka logs each failed connection attempt; the one line below says it better.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    options = options_from(args)
    out: TextIO = sys.stdout

    def emit(line: str) -> None:
        out.write(line + "\n")
        if options.follow or options.new_only:
            out.flush()

    try:
        result = asyncio.run(tail(options, emit))
    except TailError as exc:
        print(f"tollgate events tail: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C is how a follow ends.
        return 0
    except BrokenPipeError:
        return reader_went_away()
    out.flush()
    skipped = f", {result.undecodable} undecodable" if result.undecodable else ""
    print(f"{result.printed} of {result.read} events printed{skipped}", file=sys.stderr)
    return 0
