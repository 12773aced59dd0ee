"""`tollgate publisher ...`: operator tools on the billing queue, for air-gapped deployments too.

- `export [--since DATE] [--out FILE]` writes the pending billing events as NDJSON, one wire
  event per line (`{"id", "event_type", "event_data", "created_at"}`), oldest first, for a
  manual upload. The events stay pending: exporting never loses one.
- `import-receipts FILE` marks events published from what the billing server confirmed. A
  receipt is either the server's answer (`{"accepted_events": [{"id"}], "rejected_events":
  [{"id", "message", "permanent"}]}`, one document or one per line) or NDJSON with one id per
  line (`"id"`, `{"id": "…"}` or a bare id; an exported file itself counts as a receipt
  for every event in it). Permanent rejections become final; temporary ones stay pending.
- `status` prints the queue's status; `retry-now` makes every backed-off event due again.

All of them use `DATABASE_URL`, else the embedded database of `make run` in the state
directory (`TOLLGATE_STATE_DIR`, default `.tollgate`), and `TOLLGATE_PUBLISHER_QUEUE`
(default `default`).
"""

# ruff: noqa: T201  # a command-line tool: printing is its output

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO

import asyncpg
import orjson

from libs.service.events_tool import reader_went_away
from libs.service.local import NoDatabaseError, database_url
from services.publisher.domain import rfc3339
from services.publisher.storage import PostgresQueue

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ReceiptError(ValueError):
    """A receipt file that cannot be read."""


@dataclass
class Receipt:
    """Ids the billing server accepted, and those it rejected for good (with the reason)."""

    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    temporary: list[str] = field(default_factory=list)

    def add_answer(self, doc: dict[str, object]) -> None:
        """Take in one billing server answer."""
        for ref in _list(doc.get("accepted_events", [])):
            self.accepted.append(_id_of(ref))
        for ref in _list(doc.get("rejected_events", [])):
            if not isinstance(ref, dict):
                raise ReceiptError(f"a rejected event must be an object, got {ref!r}")
            if ref.get("permanent") is True:
                self.rejected[_id_of(ref)] = str(ref.get("message") or "rejected")
            else:
                self.temporary.append(_id_of(ref))


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ReceiptError(f"expected a list, got {type(value).__name__}")
    return value


def _id_of(value: object) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str) and value["id"]:
        return str(value["id"])
    raise ReceiptError(f"no event id in {value!r}")


def _is_answer(doc: object) -> bool:
    return isinstance(doc, dict) and ("accepted_events" in doc or "rejected_events" in doc)


def parse_receipts(text: str) -> Receipt:
    """Read a receipt file in any of the documented shapes."""
    receipt = Receipt()
    try:
        whole = orjson.loads(text)
    except orjson.JSONDecodeError:
        whole = None
    if _is_answer(whole):
        assert isinstance(whole, dict)
        receipt.add_answer(whole)
        return receipt
    if isinstance(whole, list):
        receipt.accepted.extend(_id_of(item) for item in whole)
        return receipt
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            doc = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            if any(c.isspace() for c in stripped) or stripped[0] in "{[":
                raise ReceiptError(f"line {number}: neither JSON nor a bare id") from None
            doc = stripped
        try:
            if _is_answer(doc):
                assert isinstance(doc, dict)
                receipt.add_answer(doc)
            else:
                receipt.accepted.append(_id_of(doc))
        except ReceiptError as exc:
            raise ReceiptError(f"line {number}: {exc}") from exc
    return receipt


def parse_since(text: str) -> datetime:
    """`2026-11-01` (UTC midnight) or a full ISO 8601 time (UTC when it names no zone)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"invalid date {text!r}; use e.g. 2026-11-01 or 2026-11-01T08:00:00Z"
            ) from exc
        moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


async def export(queue: PostgresQueue, since: datetime, out: IO[bytes]) -> int:
    """Write pending events as NDJSON; returns how many."""
    count = 0
    async for event in queue.export_pending(since):
        event["created_at"] = rfc3339(event["created_at"])  # type: ignore[arg-type]
        out.write(orjson.dumps(event) + b"\n")
        count += 1
    out.flush()
    return count


def _queue_name() -> str:
    return os.environ.get("TOLLGATE_PUBLISHER_QUEUE") or "default"


async def _with_queue(url: str, action: str, args: argparse.Namespace, io: _Io) -> int:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    try:
        queue = PostgresQueue(pool, _queue_name())
        await queue.open()
        if action == "export":
            assert io.out is not None
            return await _export(queue, args, io.out)
        if action == "import-receipts":
            assert io.receipt is not None
            return await _import(queue, io.receipt)
        if action == "status":
            return await _status(queue)
        return await _retry_now(queue)
    finally:
        await pool.close()


async def _export(queue: PostgresQueue, args: argparse.Namespace, out: IO[bytes]) -> int:
    since: datetime = args.since or EPOCH
    count = await export(queue, since, out)
    where = "standard output" if args.out in (None, "-") else args.out
    print(
        f"exported {count} pending billing event(s) created since {rfc3339(since)} "
        f"to {where}; they stay pending until you import the receipts",
        file=sys.stderr,
    )
    return 0


async def _import(queue: PostgresQueue, receipt: Receipt) -> int:
    result = await queue.import_receipts(receipt.accepted, receipt.rejected)
    print(
        f"published {result.published}, rejected {result.rejected}, "
        f"already final {result.already_final}, unknown ids {result.unknown}, "
        f"temporarily rejected (left pending) {len(receipt.temporary)}"
    )
    return 0


async def _status(queue: PostgresQueue) -> int:
    status = await queue.status()
    health = status.health
    doc = {
        "queue": queue.queue,
        "deployment_id": health.deployment_id,
        "pending": status.pending,
        "due": status.due,
        "oldest_pending_created_at": status.oldest_pending_created_at,
        "oldest_pending_age_seconds": status.oldest_pending_age_s,
        "last_success_at": health.last_success_at,
        "consecutive_failures": health.consecutive_failures,
        "failing_since": health.failing_since,
        "last_error": health.last_error,
        "published": health.published_total,
        "rejected": health.rejected_total,
        "expired": health.expired_total,
    }
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z).decode())
    return 0


async def _retry_now(queue: PostgresQueue) -> int:
    count = await queue.retry_now()
    print(f"{count} backed-off billing event(s) are due now")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollgate publisher",
        description=(
            "Operator tools on the billing queue: DATABASE_URL, else the embedded database of "
            "`make run` in TOLLGATE_STATE_DIR (.tollgate)."
        ),
    )
    sub = parser.add_subparsers(dest="action", required=True)
    exp = sub.add_parser("export", help="write pending billing events as NDJSON")
    exp.add_argument(
        "--since",
        type=parse_since,
        default=None,
        help="only events created at or after this UTC date or time (default: all)",
    )
    exp.add_argument("--out", default=None, help="file to write (default: standard output)")
    imp = sub.add_parser("import-receipts", help="mark events the billing server confirmed")
    imp.add_argument("file", help="the server's answer JSON, or NDJSON of ids")
    sub.add_parser("status", help="print the queue's status as JSON")
    sub.add_parser("retry-now", help="make every backed-off pending event due now")
    return parser


@dataclass
class _Io:
    """Files opened before the event loop starts: the export target, the parsed receipt."""

    out: IO[bytes] | None = None
    receipt: Receipt | None = None


def main(argv: Sequence[str]) -> int:
    """`tollgate publisher export|import-receipts|status|retry-now ...`."""
    args = _parser().parse_args(list(argv))
    action: str = args.action
    io = _Io()
    if action == "import-receipts":
        try:
            io.receipt = parse_receipts(Path(args.file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ReceiptError) as exc:
            print(f"tollgate publisher: cannot read receipts {args.file}: {exc}", file=sys.stderr)
            return 1
    try:
        with database_url(who="tollgate publisher") as url:
            if action == "export" and args.out not in (None, "-"):
                with Path(args.out).open("wb") as out:
                    io.out = out
                    return asyncio.run(_with_queue(url, action, args, io))
            if action == "export":
                io.out = sys.stdout.buffer
            return asyncio.run(_with_queue(url, action, args, io))
    except NoDatabaseError as exc:
        print(f"tollgate publisher: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return reader_went_away()
