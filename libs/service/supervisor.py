"""Keeping the processes of `tollgate run` alive: ports checked up front, readiness, restarts.

A child that dies is started again after a pause that doubles with each failure in a row (up
to a cap), while the others keep running; a child that stayed up for a while starts its count
afresh. Only a child that keeps failing soon after each start is given up on, and that stops
the whole run with a message that says so.
"""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from libs.service.embedded import port_open


class SetupError(Exception):
    """A problem found before anything started, said in one line."""


# -- ports -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortClaim:
    """A port `tollgate run` is about to listen on, and the variable that chooses it."""

    what: str
    variable: str
    port: int
    host: str = "127.0.0.1"


def port_from_env(env: dict[str, str], variable: str, default: int) -> int:
    """The port `variable` asks for, or `default`; anything but 1-65535 is a `SetupError`."""
    raw = env.get(variable, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise SetupError(f"{variable} must be a port number from 1 to 65535, got {raw!r}")
    return port


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (as aiohttp does, with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in {errno.EADDRINUSE, errno.EACCES}:
                return False
            raise SetupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    # Something listening on another address of this machine still answers on loopback.
    return not port_open("127.0.0.1", port)


def check_ports(
    claims: Sequence[PortClaim], *, is_free: Callable[[str, int], bool] = port_free
) -> None:
    """Raise a `SetupError` naming the port and its variable when any port cannot be used."""
    seen: dict[int, PortClaim] = {}
    for claim in claims:
        other = seen.get(claim.port)
        if other is not None:
            raise SetupError(
                f"{other.variable} and {claim.variable} both ask for port {claim.port}; "
                "give each its own port"
            )
        seen[claim.port] = claim
    for claim in claims:
        if not is_free(claim.host, claim.port):
            raise SetupError(
                f"port {claim.port} ({claim.what}) is already in use; set {claim.variable} "
                "to a free port, or stop what is listening there"
            )


# -- readiness -------------------------------------------------------------------------------


def probe_ready(url: str, timeout_s: float = 1.0) -> tuple[bool, str]:
    """GET a readiness URL: (ready, what is not ready yet) from the status and `checks`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310  # http URL we built
            return response.status == 200, ""
    except urllib.error.HTTPError as exc:
        try:
            checks = orjson.loads(exc.read()).get("checks", {})
            failing = [name for name, state in checks.items() if state != "ok"]
        except (orjson.JSONDecodeError, AttributeError):
            failing = []
        return False, ", ".join(failing) or f"answers {exc.code}"
    except (OSError, ValueError):
        return False, "not listening yet"


# -- restarts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestartPolicy:
    """How soon a dead child is started again, and when to stop trying."""

    #: Pause before the first restart; it doubles with every further failure in a row.
    base_delay_s: float = 0.5
    #: The longest pause between two starts.
    max_delay_s: float = 30.0
    #: A child that ran at least this long before it died starts its failure count afresh.
    stable_after_s: float = 60.0
    #: Failures in a row, each within `stable_after_s` of its start, before giving up.
    max_failures: int = 10

    def delay(self, failures: int) -> float:
        """The pause before restarting after the `failures`-th failure in a row."""
        return min(self.max_delay_s, self.base_delay_s * 2.0 ** max(0, failures - 1))


class Process(Protocol):
    """What the supervisor needs of a child process (`subprocess.Popen` has it)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@dataclass
class Child:
    """One supervised process: how to start it, where it says it is ready, and its history."""

    name: str
    argv: Sequence[str]
    ready_url: str | None = None
    port: PortClaim | None = None
    process: Process | None = None
    started_at: float = 0.0
    ready: bool = False
    not_ready: str = "starting"
    failures: int = 0
    restarts: int = 0
    restart_at: float | None = None
    last_exit: str = ""


def describe_exit(code: int) -> str:
    """`exit code 3` or `signal SIGKILL`, from a returncode."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class Supervisor:
    """Starts children, restarts the ones that die, and stops them all, children first."""

    spawn: Callable[[Child], Process]
    say: Callable[[str], None]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    probe: Callable[[str], tuple[bool, str]] = probe_ready
    clock: Callable[[], float] = time.monotonic
    children: dict[str, Child] = field(default_factory=dict)
    gave_up: str | None = None

    def add(self, child: Child) -> None:
        """Take a child under supervision (started by `start_all`)."""
        self.children[child.name] = child

    def start_all(self) -> None:
        """Start every child."""
        for child in self.children.values():
            self._start(child)

    def _start(self, child: Child) -> None:
        child.process = self.spawn(child)
        child.started_at = self.clock()
        child.ready = child.ready_url is None
        child.not_ready = "starting"
        child.restart_at = None

    def step(self, *, stopping: Callable[[], bool] = lambda: False) -> None:
        """Notice dead children and schedule their restart; start those whose pause is over.

        Sets `gave_up` (and stops restarting) when a child failed too often in a row.
        """
        now = self.clock()
        for child in self.children.values():
            if stopping() or self.gave_up is not None:
                return
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self.say(f"restarting {child.name} (restart {child.restarts})")
                    self._start(child)
                continue
            code = None if child.process is None else child.process.poll()
            if code is None:
                continue
            self._died(child, code, now)

    def _died(self, child: Child, code: int, now: float) -> None:
        ran = now - child.started_at
        child.failures = 1 if ran >= self.policy.stable_after_s else child.failures + 1
        child.ready = False
        child.last_exit = describe_exit(code)
        if child.failures >= self.policy.max_failures:
            port_hint = ""
            if child.port is not None and not port_free(child.port.host, child.port.port):
                port_hint = (
                    f" Port {child.port.port} is in use by another process: set "
                    f"{child.port.variable} to a free port."
                )
            self.gave_up = (
                f"{child.name} failed {child.failures} times in a row, each time within "
                f"{_duration(self.policy.stable_after_s)} of starting (last: {child.last_exit}); "
                f"giving up and stopping everything. Its log above says why.{port_hint}"
            )
            return
        delay = self.policy.delay(child.failures)
        child.restart_at = now + delay
        self.say(
            f"{child.name} exited ({child.last_exit}) after {_duration(ran)}; "
            f"restarting in {_duration(delay)} while the others keep running"
        )

    def refresh_readiness(self) -> list[Child]:
        """Ask each running child that is not ready yet; return the ones that just became ready."""
        became: list[Child] = []
        for child in self.children.values():
            if child.ready or child.ready_url is None or child.restart_at is not None:
                continue
            if child.process is None or child.process.poll() is not None:
                continue
            child.ready, child.not_ready = self.probe(child.ready_url)
            if child.ready:
                became.append(child)
        return became

    def all_ready(self) -> bool:
        """Whether every child answers ready."""
        return all(child.ready for child in self.children.values())

    def waiting_for(self) -> list[str]:
        """`name (what is not ready)` for every child not ready yet."""
        return [f"{c.name} ({c.not_ready})" for c in self.children.values() if not c.ready]

    def stop_all(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every running child, wait for them, and SIGKILL what is left at the deadline."""
        running = [c.process for c in self.children.values() if c.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = self.clock() + timeout_s
        for process in running:
            try:
                process.wait(max(0.1, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def dead_infrastructure(parts: Iterable[tuple[str, Callable[[], bool]]]) -> str | None:
    """The name of the first part whose liveness check fails, if any."""
    for name, alive in parts:
        if not alive():
            return name
    return None
