"""The `tollgate` command: run the whole system, serve one service, migrate, and the tools."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from libs.events.topics import USAGE_EVENTS, USAGE_EVENTS_DLQ
from libs.service.db import migrate
from libs.service.embedded import EmbeddedBroker, EmbeddedPostgres, port_open
from libs.service.kafka import ensure_topics
from libs.service.logging import configure_logging
from libs.service.portal import MIN_SECRET_LENGTH
from libs.service.settings import EXTERNAL_EPOCH


@dataclass(frozen=True)
class ServiceSpec:
    """A service the runner can start, and where it listens by default."""

    name: str
    port_env: str
    default_port: int


SERVICES = (
    ServiceSpec("ingest", "TOLLGATE_INGEST_PORT", 8081),
    ServiceSpec("limits", "TOLLGATE_LIMITS_PORT", 8082),
    ServiceSpec("reports", "TOLLGATE_REPORTS_PORT", 8083),
    ServiceSpec("publisher", "TOLLGATE_PUBLISHER_PORT", 8084),
)

#: Further subcommands, each `module:function` taking the remaining arguments.
TOOLS: dict[str, str] = {
    "billing-sink": "services.publisher.sink:main",
    "publisher": "services.publisher.tools:main",
    "simulate": "libs.simulator.cli:main",
}

DEV_EMITTER_TOKEN = "dev-emitter-token"  # noqa: S105  # printed with a warning; dev only
DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105


def available_services() -> list[ServiceSpec]:
    """The services whose package has an entry point in this checkout."""
    return [s for s in SERVICES if importlib.util.find_spec(f"services.{s.name}.__main__")]


def _serve(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"services.{args.service}.__main__")
    main: Callable[[], None] = module.main
    main()
    return 0


def _migrate(_: argparse.Namespace) -> int:
    configure_logging(os.environ.get("TOLLGATE_LOG_LEVEL", "info"), "console")
    applied = asyncio.run(migrate(_require_env("DATABASE_URL")))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def _create_topics(_: argparse.Namespace) -> int:
    created = asyncio.run(
        ensure_topics(
            os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            events_topic=os.environ.get("TOLLGATE_EVENTS_TOPIC", USAGE_EVENTS),
            dlq_topic=os.environ.get("TOLLGATE_DLQ_TOPIC", USAGE_EVENTS_DLQ),
            replication_factor=int(os.environ.get("TOLLGATE_TOPIC_REPLICATION", "1")),
        )
    )
    print(f"created topics: {', '.join(created) or 'none (all present)'}")
    return 0


def portal_secret(state_dir: Path) -> str:
    """The secret `make run` signs portal tokens and console sessions with: made once, kept in
    the state directory (readable by its owner only) so sessions outlive a restart."""
    path = state_dir / "portal-secret"
    if path.exists() and len(path.read_text().strip()) >= MIN_SECRET_LENGTH:
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"error: {name} is not set")
    return value


class Runner:
    """`tollgate run`: infrastructure, migrations, topics, every service, one log stream."""

    def __init__(self, *, state_dir: Path, with_billing_sink: bool) -> None:
        self.state_dir = state_dir
        self.with_billing_sink = with_billing_sink
        self.broker: EmbeddedBroker | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def _infrastructure(self, env: dict[str, str]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
            self.broker = EmbeddedBroker(port=int(env.get("TOLLGATE_EMBEDDED_KAFKA_PORT", "9092")))
            self.broker.start(log_path=self.state_dir / "tansu.log")
            env["KAFKA_BOOTSTRAP_SERVERS"] = self.broker.bootstrap
            env["TOLLGATE_BROKER_EPOCH"] = self.broker.epoch
            # The marker says which log the offsets stored in PostgreSQL now point into.
            (self.state_dir / "broker-epoch").write_text(self.broker.epoch + "\n")
        else:
            env.setdefault("TOLLGATE_BROKER_EPOCH", EXTERNAL_EPOCH)
        if not env.get("DATABASE_URL"):
            self.postgres = EmbeddedPostgres(self.state_dir / "pgdata")
            env["DATABASE_URL"] = self.postgres.start()
        asyncio.run(migrate(env["DATABASE_URL"]))
        asyncio.run(
            ensure_topics(
                env["KAFKA_BOOTSTRAP_SERVERS"],
                events_topic=env.get("TOLLGATE_EVENTS_TOPIC", USAGE_EVENTS),
                dlq_topic=env.get("TOLLGATE_DLQ_TOPIC", USAGE_EVENTS_DLQ),
            )
        )

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        self.children[name] = subprocess.Popen(  # noqa: S603  # our own interpreter and module
            [sys.executable, "-m", "libs.service.cli", *argv], env=env
        )

    def run(self) -> int:
        """Start everything, wait for a signal or a crash, then stop everything."""
        env = dict(os.environ)
        dev_tokens = not env.get("TOLLGATE_EMITTER_TOKENS") and not env.get("TOLLGATE_ADMIN_TOKENS")
        if dev_tokens:
            env["TOLLGATE_EMITTER_TOKENS"] = DEV_EMITTER_TOKEN
            env["TOLLGATE_ADMIN_TOKENS"] = DEV_ADMIN_TOKEN
        env.setdefault("TOLLGATE_LOG_FORMAT", "console" if sys.stderr.isatty() else "json")
        env.setdefault("TOLLGATE_HOST", "127.0.0.1")
        services = available_services()
        ports = {s.name: int(env.get(s.port_env, s.default_port)) for s in services}
        for name in ("ingest", "limits", "publisher"):
            if name in ports:
                env.setdefault(f"TOLLGATE_{name.upper()}_URL", f"http://127.0.0.1:{ports[name]}")
        if not env.get("TOLLGATE_PORTAL_SECRET"):
            env["TOLLGATE_PORTAL_SECRET"] = portal_secret(self.state_dir)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._infrastructure(env)
            if self.with_billing_sink:
                sink_port = int(env.get("TOLLGATE_BILLING_SINK_PORT", "8090"))
                env.setdefault("BILLING_URL", f"http://127.0.0.1:{sink_port}")
                env.setdefault("LICENSE_KEY", "dev-license-key")
                self._spawn("billing-sink", ["billing-sink", "--port", str(sink_port)], env)
            for spec in services:
                self._spawn(spec.name, ["serve", spec.name], env)
            self._wait_listening(ports)
            self._banner(env, ports, dev_tokens=dev_tokens)
            return self._supervise()
        finally:
            self._shutdown()

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _wait_listening(self, ports: dict[str, int], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = dict(ports)
        while waiting and time.monotonic() < deadline and not self.stopping:
            waiting = {n: p for n, p in waiting.items() if not port_open("127.0.0.1", p)}
            if any(c.poll() is not None for c in self.children.values()):
                return
            time.sleep(0.1)

    def _banner(self, env: dict[str, str], ports: dict[str, int], *, dev_tokens: bool) -> None:
        lines = ["", "Tollgate is running:"]
        lines += [f"  {name:<10} http://127.0.0.1:{port}" for name, port in ports.items()]
        lines.append(f"  {'kafka':<10} {env['KAFKA_BOOTSTRAP_SERVERS']}")
        lines.append(f"  {'database':<10} {env['DATABASE_URL']}")
        if "BILLING_URL" in env and self.with_billing_sink:
            lines.append(f"  {'billing':<10} {env['BILLING_URL']} (local sink)")
        if dev_tokens:
            lines += [
                f"  emitter token: {DEV_EMITTER_TOKEN}",
                f"  admin token:   {DEV_ADMIN_TOKEN}",
                (
                    "  WARNING: these are development tokens; set TOLLGATE_EMITTER_TOKENS and "
                    "TOLLGATE_ADMIN_TOKENS anywhere else."
                ),
            ]
        lines.append("Ctrl-C stops everything.\n")
        print("\n".join(lines), file=sys.stderr, flush=True)

    def _supervise(self) -> int:
        while not self.stopping:
            for name, child in self.children.items():
                code = child.poll()
                if code is not None:
                    print(f"tollgate: {name} exited with {code}; stopping", file=sys.stderr)
                    return code or 1
            time.sleep(0.2)
        return 0

    def _shutdown(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()


def _run(args: argparse.Namespace) -> int:
    configure_logging(os.environ.get("TOLLGATE_LOG_LEVEL", "info"), "console")
    state_dir = Path(os.environ.get("TOLLGATE_STATE_DIR", ".tollgate")).resolve()
    return Runner(state_dir=state_dir, with_billing_sink=args.with_billing_sink).run()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the broker, PostgreSQL and every service")
    run.add_argument(
        "--with-billing-sink",
        action="store_true",
        default=os.environ.get("TOLLGATE_RUN_BILLING_SINK", "") in ("1", "true"),
        help="also start the local billing sink and point the publisher at it",
    )
    run.set_defaults(func=_run)
    serve = sub.add_parser("serve", help="serve one service")
    serve.add_argument("service", choices=[s.name for s in SERVICES])
    serve.set_defaults(func=_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_migrate)
    sub.add_parser("create-topics", help="create the Kafka topics").set_defaults(
        func=_create_topics
    )
    for tool in TOOLS:
        sub.add_parser(tool, help=f"see `tollgate {tool} --help`", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tollgate` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        module_name, _, func_name = TOOLS[argv[0]].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            print(f"tollgate: {argv[0]} is not available in this build", file=sys.stderr)
            return 2
        tool: Callable[[list[str]], int] = getattr(module, func_name)
        return tool(argv[1:])
    args = _parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
