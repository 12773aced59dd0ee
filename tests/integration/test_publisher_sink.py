"""The local billing sink over real HTTP: the ingest contract, dedup, and every way to fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from libs.service.embedded import free_port, port_open
from tools.billing_sink import BillingSink

pytestmark = pytest.mark.integration

HEADERS = {"Coder-License-Key": "key", "Coder-Deployment-ID": "dep-1"}


def event(event_id: str, count: int = 1) -> dict[str, object]:
    """A wire event."""
    return {
        "id": event_id,
        "event_type": "dc_managed_agents_v1",
        "event_data": {"count": count},
        "created_at": "2026-11-02T10:15:00Z",
    }


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client with a short timeout."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def ingest(
    http: aiohttp.ClientSession, sink: BillingSink, events: list[dict[str, object]]
) -> tuple[int, dict[str, Any]]:
    """POST a batch and return the status and body."""
    async with http.post(
        f"{sink.url}/api/v1/events/ingest", json={"events": events}, headers=HEADERS
    ) as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def test_sink_accepts_deduplicates_and_records_every_request(
    sink: BillingSink, http: aiohttp.ClientSession
) -> None:
    """A resent id is accepted again but counted once, and each request is recorded whole."""
    status, body = await ingest(http, sink, [event("a"), event("b")])
    assert status == 200
    assert body == {"accepted_events": [{"id": "a"}, {"id": "b"}], "rejected_events": []}
    status, body = await ingest(http, sink, [event("a")])
    assert body["accepted_events"] == [{"id": "a"}]
    stats = await (await http.get(f"{sink.control_url}/_sink/stats")).json()
    assert (stats["unique_accepted"], stats["duplicates"], stats["requests"]) == (2, 1, 2)
    received = (await (await http.get(f"{sink.url}/_sink/received?since=1")).json())["requests"]
    assert [r["seq"] for r in received] == [2]
    assert ["Coder-License-Key", "key"] in received[0]["headers"]
    assert '"id": "a"' in received[0]["body"]
    events = (await (await http.get(f"{sink.url}/_sink/events")).json())["events"]
    assert {e["id"]: e["times_accepted"] for e in events} == {"a": 2, "b": 1}


async def test_sink_refuses_events_that_are_more_than_a_count(
    sink: BillingSink, http: aiohttp.ClientSession
) -> None:
    """Extra fields, unknown types and extra data are permanent rejections naming the field."""
    leaky = {**event("x"), "user_id": "u-1"}
    wrong_type = {**event("y"), "event_type": "chat.usage.v1"}
    extra_data = {**event("z"), "event_data": {"count": 1, "email": "a@b.c"}}
    _, body = await ingest(http, sink, [leaky, wrong_type, extra_data, event("ok")])
    assert body["accepted_events"] == [{"id": "ok"}]
    rejected = {r["id"]: r for r in body["rejected_events"]}
    assert "user_id" in rejected["x"]["message"]
    assert "event_type" in rejected["y"]["message"]
    assert "email" in rejected["z"]["message"]
    assert all(r["permanent"] for r in rejected.values())


async def test_sink_takes_agent_time_as_milliseconds_only(
    sink: BillingSink, http: aiohttp.ClientSession
) -> None:
    """`hb_agent_runtime_v1` needs exactly `{"runtime_ms": N}`: a count or extras are refused."""
    hour: dict[str, object] = {
        "event_type": "hb_agent_runtime_v1",
        "created_at": "2026-11-02T10:00:00Z",
    }
    ok = {**hour, "id": "hb_agent_runtime_v1:2026-11-02_10:00:00", "event_data": {"runtime_ms": 9}}
    count = {**hour, "id": "c", "event_data": {"count": 9}}
    extra = {**hour, "id": "e", "event_data": {"runtime_ms": 9, "user_id": "u-1"}}
    negative = {**hour, "id": "n", "event_data": {"runtime_ms": -9}}
    _, body = await ingest(http, sink, [ok, count, extra, negative])
    assert body["accepted_events"] == [{"id": ok["id"]}]
    rejected = {r["id"]: r["message"] for r in body["rejected_events"]}
    assert "runtime_ms" in rejected["c"]
    assert "user_id" in rejected["e"]
    assert "greater than or equal to 0" in rejected["n"]
    stats = await (await http.get(f"{sink.control_url}/_sink/stats")).json()
    assert stats["accepted_by_type"]["hb_agent_runtime_v1"] == 1


async def test_sink_needs_the_license_and_deployment_headers(
    sink: BillingSink, http: aiohttp.ClientSession
) -> None:
    """Without `Coder-License-Key` the answer is 401, without a deployment id 400."""
    url = f"{sink.url}/api/v1/events/ingest"
    resp = await http.post(url, json={"events": [event("a")]})
    assert resp.status == 401
    resp = await http.post(url, json={"events": [event("a")]}, headers={"Coder-License-Key": "k"})
    assert resp.status == 400


async def test_rules_reject_temporarily_permanently_or_omit_for_a_number_of_times(
    sink: BillingSink, http: aiohttp.ClientSession
) -> None:
    """Rules apply to their ids only, and a rule with `times` wears off."""
    control = f"{sink.control_url}/_sink/rules"
    await http.post(control, json={"ids": ["t"], "outcome": "temporary", "times": 1})
    await http.post(control, json={"ids": ["p"], "outcome": "permanent", "message": "nope"})
    await http.post(control, json={"ids": ["o"], "outcome": "omit"})
    _, body = await ingest(http, sink, [event("t"), event("p"), event("o"), event("ok")])
    assert body["accepted_events"] == [{"id": "ok"}]
    assert {(r["id"], r["permanent"]) for r in body["rejected_events"]} == {
        ("t", False),
        ("p", True),
    }
    _, body = await ingest(http, sink, [event("t"), event("p")])
    assert body["accepted_events"] == [{"id": "t"}]
    assert (await http.delete(control)).status == 200
    _, body = await ingest(http, sink, [event("p"), event("o")])
    assert len(body["accepted_events"]) == 2


async def test_error_mode_answers_the_status_and_recovers(
    sink: BillingSink, http: aiohttp.ClientSession
) -> None:
    """Error mode answers 5xx without accepting anything until told to recover."""
    await http.post(f"{sink.url}/_sink/mode", json={"mode": "error", "status": 502})
    status, _ = await ingest(http, sink, [event("a")])
    assert status == 502
    await http.post(f"{sink.url}/_sink/mode", json={"mode": "ok"})
    status, _ = await ingest(http, sink, [event("a")])
    assert status == 200
    stats = await (await http.get(f"{sink.url}/_sink/stats")).json()
    assert stats["statuses"] == {"502": 1, "200": 1}
    assert stats["unique_accepted"] == 1


async def test_hang_mode_holds_requests_until_the_mode_changes(
    sink: BillingSink, http: aiohttp.ClientSession
) -> None:
    """A hung request gets no answer in time and accepts nothing."""
    await http.post(f"{sink.url}/_sink/mode", json={"mode": "hang"})
    with pytest.raises(TimeoutError):
        async with http.post(
            f"{sink.url}/api/v1/events/ingest",
            json={"events": [event("a")]},
            headers=HEADERS,
            timeout=aiohttp.ClientTimeout(total=0.3),
        ):
            pass
    await http.post(f"{sink.control_url}/_sink/mode", json={"mode": "ok"})
    stats = await (await http.get(f"{sink.url}/_sink/stats")).json()
    assert (stats["hung"], stats["unique_accepted"]) == (1, 0)


async def test_refuse_mode_closes_the_port_and_drops_open_connections(
    sink: BillingSink, http: aiohttp.ClientSession
) -> None:
    """While refusing, nothing connects (kept-alive connections included); recovery reopens."""
    status, _ = await ingest(http, sink, [event("warm")])
    assert status == 200
    resp = await http.post(f"{sink.url}/_sink/mode", json={"mode": "refuse"})
    assert resp.status == 200
    assert not port_open("127.0.0.1", sink.port)
    with pytest.raises(aiohttp.ClientError):
        await ingest(http, sink, [event("a")])
    with pytest.raises(aiohttp.ClientConnectorError):
        await ingest(http, sink, [event("a")])
    mode = await (await http.get(f"{sink.control_url}/_sink/mode")).json()
    assert mode["mode"] == "refuse"
    await http.post(f"{sink.control_url}/_sink/mode", json={"mode": "ok"})
    status, _ = await ingest(http, sink, [event("a")])
    assert status == 200


async def test_a_mode_with_a_duration_returns_to_normal_by_itself(
    sink: BillingSink, http: aiohttp.ClientSession
) -> None:
    """`duration` ends a failure mode without a second call."""
    await http.post(
        f"{sink.url}/_sink/mode", json={"mode": "refuse", "duration": "200ms", "delay": "1ms"}
    )
    assert not port_open("127.0.0.1", sink.port)
    await asyncio.sleep(0.4)
    assert port_open("127.0.0.1", sink.port)
    mode = await (await http.get(f"{sink.url}/_sink/mode")).json()
    assert mode["mode"] == "ok"


async def test_refusing_without_a_way_back_is_refused() -> None:
    """Without a control port, refusing for ever would be irreversible, so it is a 409."""
    sink = BillingSink(port=free_port(), control_port=None)
    await sink.start()
    try:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{sink.url}/_sink/mode", json={"mode": "refuse"})
            assert resp.status == 409
            resp = await http.post(f"{sink.url}/_sink/mode", json={"mode": "bogus"})
            assert resp.status == 422
    finally:
        await sink.stop()


async def test_reset_forgets_everything(sink: BillingSink, http: aiohttp.ClientSession) -> None:
    """After a reset the sink is as new: no requests, events, rules or failure mode."""
    await ingest(http, sink, [event("a")])
    await http.post(f"{sink.url}/_sink/rules", json={"ids": ["b"], "outcome": "permanent"})
    await http.post(f"{sink.url}/_sink/mode", json={"mode": "error"})
    await http.post(f"{sink.url}/_sink/reset")
    stats = await (await http.get(f"{sink.url}/_sink/stats")).json()
    assert (stats["mode"], stats["requests"], stats["unique_accepted"]) == ("ok", 0, 0)
    _, body = await ingest(http, sink, [event("b")])
    assert body["accepted_events"] == [{"id": "b"}]
