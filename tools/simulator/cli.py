"""`tollgate simulate`: generate seeded usage, send it, and write the figures it must produce.

It finds the system the way its tools do (`libs.service.local`): ingest at
`TOLLGATE_INGEST_URL` or on `TOLLGATE_INGEST_PORT`, the broker at `KAFKA_BOOTSTRAP_SERVERS`
or on `TOLLGATE_EMBEDDED_KAFKA_PORT`, the expected figures under `TOLLGATE_STATE_DIR`, so a
`make run` on other ports gets the simulation, never the one on the default ports.
`tollgate simulate verify` compares those figures with what the services answer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from libs.events.codec import encode
from libs.events.models import Envelope
from libs.events.topics import USAGE_EVENTS
from libs.events.vocabulary import PERIODS
from libs.service.events_tool import reader_went_away
from libs.service.local import kafka_bootstrap, service_url, state_dir
from services.limits.domain import LimitsConfig
from tools.simulator.expected import INTERVALS, Tally
from tools.simulator.generate import Simulation, SimulationConfig
from tools.simulator.send import (
    DEFAULT_BATCH,
    IngestSender,
    KafkaSender,
    SendReport,
    register_prices,
)

__all__ = ["default_expected_path", "first_token", "main", "summary_table", "write_expected"]

# The development tokens `tollgate run` prints when none are configured.
_DEV_EMITTER: Final = "dev-emitter-token"
_DEV_ADMIN: Final = "dev-admin-token"


def first_token(env: str, default: str) -> str:
    """The first of the comma-separated tokens in `env`, or `default` (a development token)."""
    tokens = [t.strip() for t in os.environ.get(env, "").split(",") if t.strip()]
    return tokens[0] if tokens else default


def default_expected_path(seed: int) -> Path:
    """Where a simulation's expected figures go: `$TOLLGATE_STATE_DIR/simulations/sim-SEED.json`."""
    return state_dir() / "simulations" / f"sim-{seed}.json"


def _end(value: str) -> datetime:
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError("--end needs a timezone, e.g. 2026-11-02T10:15:00Z")
    return at.astimezone(UTC)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tollgate simulate",
        description=(
            "Generate realistic usage for N users over D days (deterministic from --seed), send "
            "it through ingest (or straight to Kafka with --direct), and write the totals the "
            "services must then show. `tollgate simulate verify` compares them with what the "
            "services answer."
        ),
    )
    size = p.add_argument_group("what to generate")
    size.add_argument("--seed", type=int, default=1, help="the seed (default 1)")
    size.add_argument("--users", type=int, default=50, help="simulated users (default 50)")
    size.add_argument("--days", type=int, default=30, help="days of usage (default 30)")
    size.add_argument(
        "--end", type=_end, default=None, help="when the usage ends (ISO 8601; default now)"
    )
    size.add_argument(
        "--intensity", type=float, default=1.0, help="scale of chat usage per user (default 1)"
    )
    size.add_argument(
        "--interval",
        choices=INTERVALS,
        default="1 day",
        help="bucket size of the expected activity (default '1 day')",
    )
    where = p.add_argument_group("where to send it")
    where.add_argument(
        "--ingest-url",
        default=service_url("ingest"),
        help="ingest's base URL (default: $TOLLGATE_INGEST_URL, else $TOLLGATE_INGEST_PORT on "
        "this machine: %(default)s)",
    )
    where.add_argument(
        "--token",
        default=first_token("TOLLGATE_EMITTER_TOKENS", _DEV_EMITTER),
        help="emitter token (default: the first of $TOLLGATE_EMITTER_TOKENS, or the dev token)",
    )
    where.add_argument(
        "--admin-token",
        default=first_token("TOLLGATE_ADMIN_TOKENS", _DEV_ADMIN),
        help="admin token, to register the model prices (default: $TOLLGATE_ADMIN_TOKENS)",
    )
    where.add_argument(
        "--direct", action="store_true", help="produce straight to Kafka instead of via ingest"
    )
    where.add_argument(
        "--bootstrap",
        default=kafka_bootstrap(),
        help="Kafka bootstrap servers for --direct (default: $KAFKA_BOOTSTRAP_SERVERS, else the "
        "embedded broker on $TOLLGATE_EMBEDDED_KAFKA_PORT: %(default)s)",
    )
    where.add_argument(
        "--topic",
        default=os.environ.get("TOLLGATE_EVENTS_TOPIC", USAGE_EVENTS),
        help=f"topic for --direct (default {USAGE_EVENTS})",
    )
    how = p.add_argument_group("how")
    how.add_argument("--rate", type=float, default=None, help="events per second at most")
    how.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="events per request")
    how.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    how.add_argument(
        "--skip-prices",
        action="store_true",
        help="do not register the simulated models' prices with ingest",
    )
    how.add_argument(
        "--dry-run",
        action="store_true",
        help="generate, print a summary and write the totals; send nothing",
    )
    how.add_argument(
        "--print-events",
        action="store_true",
        help="also print every generated event as one JSON line on standard output "
        "(as sent to ingest; with --direct, priced as produced)",
    )
    how.add_argument("--no-progress", action="store_true", help="no progress bar")
    how.add_argument(
        "--expected",
        type=Path,
        default=None,
        help="where to write the expected totals (default: "
        "$TOLLGATE_STATE_DIR/simulations/sim-SEED.json, .tollgate by default)",
    )
    notify = p.add_argument_group("budget notifications")
    notify.add_argument(
        "--limits-config",
        type=_limits_config,
        default=None,
        metavar="PATH",
        help=(
            "a JSON file with the limits configuration in force before the usage is sent (the "
            "body of PUT /api/v1/limits/config, plus optional user_overrides and "
            "group_overrides maps of id to micro-dollars): the expected file then lists the "
            "budget notifications and emails it must cause"
        ),
    )
    notify.add_argument(
        "--notify-admin-email",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="an address of TOLLGATE_NOTIFY_ADMIN_EMAILS (repeatable), for the expected emails",
    )
    return p


def limits_config(doc: object) -> LimitsConfig:
    """A limits configuration from its JSON form; ValueError names what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")  # noqa: TRY004  # one error kind for the CLI
    known = {
        "enabled",
        "period",
        "default_limit_micros",
        "warning_threshold_percent",
        "user_overrides",
        "group_overrides",
    }
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    period = doc.get("period", "month")
    if period not in PERIODS:
        raise ValueError("period: day, week or month")
    percent = doc.get("warning_threshold_percent", 85)
    if percent is not None and (not isinstance(percent, int) or not 1 <= percent <= 99):
        raise ValueError("warning_threshold_percent: a whole number from 1 to 99, or null")
    default = doc.get("default_limit_micros")
    overrides = {name: doc.get(name, {}) for name in ("user_overrides", "group_overrides")}
    for value in [default, *(v for o in overrides.values() for v in dict(o).values())]:
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError("limits are whole micro-dollar amounts above 0")
    return LimitsConfig(
        enabled=bool(doc.get("enabled", True)),
        period=period,
        default_limit_micros=default,
        user_overrides=dict(overrides["user_overrides"]),
        group_overrides=dict(overrides["group_overrides"]),
        warning_threshold_percent=percent,
    )


def _limits_config(value: str) -> LimitsConfig:
    try:
        return limits_config(orjson.loads(Path(value).read_bytes()))
    except (OSError, orjson.JSONDecodeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--limits-config {value}: {exc}") from exc


def write_expected(path: Path, document: object) -> None:
    """Write a JSON document (times in UTC with `Z`), creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        orjson.dumps(
            document,
            option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS,
        )
        + b"\n"
    )


def _stream(
    sim: Simulation,
    tally: Tally,
    progress: Progress,
    days_task: TaskID,
    out: IO[bytes] | None = None,
) -> Iterator[Envelope]:
    def seen(event: Envelope) -> Envelope:
        tally.observe(event)
        if out is not None:
            out.write(encode(event) + b"\n")
        return event

    for event in sim.directory_events():
        yield seen(event)
    for day in range(sim.config.days):
        for event in sim.day_events(day):
            yield seen(event)
        progress.update(days_task, advance=1)
    if out is not None:
        out.flush()


def _dollars(micros: int) -> str:
    return f"${micros / 1_000_000:,.2f}"


def summary_table(document: dict[str, Any], expected_path: Path) -> Table:
    """What a simulation generated (and sent), from its expected document, as a table."""
    sim, send, summary = document["simulation"], document["send"], document["summary"]
    costs = document["costs"]["users"].values()
    table = Table(title=f"simulation sim-{sim['seed']}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()

    def when(at: object) -> str:
        text = at.isoformat() if isinstance(at, datetime) else str(at)
        return text.replace("+00:00", "Z")

    table.add_row("window", f"{sim['days']} days", f"{when(sim['start'])} → {when(sim['end'])}")
    table.add_row("users", f"{sim['users']:,}", f"org {sim['org_id']}, ids sim-{sim['seed']}-u…")
    table.add_row("events", f"{summary['events']:,}", "generated")
    for type_name, count in summary["by_type"].items():
        table.add_row("", f"{count:,}", type_name)
    messages = sum(int(u["message_count"]) for u in costs)
    table.add_row("chat messages", f"{messages:,}", f"+ {summary['title_messages']:,} titles")
    cost = sum(int(u["total_cost_micros"]) for u in costs)
    table.add_row("chat cost", _dollars(cost), f"{cost:,} µ$ over the window")
    runtime = int(document["agent_time"]["total_runtime_ms"])
    table.add_row("agent time", f"{runtime / 3_600_000:,.1f} h", f"{runtime:,} ms")
    billable = int(document["billing"]["dc_managed_agents_v1"])
    table.add_row("billable builds", f"{billable:,}", "dc_managed_agents_v1")
    if send["mode"] == "dry-run":
        table.add_row("sent", "0", "dry run: nothing was sent")
    else:
        rejected = len(send["rejected"])
        table.add_row(
            "sent", f"{send['accepted']:,}", f"accepted via {send['mode']}, {rejected:,} rejected"
        )
    table.add_row("expected", "", str(expected_path))
    table.columns[2].overflow = "fold"
    return table


async def _run(args: argparse.Namespace, console: Console) -> int:
    config = SimulationConfig(
        seed=args.seed,
        users=args.users,
        days=args.days,
        intensity=args.intensity,
        **({"end": args.end} if args.end is not None else {}),
    )
    sim = Simulation(config)
    tally = Tally(sim.prices)
    expected_path = args.expected or default_expected_path(args.seed)
    mode = "dry run" if args.dry_run else ("Kafka " + args.bootstrap if args.direct else "ingest")
    console.print(
        f"simulating {config.users} users over {config.days} days up to "
        f"{config.end.isoformat()} (seed {config.seed}) → {mode}"
    )
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("days · {task.fields[sent]:,} events sent"),
        TimeElapsedColumn(),
        console=console,
        disable=args.no_progress,
    )
    report = SendReport()
    with progress:
        days_task = progress.add_task("simulating", total=config.days, sent=0)
        sent = 0

        def on_sent(n: int) -> None:
            nonlocal sent
            sent += n
            progress.update(days_task, sent=sent)

        out = sys.stdout.buffer if args.print_events else None
        events = _stream(sim, tally, progress, days_task, out)
        if args.dry_run:
            for _ in events:
                pass
        elif args.direct:
            report = await KafkaSender(
                bootstrap=args.bootstrap,
                topic=args.topic,
                prices=sim.prices,
                batch_size=args.batch_size,
                rate=args.rate,
                on_sent=on_sent,
            ).send(events)
        else:
            if not args.skip_prices:
                changed = await register_prices(args.ingest_url, args.admin_token, sim.prices)
                if changed:
                    console.print(f"registered prices for {', '.join(changed)}")
            report = await IngestSender(
                ingest_url=args.ingest_url,
                token=args.token,
                batch_size=args.batch_size,
                rate=args.rate,
                concurrency=args.concurrency,
                on_sent=on_sent,
            ).send(events)
    start, end = sim.start, sim.end
    document = {
        "simulation": {
            "seed": config.seed,
            "users": config.users,
            "days": config.days,
            "intensity": config.intensity,
            "start": start,
            "end": end,
            "org_id": config.org_id,
            "user_ids": [u.id for u in sim.users],
        },
        "send": {
            "mode": "dry-run" if args.dry_run else ("direct" if args.direct else "ingest"),
            "offered": report.offered,
            "accepted": report.accepted,
            "rejected": [r.id for r in report.rejected],
            "resent_batches": report.resent_batches,
            "elapsed_s": round(report.elapsed_s, 3),
        },
        **tally.snapshot(
            now=end,
            start=start,
            end=end,
            interval=args.interval,
            limits=args.limits_config,
            admin_emails=args.notify_admin_email,
        ),
    }
    write_expected(expected_path, document)
    generated = tally.events
    if not args.dry_run:
        console.print(
            f"sent {report.accepted:,} of {generated:,} events in {report.elapsed_s:.1f}s "
            f"({report.rate:,.0f}/s), {len(report.rejected)} rejected, "
            f"{report.resent_batches} batches resent"
        )
    console.print(summary_table(document, expected_path))
    if not args.dry_run:
        console.print(
            f"compare with the services: tollgate simulate verify --expected {expected_path}"
        )
    for rejection in report.rejected[:5]:
        console.print(f"[red]rejected {rejection.id}: {rejection.message}")
    return 1 if report.rejected else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator with command-line arguments; the exit code says whether all went in.

    `tollgate simulate verify ...` compares an expected file with the services instead.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["verify"]:
        from tools.simulator.verify import main as verify_main  # noqa: PLC0415

        return verify_main(arguments[1:])
    args = _parser().parse_args(arguments)
    if args.users < 1 or args.days < 1 or not 1 <= args.batch_size <= 1000:
        sys.stderr.write(
            "tollgate simulate: --users and --days must be ≥ 1, --batch-size 1..1000\n"
        )
        return 2
    console = Console(stderr=True, soft_wrap=True)
    try:
        return asyncio.run(_run(args, console))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return reader_went_away()
    except Exception as exc:
        console.print(f"[red]tollgate simulate: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
