"""`tollgate events tail` against the real broker: decoded events, filters, limits and follow."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime

import orjson
import pytest

from libs.events import encode
from libs.events.models import (
    ApiUsage,
    ApiUsageRecorded,
    ChatUsage,
    ChatUsageRecorded,
    Envelope,
    WorkspaceBuild,
    WorkspaceBuilt,
)
from libs.service.events_tool import TailError, TailOptions, tail
from libs.service.kafka import make_producer
from tests.support import ROOT, Infra, unique

pytestmark = pytest.mark.integration

OCCURRED = datetime(2026, 11, 2, 10, 15, tzinfo=UTC)


def _chat(user: str, n: int, cost: int) -> ChatUsageRecorded:
    return ChatUsageRecorded(
        id=f"{user}-chat-{n}",
        occurred_at=OCCURRED,
        user_id=user,
        data=ChatUsage(
            chat_id="c-1",
            message_id=f"m-{n}",
            model="claude-sonnet-4",
            input_tokens=1200,
            output_tokens=350,
            cost_micros=cost,
            priced=True,
        ),
    )


def _build(user: str) -> WorkspaceBuilt:
    return WorkspaceBuilt(
        id=f"{user}-build",
        occurred_at=OCCURRED,
        user_id=user,
        data=WorkspaceBuild(
            workspace_id="ws-1", build_id="b-1", template="python", agent_managed=True
        ),
    )


def _api(user: str) -> ApiUsageRecorded:
    return ApiUsageRecorded(
        id=f"{user}-api", occurred_at=OCCURRED, user_id=user, data=ApiUsage(client="sdk", count=3)
    )


async def _produce(infra: Infra, topic: str, events: list[Envelope], *raw: bytes) -> None:
    producer = make_producer(infra.bootstrap, idempotent=False)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(topic, encode(event), key=event.partition_key.encode())
        for value in raw:
            await producer.send_and_wait(topic, value, key=b"garbage")
    finally:
        await producer.stop()


async def _tail(options: TailOptions) -> list[str]:
    lines: list[str] = []
    await asyncio.wait_for(tail(options, lines.append), 30)
    return lines


async def test_tail_prints_every_event_then_stops_and_filters_by_type_and_user(
    infra: Infra, topics: tuple[str, str]
) -> None:
    """Without filters every record comes out decoded (garbage as an error); --type and --user narrow it."""
    alice, bob = unique("alice"), unique("bob")
    events: list[Envelope] = [
        _chat(alice, 1, 10350),
        _build(alice),
        _chat(bob, 2, 7),
        _api(bob),
        _chat(alice, 3, 1),
    ]
    await _produce(infra, topics[0], events, b"{not json")
    base = TailOptions(bootstrap=infra.bootstrap, topic=topics[0], output="json")

    everything = [orjson.loads(line) for line in await _tail(base)]
    assert sorted(doc["event"]["id"] for doc in everything if "event" in doc) == sorted(
        e.id for e in events
    )
    garbage = [doc for doc in everything if "event" not in doc]
    assert len(garbage) == 1
    assert garbage[0]["key"] == "garbage"
    assert "json" in garbage[0]["error"].lower()
    first = next(doc for doc in everything if doc.get("event", {}).get("id") == f"{alice}-chat-1")
    assert first["event"] == orjson.loads(encode(events[0]))
    assert first["timestamp"].endswith("Z")

    alices_chats = await _tail(
        TailOptions(
            bootstrap=infra.bootstrap,
            topic=topics[0],
            output="json",
            types=frozenset({"chat.usage.v1"}),
            users=frozenset({alice}),
        )
    )
    # One user's events share a partition, so they come out in the order they were sent.
    assert [orjson.loads(line)["event"]["id"] for line in alices_chats] == [
        f"{alice}-chat-1",
        f"{alice}-chat-3",
    ]

    builds_and_api = await _tail(
        TailOptions(
            bootstrap=infra.bootstrap,
            topic=topics[0],
            output="json",
            types=frozenset({"workspace.build.v1", "api.usage.v1"}),
        )
    )
    assert sorted(orjson.loads(line)["event"]["id"] for line in builds_and_api) == sorted(
        [f"{alice}-build", f"{bob}-api"]
    )


async def test_tail_limit_and_the_table(infra: Infra, topics: tuple[str, str]) -> None:
    """--limit stops after N events; the table has a header and one readable row per event."""
    carol = unique("carol")
    await _produce(infra, topics[0], [_chat(carol, n, 10350 * n) for n in range(1, 6)])

    lines = await _tail(
        TailOptions(bootstrap=infra.bootstrap, topic=topics[0], output="table", limit=2)
    )

    assert len(lines) == 3
    assert lines[0].split() == ["OCCURRED_AT", "(UTC)", "TYPE", "USER", "ID", "DETAIL"]
    assert lines[1].startswith("2026-11-02 10:15:00  chat.usage.v1")
    assert carol in lines[1]
    assert "claude-sonnet-4 in=1200 out=350 $0.010350" in lines[1]
    assert "$0.020700" in lines[2]


async def test_follow_prints_new_events_and_new_only_skips_the_old_ones(
    infra: Infra, topics: tuple[str, str]
) -> None:
    """--follow prints what is there and then what arrives; --new-only prints only what arrives."""
    dave = unique("dave")
    await _produce(infra, topics[0], [_chat(dave, 1, 5)])
    followed: list[str] = []
    fresh: list[str] = []
    positioned = [asyncio.Event(), asyncio.Event()]
    options = TailOptions(bootstrap=infra.bootstrap, topic=topics[0], output="json", limit=2)
    following = asyncio.create_task(
        tail(
            TailOptions(**{**options.__dict__, "follow": True}),
            followed.append,
            positioned=positioned[0],
        )
    )
    only_new = asyncio.create_task(
        tail(
            TailOptions(**{**options.__dict__, "new_only": True}),
            fresh.append,
            positioned=positioned[1],
        )
    )
    await asyncio.wait_for(asyncio.gather(*(p.wait() for p in positioned)), 30)
    assert [orjson.loads(line)["event"]["id"] for line in followed] == [f"{dave}-chat-1"]
    assert fresh == []

    await _produce(infra, topics[0], [_chat(dave, 2, 5), _chat(dave, 3, 5)])
    results = await asyncio.wait_for(asyncio.gather(following, only_new), 30)

    assert [orjson.loads(line)["event"]["id"] for line in followed] == [
        f"{dave}-chat-1",
        f"{dave}-chat-2",
    ]
    assert [orjson.loads(line)["event"]["id"] for line in fresh] == [
        f"{dave}-chat-2",
        f"{dave}-chat-3",
    ]
    assert [r.printed for r in results] == [2, 2]


async def test_an_empty_topic_prints_nothing_and_a_missing_one_is_not_created(
    infra: Infra, topics: tuple[str, str]
) -> None:
    """An empty topic ends at once with nothing printed; a missing one is an error and stays missing."""
    assert await _tail(TailOptions(bootstrap=infra.bootstrap, topic=topics[1])) == []
    missing = f"t.{unique('missing')}"
    options = TailOptions(bootstrap=infra.bootstrap, topic=missing, timeout_s=5)

    with pytest.raises(TailError, match=f"topic {missing} does not exist"):
        await _tail(options)
    with pytest.raises(TailError, match="does not exist"):
        await _tail(options)


def test_the_command_prints_json_lines_and_a_count(infra: Infra, topics: tuple[str, str]) -> None:
    """`tollgate events tail` wires its flags through, prints JSON lines and counts on stderr."""
    erin = unique("erin")
    asyncio.run(_produce(infra, topics[0], [_chat(erin, 1, 5), _build(erin), _api(erin)]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOLLGATE_", "KAFKA_"))}
    env["KAFKA_BOOTSTRAP_SERVERS"] = infra.bootstrap
    argv = ["events", "tail", "--topic", topics[0], "--format", "json"]

    done = subprocess.run(
        [sys.executable, "-m", "libs.service.cli", *argv, "--type", "workspace.build.v1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert [orjson.loads(line)["event"]["id"] for line in lines] == [f"{erin}-build"]
    assert done.stderr.decode().strip().splitlines()[-1] == "1 of 3 events printed"
