"""The simulator's senders and command line, with fakes in place of ingest and Kafka."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from libs.events.client import EmitError, EmitResult, Rejection
from libs.events.codec import decode
from libs.events.models import ChatUsageRecorded, Envelope
from tools.simulator.cli import _parser, main
from tools.simulator.generate import Simulation, SimulationConfig
from tools.simulator.send import IngestSender, KafkaSender, RateLimiter, chunked

END = datetime(2026, 11, 4, 12, 0, tzinfo=UTC)


def _events(n: int = 1_200) -> list[Envelope]:
    sim = Simulation(SimulationConfig(seed=21, users=20, days=5, end=END))
    events = list(sim.events())[:n]
    assert len(events) == n
    return events


class FakeClock:
    """A monotonic clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_rate_limiter_spaces_batches_to_the_rate() -> None:
    """Past the burst, each batch waits its share of the rate."""
    clock = FakeClock()
    limiter = RateLimiter(1_000, burst=500, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        await limiter.acquire(500)
    assert clock.sleeps == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert clock.now == pytest.approx(2.0)


async def test_no_rate_means_no_waiting() -> None:
    """Without a rate the limiter never sleeps."""
    clock = FakeClock()
    limiter = RateLimiter(None, clock=clock, sleep=clock.sleep)
    await limiter.acquire(10_000)
    assert clock.sleeps == []


def test_chunked_keeps_order_and_the_remainder() -> None:
    """Events are cut into consecutive batches, the last one shorter."""
    events = _events(1_050)
    chunks = list(chunked(events, 500))
    assert [len(c) for c in chunks] == [500, 500, 50]
    assert [e for c in chunks for e in c] == events


async def test_a_failed_batch_is_resent_with_the_same_ids() -> None:
    """Transient failures are retried with byte-identical batches until ingest accepts them."""
    calls: list[list[str]] = []

    async def flaky(batch: Sequence[Envelope]) -> EmitResult:
        calls.append([e.id for e in batch])
        if len(calls) <= 2:
            raise EmitError("ingest answered 503", status=503)
        return EmitResult([e.id for e in batch], [])

    clock = FakeClock()
    sender = IngestSender(
        ingest_url="http://127.0.0.1:1", token="t", emit=flaky, sleep=clock.sleep, concurrency=1
    )
    events = _events(300)
    report = await sender.send(events)
    assert calls[0] == calls[1] == calls[2] == [e.id for e in events]
    assert report.accepted == 300
    assert report.resent_batches == 2
    assert report.offered == 300


async def test_a_refused_batch_stops_the_send() -> None:
    """A non-transient refusal (bad token) is raised at once instead of retried."""

    async def refuse(batch: Sequence[Envelope]) -> EmitResult:
        raise EmitError("ingest answered 401", status=401)

    sender = IngestSender(ingest_url="http://127.0.0.1:1", token="t", emit=refuse)
    with pytest.raises(EmitError, match="401"):
        await sender.send(_events(1_200))


async def test_rejections_are_reported() -> None:
    """Events ingest refused one by one are listed in the report, the rest counted accepted."""

    async def picky(batch: Sequence[Envelope]) -> EmitResult:
        return EmitResult(
            [e.id for e in batch[1:]], [Rejection(batch[0].id, "data.model: bad", permanent=True)]
        )

    seen: list[int] = []
    sender = IngestSender(
        ingest_url="http://127.0.0.1:1", token="t", emit=picky, batch_size=100, on_sent=seen.append
    )
    report = await sender.send(_events(250))
    assert report.accepted == 247
    assert len(report.rejected) == 3
    assert sum(seen) == 247


def test_direct_records_are_priced_like_ingest() -> None:
    """Produced straight to Kafka, chat usage carries the cost ingest would have stamped."""
    sim = Simulation(SimulationConfig(seed=21, users=4, days=2, end=END))
    sender = KafkaSender(bootstrap="127.0.0.1:1", topic="t", prices=sim.prices)
    chats = [e for e in sim.events() if isinstance(e, ChatUsageRecorded)]
    for event in chats[:50]:
        key, value = sender.record(event)
        decoded = decode(value)
        assert isinstance(decoded, ChatUsageRecorded)
        assert key == event.user_id.encode()
        assert decoded.data.cost_micros is not None


def test_dry_run_writes_the_expected_totals(tmp_path: Path) -> None:
    """`tollgate simulate --dry-run` sends nothing and writes every expected figure."""
    out = tmp_path / "expected.json"
    code = main(
        [
            "--dry-run",
            "--no-progress",
            "--seed",
            "5",
            "--users",
            "4",
            "--days",
            "3",
            "--end",
            "2026-11-04T12:00:00Z",
            "--expected",
            str(out),
        ]
    )
    assert code == 0
    document = orjson.loads(out.read_bytes())
    assert document["simulation"]["user_ids"] == [f"sim-5-u000{i}" for i in range(1, 5)]
    assert document["simulation"]["end"] == "2026-11-04T12:00:00Z"
    assert document["send"]["mode"] == "dry-run"
    assert document["summary"]["events"] > 0
    assert set(document["limits"]["spent_micros"]) <= set(document["simulation"]["user_ids"])


def test_bad_arguments_exit_with_two() -> None:
    """A zero-sized simulation is refused with exit code 2."""
    assert main(["--dry-run", "--users", "0"]) == 2


def test_dry_run_prints_a_summary_and_the_events_as_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--dry-run --print-events` prints one decodable JSON line per generated event and a summary that counts them."""
    out = tmp_path / "expected.json"
    argv = ["--dry-run", "--print-events", "--no-progress", "--seed", "6", "--users", "3"]
    argv += ["--days", "2", "--end", "2026-11-04T12:00:00Z", "--expected", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    events = [decode(line.encode()) for line in captured.out.splitlines()]
    document = orjson.loads(out.read_bytes())
    assert len(events) == document["summary"]["events"] > 0
    assert all(e.id.startswith("sim-6-") for e in events)
    summary = " ".join(captured.err.split())
    assert f"events {len(events):,} generated" in summary
    assert "dry run: nothing was sent" in summary
    for type_name, count in document["summary"]["by_type"].items():
        assert f"{count:,} {type_name}" in summary
    cost = sum(u["total_cost_micros"] for u in document["costs"]["users"].values())
    assert f"{cost:,} µ$" in summary


def test_the_simulator_finds_make_run_by_its_port_and_state_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest, the broker for `--direct` and the expected file follow make run's variables."""
    for name in ("TOLLGATE_INGEST_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOLLGATE_INGEST_PORT", "28081")
    monkeypatch.setenv("TOLLGATE_EMBEDDED_KAFKA_PORT", "28092")
    monkeypatch.setenv("TOLLGATE_STATE_DIR", str(tmp_path / "state"))
    args = _parser().parse_args([])
    assert args.ingest_url == "http://127.0.0.1:28081"
    assert args.bootstrap == "127.0.0.1:28092"
    argv = ["--dry-run", "--no-progress", "--seed", "8", "--users", "1", "--days", "1"]
    assert main(argv) == 0
    assert (tmp_path / "state" / "simulations" / "sim-8.json").exists()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    assert _parser().parse_args([]).bootstrap == "kafka:9092"
