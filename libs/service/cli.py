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
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from libs.events.topics import USAGE_EVENTS, USAGE_EVENTS_DLQ
from libs.service.db import migrate
from libs.service.embedded import EmbeddedBroker, EmbeddedPostgres
from libs.service.kafka import ensure_topics
from libs.service.local import kafka_bootstrap, local_host
from libs.service.local import state_dir as configured_state_dir
from libs.service.logging import configure_logging
from libs.service.portal import MIN_SECRET_LENGTH
from libs.service.settings import EXTERNAL_EPOCH
from libs.service.spec import ServiceSpec, ToolSpec, find_service, services, tools
from libs.service.supervisor import (
    Child,
    PortClaim,
    SetupError,
    Supervisor,
    check_ports,
    dead_infrastructure,
    port_from_env,
)

#: The tool `tollgate run --with-billing-sink` starts beside the services.
BILLING_SINK: Final = "billing-sink"

T = TypeVar("T")

DEV_EMITTER_TOKEN = "dev-emitter-token"  # noqa: S105  # printed with a warning; dev only
DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105


def available_services() -> list[ServiceSpec]:
    """The declared services whose package has an entry point (`__main__`) in this build."""
    return [s for s in services() if importlib.util.find_spec(s.main_module)]


def find_tool(name: str) -> ToolSpec | None:
    """The tool called `name` in this build, if there is one."""
    return next((tool for tool in tools() if tool.name == name), None)


def _serve(args: argparse.Namespace) -> int:
    module = importlib.import_module(find_service(args.service).main_module)
    main: Callable[[], None] = module.main
    main()
    return 0


def _migrate(_: argparse.Namespace) -> int:
    configure_logging(os.environ.get("TOLLGATE_LOG_LEVEL", "info"), "console")
    grant_to = os.environ.get("TOLLGATE_MIGRATIONS_GRANT_TO") or None
    applied = asyncio.run(migrate(_require_env("DATABASE_URL"), grant_to=grant_to))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def _create_topics(_: argparse.Namespace) -> int:
    created = asyncio.run(
        ensure_topics(
            kafka_bootstrap(),
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


#: With the local billing sink, the publisher sends soon after start and then often, so what
#: a demo sends shows up at the sink in seconds instead of after 5 to 17 minutes.
SINK_FIRST_DELAY: Final = "2s"
SINK_INTERVAL: Final = "30s"


def billing_sink_env(env: dict[str, str], url: str) -> None:
    """Point the publisher at the local billing sink, with prompt send cycles.

    Values already in the environment win, so `PUBLISH_INTERVAL=17m` still tries out the
    production rhythm against the sink.
    """
    env.setdefault("BILLING_URL", url)
    env.setdefault("LICENSE_KEY", "dev-license-key")
    env.setdefault("PUBLISH_FIRST_DELAY", SINK_FIRST_DELAY)
    env.setdefault("PUBLISH_INTERVAL", SINK_INTERVAL)


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"error: {name} is not set")
    return value


class Runner:
    """`tollgate run`: infrastructure, migrations, topics, every service supervised, one log stream.

    Every port is checked before anything starts. A service that dies is restarted with
    backoff while the rest keep running (see `libs.service.supervisor`); the banner appears
    once every service answers ready. SIGINT/SIGTERM stop the services first, then the
    broker and PostgreSQL.
    """

    def __init__(self, *, state_dir: Path, with_billing_sink: bool) -> None:
        self.state_dir = state_dir
        self.with_billing_sink = with_billing_sink
        self.broker: EmbeddedBroker | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.postgres_pid: int | None = None
        self.supervisor: Supervisor | None = None
        self.stopping = False

    def _claims(self, env: dict[str, str], services: Sequence[ServiceSpec]) -> list[PortClaim]:
        claims = []
        if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
            port = port_from_env(env, "TOLLGATE_EMBEDDED_KAFKA_PORT", 9092)
            claims.append(PortClaim("the embedded broker", "TOLLGATE_EMBEDDED_KAFKA_PORT", port))
        host = env["TOLLGATE_HOST"]
        for spec in services:
            port = port_from_env(env, spec.port_env, spec.default_port)
            claims.append(PortClaim(spec.name, spec.port_env, port, host))
            port = port_from_env(env, spec.metrics_port_env, spec.default_metrics_port)
            claims.append(PortClaim(f"{spec.name} metrics", spec.metrics_port_env, port, host))
        if self.with_billing_sink:
            sink = find_tool(BILLING_SINK)
            if sink is None or sink.port_env is None or sink.default_port is None:
                raise SetupError(
                    "the local billing sink is not part of this build (its tools package is "
                    "not installed); run without --with-billing-sink or TOLLGATE_RUN_BILLING_SINK"
                )
            port = port_from_env(env, sink.port_env, sink.default_port)
            sink_host = env.get("TOLLGATE_BILLING_SINK_HOST", "127.0.0.1")
            claims.append(PortClaim("the billing sink", sink.port_env, port, sink_host))
        return claims

    def _infrastructure(self, env: dict[str, str]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
            port = port_from_env(env, "TOLLGATE_EMBEDDED_KAFKA_PORT", 9092)
            self.broker = EmbeddedBroker(port=port)
            broker, log_path = self.broker, self.state_dir / "tansu.log"
            _stage("the embedded broker did not start", lambda: broker.start(log_path=log_path))
            env["KAFKA_BOOTSTRAP_SERVERS"] = self.broker.bootstrap
            env["TOLLGATE_BROKER_EPOCH"] = self.broker.epoch
            # The marker says which log the offsets stored in PostgreSQL now point into.
            (self.state_dir / "broker-epoch").write_text(self.broker.epoch + "\n")
        else:
            env.setdefault("TOLLGATE_BROKER_EPOCH", EXTERNAL_EPOCH)
        if not env.get("DATABASE_URL"):
            self.postgres = EmbeddedPostgres(self.state_dir / "pgdata")
            env["DATABASE_URL"] = _stage(
                "the embedded PostgreSQL did not start", self.postgres.start
            )
            self.postgres_pid = self.postgres.pid()
        _stage("migrating the database failed", lambda: asyncio.run(migrate(env["DATABASE_URL"])))
        _stage(
            f"creating the topics on {env['KAFKA_BOOTSTRAP_SERVERS']} failed",
            lambda: asyncio.run(
                ensure_topics(
                    env["KAFKA_BOOTSTRAP_SERVERS"],
                    events_topic=env.get("TOLLGATE_EVENTS_TOPIC", USAGE_EVENTS),
                    dlq_topic=env.get("TOLLGATE_DLQ_TOPIC", USAGE_EVENTS_DLQ),
                )
            ),
        )

    def run(self) -> int:
        """Start everything, restart what dies, and stop everything on a signal."""
        env = dict(os.environ)
        dev_tokens = not env.get("TOLLGATE_EMITTER_TOKENS") and not env.get("TOLLGATE_ADMIN_TOKENS")
        if dev_tokens:
            env["TOLLGATE_EMITTER_TOKENS"] = DEV_EMITTER_TOKEN
            env["TOLLGATE_ADMIN_TOKENS"] = DEV_ADMIN_TOKEN
        env.setdefault("TOLLGATE_LOG_FORMAT", "console" if sys.stderr.isatty() else "json")
        env.setdefault("TOLLGATE_HOST", "127.0.0.1")
        # A laptop's webhook receivers listen on localhost or the LAN.
        env.setdefault("TOLLGATE_WEBHOOK_ALLOW_PRIVATE", "true")
        services = available_services()
        try:
            claims = self._claims(env, services)
            check_ports(claims)
        except SetupError as exc:
            _say(str(exc))
            return 2
        by_name = {claim.what: claim for claim in claims}
        host = local_host(env["TOLLGATE_HOST"])
        ports = {spec.name: by_name[spec.name].port for spec in services}
        for spec in services:
            env.setdefault(spec.url_env, f"http://{host}:{ports[spec.name]}")
        if not env.get("TOLLGATE_PORTAL_SECRET"):
            env["TOLLGATE_PORTAL_SECRET"] = portal_secret(self.state_dir)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            try:
                self._infrastructure(env)
            except SetupError as exc:
                _say(str(exc))
                return 1
            if self.stopping:
                return 0
            self.supervisor = supervisor = Supervisor(
                spawn=lambda child: self._spawn(child.argv, env), say=_say
            )
            if self.with_billing_sink:
                sink = by_name["the billing sink"]
                billing_sink_env(env, f"http://{local_host(sink.host)}:{sink.port}")
                supervisor.add(
                    Child(
                        BILLING_SINK,
                        [BILLING_SINK, "--port", str(sink.port)],
                        ready_url=f"{env['BILLING_URL']}/healthz",
                        port=sink,
                    )
                )
            for spec in services:
                supervisor.add(
                    Child(
                        spec.name,
                        ["serve", spec.name],
                        ready_url=f"http://{host}:{ports[spec.name]}/readyz",
                        port=by_name[spec.name],
                    )
                )
            supervisor.start_all()
            if not self._wait_ready(supervisor):
                return 0 if self.stopping else 1
            self._banner(env, host, ports, dev_tokens=dev_tokens)
            return self._watch(supervisor)
        finally:
            self._shutdown()

    def _spawn(self, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # noqa: S603  # our own interpreter and module
            [sys.executable, "-m", "libs.service.cli", *argv], env=env
        )

    def _on_signal(self, _signum: int, _frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            _say("stopping: the services first, then the broker and PostgreSQL")

    def _trouble(self, supervisor: Supervisor) -> str | None:
        """Why the run cannot go on: a child given up on, or dead infrastructure."""
        if supervisor.gave_up is not None:
            return supervisor.gave_up
        parts: list[tuple[str, Callable[[], bool]]] = []
        if self.broker is not None:
            process = self.broker.process
            parts.append(
                ("the embedded broker", lambda: process is not None and process.poll() is None)
            )
        if self.postgres_pid is not None:
            pid = self.postgres_pid
            parts.append(("the embedded PostgreSQL", lambda: _pid_alive(pid)))
        dead = dead_infrastructure(parts)
        if dead is not None:
            return f"{dead} stopped; stopping everything (start `tollgate run` again)"
        return None

    def _wait_ready(self, supervisor: Supervisor, note_every_s: float = 15.0) -> bool:
        """Keep the children alive until all of them answer ready; False when the run must end."""
        next_note = time.monotonic() + note_every_s
        while not self.stopping:
            supervisor.step(stopping=lambda: self.stopping)
            trouble = self._trouble(supervisor)
            if trouble is not None:
                _say(trouble)
                return False
            supervisor.refresh_readiness()
            if supervisor.all_ready():
                return True
            if time.monotonic() >= next_note:
                _say(f"waiting for {', '.join(supervisor.waiting_for())} to be ready")
                next_note += note_every_s
            time.sleep(0.2)
        return False

    def _watch(self, supervisor: Supervisor) -> int:
        while not self.stopping:
            supervisor.step(stopping=lambda: self.stopping)
            trouble = self._trouble(supervisor)
            if trouble is not None:
                _say(trouble)
                return 1
            for child in supervisor.refresh_readiness():
                _say(f"{child.name} is ready again (restart {child.restarts})")
            time.sleep(0.2)
        return 0

    def _banner(
        self, env: dict[str, str], host: str, ports: dict[str, int], *, dev_tokens: bool
    ) -> None:
        lines = ["", "Tollgate is running:"]
        lines += [f"  {name:<10} http://{host}:{port}" for name, port in ports.items()]
        if "reports" in ports:
            lines.append(f"  {'console':<10} http://{host}:{ports['reports']}/console/")
        kafka = env["KAFKA_BOOTSTRAP_SERVERS"]
        look = " (look at the events: tollgate events tail)"
        lines.append(f"  {'kafka':<10} {kafka}{look}")
        lines.append(f"  {'database':<10} {_without_password(env['DATABASE_URL'])}")
        if "BILLING_URL" in env and self.with_billing_sink:
            rhythm = (
                f"first send after {env['PUBLISH_FIRST_DELAY'] or 'a random delay'}, "
                f"then every {env['PUBLISH_INTERVAL']}"
            )
            lines.append(f"  {'billing':<10} {env['BILLING_URL']} (local sink; {rhythm})")
        lines.append("  Each service describes its API at /openapi.json.")
        if dev_tokens:
            lines += [
                f"  emitter token: {DEV_EMITTER_TOKEN}",
                f"  admin token:   {DEV_ADMIN_TOKEN}",
                (
                    "  WARNING: these are development tokens; set TOLLGATE_EMITTER_TOKENS and "
                    "TOLLGATE_ADMIN_TOKENS anywhere else."
                ),
            ]
        lines.append("A service that stops is restarted. Ctrl-C stops everything.\n")
        print("\n".join(lines), file=sys.stderr, flush=True)

    def _shutdown(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop_all()
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()


def _say(message: str) -> None:
    print(f"tollgate: {message}", file=sys.stderr, flush=True)


def _stage(failure: str, step: Callable[[], T]) -> T:
    """Run one start-up step; its failure becomes one line saying which step failed and why."""
    try:
        return step()
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SetupError(f"{failure}: {reason}") from exc


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(args: argparse.Namespace) -> int:
    configure_logging(os.environ.get("TOLLGATE_LOG_LEVEL", "info"), "console")
    return Runner(
        state_dir=configured_state_dir().resolve(), with_billing_sink=args.with_billing_sink
    ).run()


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
    serve.add_argument("service", choices=[s.name for s in services()])
    serve.set_defaults(func=_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_migrate)
    sub.add_parser("create-topics", help="create the Kafka topics").set_defaults(
        func=_create_topics
    )
    for tool in tools():
        sub.add_parser(tool.name, help=f"{tool.summary} (see `tollgate {tool.name} --help`)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tollgate` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    spec = find_tool(argv[0]) if argv else None
    if spec is not None:
        # A tool's standard output is its result (an export, JSON lines): logs go to stderr.
        configure_logging(os.environ.get("TOLLGATE_LOG_LEVEL", "info"), "console")
        try:
            tool = spec.load()
        except ModuleNotFoundError as exc:
            if exc.name is None or not spec.module.startswith(exc.name):
                raise
            print(f"tollgate: {spec.name} is not available in this build", file=sys.stderr)
            return 2
        return tool(argv[1:])
    args = _parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
