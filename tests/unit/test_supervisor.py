"""The supervisor of `tollgate run` with fake processes and a fake clock: backoff, giving up, ports."""

from __future__ import annotations

import signal
import socket
import subprocess
from dataclasses import dataclass, field

import pytest

from libs.service.supervisor import (
    Child,
    PortClaim,
    RestartPolicy,
    SetupError,
    Supervisor,
    check_ports,
    describe_exit,
    port_free,
    port_from_env,
)


@dataclass
class FakeProcess:
    """A child process whose end the test decides."""

    pid: int
    returncode: int | None = None
    ignores_sigterm: bool = False
    signals: list[int] = field(default_factory=list)

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if not self.ignores_sigterm:
            self.returncode = -sig

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)
        self.returncode = -signal.SIGKILL

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            raise subprocess.TimeoutExpired("child", timeout or 0)
        return self.returncode


@dataclass
class Clock:
    """Time that moves only when the test says so."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """A supervisor over fake processes, with what it started and said."""

    clock: Clock = field(default_factory=Clock)
    started: list[tuple[str, FakeProcess]] = field(default_factory=list)
    said: list[str] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(
            spawn=self.spawn,
            say=self.said.append,
            policy=self.policy,
            probe=lambda url: (url in self.ready, "log: failing"),
            clock=self.clock,
        )

    def spawn(self, child: Child) -> FakeProcess:
        process = FakeProcess(pid=len(self.started) + 1)
        self.started.append((child.name, process))
        return process

    def process(self, name: str) -> FakeProcess:
        return [p for n, p in self.started if n == name][-1]

    def starts(self, name: str) -> int:
        return sum(1 for n, _ in self.started if n == name)


@pytest.fixture
def harness() -> Harness:
    h = Harness()
    for name in ("ingest", "limits", "reports"):
        h.supervisor.add(Child(name, ["serve", name], ready_url=f"http://x/{name}/readyz"))
    h.supervisor.start_all()
    return h


def test_the_pause_doubles_up_to_a_cap() -> None:
    """Restart pauses double from half a second and stop growing at thirty seconds."""
    policy = RestartPolicy()
    assert [policy.delay(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_a_dead_child_is_restarted_after_the_pause_and_the_others_are_left_alone(
    harness: Harness,
) -> None:
    """A SIGKILLed child comes back after the first pause; its siblings are never touched."""
    harness.clock.now += 120
    harness.process("limits").returncode = -signal.SIGKILL

    harness.supervisor.step()
    assert harness.starts("limits") == 1
    assert harness.said == [
        (
            "limits exited (signal SIGKILL) after 2m00s; restarting in 0.5s while the others keep "
            "running"
        )
    ]
    harness.clock.now += 0.4
    harness.supervisor.step()
    assert harness.starts("limits") == 1
    harness.clock.now += 0.1
    harness.supervisor.step()

    assert harness.starts("limits") == 2
    assert harness.process("limits").returncode is None
    assert harness.starts("ingest") == harness.starts("reports") == 1
    assert harness.process("ingest").signals == harness.process("reports").signals == []
    assert harness.supervisor.gave_up is None


def test_a_restarted_child_is_ready_again_only_when_it_says_so(harness: Harness) -> None:
    """After a restart the child counts as not ready until its /readyz answers 200."""
    harness.ready = {f"http://x/{n}/readyz" for n in ("ingest", "limits", "reports")}
    assert {c.name for c in harness.supervisor.refresh_readiness()} == {
        "ingest",
        "limits",
        "reports",
    }
    harness.process("limits").returncode = 1
    harness.ready.discard("http://x/limits/readyz")
    harness.supervisor.step()
    harness.clock.now += 1
    harness.supervisor.step()

    assert harness.supervisor.refresh_readiness() == []
    assert not harness.supervisor.all_ready()
    assert harness.supervisor.waiting_for() == ["limits (log: failing)"]
    harness.ready.add("http://x/limits/readyz")
    assert [c.name for c in harness.supervisor.refresh_readiness()] == ["limits"]
    assert harness.supervisor.all_ready()


def test_rapid_failures_back_off_and_end_in_giving_up(harness: Harness) -> None:
    """A child that dies soon after every start is retried with growing pauses, then given up on."""
    pauses = []
    for _ in range(RestartPolicy().max_failures):
        harness.clock.now += 2
        harness.process("reports").returncode = 3
        harness.supervisor.step()
        child = harness.supervisor.children["reports"]
        if harness.supervisor.gave_up is not None:
            break
        assert child.restart_at is not None
        pauses.append(child.restart_at - harness.clock.now)
        harness.clock.now = child.restart_at
        harness.supervisor.step()

    assert pauses == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert harness.starts("reports") == 10
    assert harness.supervisor.gave_up == (
        "reports failed 10 times in a row, each time within 1m00s of starting (last: exit "
        "code 3); giving up and stopping everything. Its log above says why."
    )
    harness.clock.now += 60
    harness.supervisor.step()
    assert harness.starts("reports") == 10


def test_a_child_that_stayed_up_starts_its_count_afresh(harness: Harness) -> None:
    """A failure after a long stable run gets the shortest pause again."""
    for _ in range(4):
        harness.clock.now += 1
        harness.process("ingest").returncode = 1
        harness.supervisor.step()
        harness.clock.now += 60
        harness.supervisor.step()
    assert harness.supervisor.children["ingest"].failures == 4

    harness.clock.now += RestartPolicy().stable_after_s
    harness.process("ingest").returncode = -signal.SIGKILL
    harness.supervisor.step()

    child = harness.supervisor.children["ingest"]
    assert child.failures == 1
    assert child.restart_at == harness.clock.now + 0.5


def test_nothing_is_restarted_while_stopping(harness: Harness) -> None:
    """Children that end because everything is stopping stay down."""
    harness.process("limits").returncode = 0
    harness.supervisor.step(stopping=lambda: True)
    harness.clock.now += 10
    harness.supervisor.step(stopping=lambda: True)
    assert harness.starts("limits") == 1
    assert harness.said == []


def test_stop_all_terminates_and_kills_what_will_not_stop(harness: Harness) -> None:
    """Every child gets SIGTERM; one that ignores it gets SIGKILL at the deadline."""
    harness.process("reports").ignores_sigterm = True
    harness.supervisor.stop_all(timeout_s=0)
    assert harness.process("ingest").signals == [signal.SIGTERM]
    assert harness.process("reports").signals == [signal.SIGTERM, signal.SIGKILL]


@pytest.mark.parametrize(
    ("code", "text"),
    [(0, "exit code 0"), (3, "exit code 3"), (-9, "signal SIGKILL"), (-15, "signal SIGTERM")],
)
def test_exits_are_described(code: int, text: str) -> None:
    """Return codes read as an exit code or the signal's name."""
    assert describe_exit(code) == text


def test_a_port_in_use_is_named_with_its_variable() -> None:
    """A port something listens on is refused with the port, what wanted it and the variable."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_free("127.0.0.1", port)
        claims = [PortClaim("limits", "TOLLGATE_LIMITS_PORT", port)]
        with pytest.raises(SetupError) as refused:
            check_ports(claims)
    assert str(refused.value) == (
        f"port {port} (limits) is already in use; set TOLLGATE_LIMITS_PORT to a free port, or "
        "stop what is listening there"
    )
    assert port_free("127.0.0.1", port)


def test_two_claims_on_one_port_are_refused_before_any_is_tried() -> None:
    """Two variables asking for the same port are named together."""
    claims = [
        PortClaim("ingest", "TOLLGATE_INGEST_PORT", 8081),
        PortClaim("limits", "TOLLGATE_LIMITS_PORT", 8081),
    ]
    with pytest.raises(SetupError, match="TOLLGATE_INGEST_PORT and TOLLGATE_LIMITS_PORT both"):
        check_ports(claims, is_free=lambda host, port: True)


@pytest.mark.parametrize("raw", ["abc", "0", "65536", "-1", "80.5"])
def test_a_port_variable_must_hold_a_port(raw: str) -> None:
    """A port variable that is not 1 to 65535 is named with its value."""
    with pytest.raises(SetupError, match=f"TOLLGATE_INGEST_PORT must be a port number.*{raw}"):
        port_from_env({"TOLLGATE_INGEST_PORT": raw}, "TOLLGATE_INGEST_PORT", 8081)
    assert port_from_env({}, "TOLLGATE_INGEST_PORT", 8081) == 8081
    assert port_from_env({"TOLLGATE_INGEST_PORT": " 9000 "}, "TOLLGATE_INGEST_PORT", 8081) == 9000
