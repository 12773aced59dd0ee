"""`tollgate events tail` over a hostile topic: every record shown once, nothing reaches the terminal raw."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest

from libs.service.events_tool import TailOptions, tail
from libs.service.kafka import make_producer
from tests.support import Infra, unique

pytestmark = pytest.mark.integration

# What a terminal would act on: escape sequences, NUL, carriage return, bidi overrides, line
# and paragraph separators.
RAW_CONTROLS = ("\x1b", "\x00", "\r", "\x07", "\u202e", "\u2028", "\u2029", "\x85")


def _hostile(marker: str) -> list[bytes | None]:
    data: dict[str, object] = {
        "chat_id": "c\x1b]0;title\x07",
        "message_id": "m\r\n",
        "model": "\u202egpt\x1b[2J",
        "input_tokens": 1,
        "output_tokens": 1,
    }
    event: dict[str, object] = {
        "id": f"{marker}-a\x00",
        "type": "chat.usage.v1",
        "occurred_at": "2026-11-02T10:15:00Z",
        "user_id": f"{marker}\x1b[31m\u2028user",
        "data": data,
    }
    return [
        orjson.dumps(event),
        orjson.dumps({**event, "id": f"{marker}-b", "user_id": "x" * 128}),
        b"\x1b[2J\x1b[H" + marker.encode(),
        b"\xff\xfe\xc3\x28",
        json.dumps(
            {**event, "id": f"{marker}-c", "data": {**data, "output_tokens": 2**64}}
        ).encode(),
        b"[" * 50_000 + b"]" * 50_000,
        None,
    ]


async def test_tail_shows_every_hostile_record_once_and_escaped(
    infra: Infra, topics: tuple[str, str]
) -> None:
    """Control characters in any field and undecodable records neither break the tail nor reach the output raw."""
    marker = unique("tail")
    records = _hostile(marker)
    producer = make_producer(infra.bootstrap, idempotent=False)
    await producer.start()
    try:
        for value in records:
            await producer.send_and_wait(topics[0], value, key=b"\x1b[2Jkey\x00")
    finally:
        await producer.stop()

    for output in ("table", "json"):
        lines: list[str] = []
        options = TailOptions(bootstrap=infra.bootstrap, topic=topics[0], output=output)
        result = await asyncio.wait_for(tail(options, lines.append), 30)

        assert result.read == result.printed == len(records)
        assert len(lines) == len(records) + (output == "table")
        for line in lines:
            assert not any(ch in line for ch in RAW_CONTROLS), repr(line)
            assert "\n" not in line
        if output == "json":
            docs = [orjson.loads(line) for line in lines]
            assert all(("event" in doc) != ("error" in doc) for doc in docs)
            assert all(doc["key"] == "\x1b[2Jkey\x00" for doc in docs)
