"""`tollgate run` (what `make run` calls): it starts everything, keeps it running, and stops it cleanly.

One run is shared by the tests of this module (starting the whole system is the expensive
part); the last test stops it and starts a second one on the same state.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.service.cli import available_services
from libs.service.embedded import free_port, port_open
from tests.e2e.readme_walk import Walk
from tests.support import ROOT

pytestmark = pytest.mark.e2e

BANNER = "Tollgate is running:"


@dataclass
class Run:
    """A `tollgate run` process, its ports and its combined output."""

    proc: subprocess.Popen[bytes]
    state: Path
    ports: dict[str, int]
    metrics_ports: dict[str, int]
    kafka_port: int
    log: Path
    sink_port: int | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def children(self) -> dict[str, int]:
        """The pid of each direct child, by the last words of its command line."""
        found = {}
        for proc_stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = proc_stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (proc_stat.parent / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                words = [w.decode() for w in cmdline if w]
                name = "tansu" if words[0].endswith("tansu") else " ".join(words[-2:])
                found[name] = int(proc_stat.parent.name)
        return found


def _free_ports() -> tuple[dict[str, int], dict[str, int]]:
    """An API port and a metrics port per service, all free right now and all different."""
    names = [s.name for s in available_services()]
    chosen: set[int] = set()
    while len(chosen) < 2 * len(names):
        chosen.add(free_port())
    ordered = sorted(chosen)
    return dict(zip(names, ordered[: len(names)], strict=True)), dict(
        zip(names, ordered[len(names) :], strict=True)
    )


def _env(
    state: Path, ports: dict[str, int], metrics_ports: dict[str, int], kafka_port: int
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOLLGATE_", "KAFKA_", "DATABASE_"))
    }
    env.update(
        TOLLGATE_STATE_DIR=str(state),
        TOLLGATE_EMBEDDED_KAFKA_PORT=str(kafka_port),
        **{f"TOLLGATE_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        **{
            f"TOLLGATE_{name.upper()}_METRICS_PORT": str(port)
            for name, port in metrics_ports.items()
        },
    )
    return env


def _start(
    state: Path,
    ports: dict[str, int],
    metrics_ports: dict[str, int],
    kafka_port: int,
    log: Path,
    *,
    sink_port: int | None = None,
) -> Run:
    env = _env(state, ports, metrics_ports, kafka_port)
    argv = [sys.executable, "-m", "libs.service.cli", "run"]
    if sink_port is not None:
        env["TOLLGATE_BILLING_SINK_PORT"] = str(sink_port)
        argv.append("--with-billing-sink")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    return Run(proc, state, ports, metrics_ports, kafka_port, log, sink_port)


def _status(url: str, token: str | None = None, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body)  # loopback URL built by the test
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _wait_for_banner(run: Run, timeout_s: float = 90) -> dict[str, int]:
    """Wait for the banner; return each service's /readyz status at the moment it is seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            raise AssertionError(f"run exited early:\n{run.output()[-4000:]}")
        if BANNER in run.output():
            return {name: _status(f"{run.url(name)}/readyz") for name in run.ports}
        time.sleep(0.05)
    raise AssertionError(f"no banner within {timeout_s}s:\n{run.output()[-4000:]}")


def _stop(run: Run) -> int:
    if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGTERM)
    try:
        return run.proc.wait(60)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        run.proc.wait(10)
        raise


@dataclass
class Started:
    """The shared run and what was seen when its banner appeared."""

    run: Run
    ready_at_banner: dict[str, int]


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """One `tollgate run` (with the local billing sink) for the module, up to its banner; stopped at the end if still running."""
    tmp = tmp_path_factory.mktemp("run")
    ports, metrics_ports = _free_ports()
    run = _start(
        tmp / "state", ports, metrics_ports, free_port(), tmp / "run-0.log", sink_port=free_port()
    )
    try:
        yield Started(run, _wait_for_banner(run))
    finally:
        _stop(run)


def test_the_banner_comes_once_every_service_is_ready_and_names_every_url(
    started: Started,
) -> None:
    """The banner appears only after each /readyz answers 200 (limits caught up) and lists every API, the console and the dev tokens."""
    run = started.run
    assert started.ready_at_banner == dict.fromkeys(run.ports, 200)
    output = run.output()
    banner_at = output.index(BANNER)
    caught_up = [
        line
        for line in output[:banner_at].splitlines()
        if '"consumer_caught_up"' in line and '"service":"limits"' in line
    ]
    assert caught_up, output[:banner_at][-4000:]
    banner = output[banner_at:].split("Ctrl-C stops everything.")[0]
    for name, port in run.ports.items():
        assert f"{name:<10} http://127.0.0.1:{port}\n" in banner
    assert f"console    http://127.0.0.1:{run.ports['reports']}/console/" in banner
    assert f"kafka      127.0.0.1:{run.kafka_port}" in banner
    assert "dev-emitter-token" in banner
    assert "WARNING" in banner
    for name, port in run.metrics_ports.items():
        assert _status(f"http://127.0.0.1:{port}/metrics") == 200, name
        assert _status(f"{run.url(name)}/metrics", "dev-admin-token") == 404, name


def test_a_killed_service_comes_back_while_the_others_keep_serving(started: Started) -> None:
    """SIGKILL of limits: it restarts by itself and answers checks again; ingest, reports, publisher and the broker never stop."""
    run = started.run
    before = run.children()
    others = [name for name in run.ports if name != "limits"]

    os.kill(before["serve limits"], signal.SIGKILL)
    answers: dict[str, list[int]] = {name: [] for name in others}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for name in others:
            answers[name].append(_status(f"{run.url(name)}/readyz"))
        if "limits is ready again" in run.output():
            break
        time.sleep(0.1)

    output = run.output()
    assert "limits exited (signal SIGKILL)" in output, output[-4000:]
    assert "limits is ready again" in output, output[-4000:]
    assert all(len(seen) > 3 and set(seen) == {200} for seen in answers.values()), answers
    check = _status(
        f"{run.url('limits')}/api/v1/limits/check", "dev-emitter-token", b'{"user_id": "u-1"}'
    )
    assert check == 200
    after = run.children()
    assert after["serve limits"] != before["serve limits"]
    assert {k: v for k, v in after.items() if k != "serve limits"} == {
        k: v for k, v in before.items() if k != "serve limits"
    }
    assert run.proc.poll() is None


def test_the_reports_port_serves_the_console_and_every_public_api(started: Started) -> None:
    """The reports port answers the sign-in page and each other service's API (with the caller's token), and the generated portal secret is kept private in the state directory and out of the log."""
    run = started.run
    origin = run.url("reports")
    with urllib.request.urlopen(f"{origin}/console/login", timeout=5) as resp:
        page = resp.read().decode()
        assert resp.status == 200
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert 'name="token"' in page
    assert _status(f"{origin}/api/v1/pricing/models", "dev-admin-token") == 200
    assert _status(f"{origin}/api/v1/limits/config", "dev-admin-token") == 200
    assert _status(f"{origin}/api/v1/limits/config", "dev-emitter-token") == 403
    assert _status(f"{origin}/api/v1/publisher/status", "dev-admin-token") == 200
    assert _status(f"{origin}/api/v1/costs/users", "dev-emitter-token") == 200
    assert _status(f"{origin}/api/v1/limits/config") == 401
    secret = run.state / "portal-secret"
    assert len(secret.read_text().strip()) >= 32
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.read_text().strip() not in run.output()


def test_the_readme_examples_return_what_they_show(started: Started, tmp_path: Path) -> None:
    """Every example of the README that calls a service, from "Try it" on, run as written (bash, the README's dates) against `tollgate run`, answers what the README shows."""
    run = started.run
    walk = Walk(
        ports=run.ports,
        env=_env(run.state, run.ports, run.metrics_ports, run.kafka_port),
        workdir=tmp_path,
        clock=_walk_clock(),
        root=ROOT,
    )
    checked = walk.walk((ROOT / "README.md").read_text())
    assert len(checked) >= 14, [step.line for step in checked]
    shown = [(step.text.split("\n")[0], step.shown[0] if step.shown else "") for step in checked]
    assert any("8081/api/v1/events" in cmd and "accepted" in out for cmd, out in shown)
    assert any("limits/check" in cmd and out.startswith("409") for cmd, out in shown)
    assert any(cmd.startswith(".venv/bin/tollgate events tail") for cmd, _ in shown)
    assert "report_month,workspace_id" in (tmp_path / "members.csv").read_text()


def test_simulate_and_verify_find_the_run_by_its_variables(started: Started) -> None:
    """`tollgate simulate` (through ingest and `--direct`) and `simulate verify`, given only make run's port and state variables, reach this run: the figures match, and a doctored expected file is a table of differences with exit status 1."""
    # After the README walk: simulated users must not show up in its examples.
    run = started.run
    env = _env(run.state, run.ports, run.metrics_ports, run.kafka_port)

    def tollgate(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "libs.service.cli", *argv],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    small = ("--users", "3", "--days", "2", "--no-progress")
    for argv in (("--seed", "31"), ("--seed", "32", "--direct")):
        sent = tollgate("simulate", *argv, *small)
        assert sent.returncode == 0, sent.stderr
        assert "0 rejected" in sent.stderr
    assert "Kafka 127.0.0.1:" + str(run.kafka_port) in sent.stderr
    for seed in ("31", "32"):
        assert (run.state / "simulations" / f"sim-{seed}.json").exists()
        verified = tollgate("simulate", "verify", "--seed", seed)
        assert verified.returncode == 0, verified.stderr
        assert "simulation verified" in verified.stderr
    doctored = json.loads((run.state / "simulations" / "sim-31.json").read_text())
    user = next(iter(doctored["costs"]["users"]))
    doctored["costs"]["users"][user]["total_cost_micros"] += 1
    path = run.state / "simulations" / "doctored.json"
    path.write_text(json.dumps(doctored))
    differs = tollgate("simulate", "verify", "--expected", str(path), "--wait", "0")
    assert differs.returncode == 1, differs.stderr
    assert f"{user} total_cost_micros" in differs.stderr
    assert "simulation differs" in differs.stderr


def _walk_clock() -> int:
    """The time the README's `date` tells: now, or early enough that alice's 45-minute session
    ends before midnight UTC (the activity example reads today's bucket).

    Close to midnight the walk waits for the new day, so that the limits service (which reads
    the real clock) and the examples agree on the day and the month.
    """
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    if midnight - now < timedelta(minutes=2):
        time.sleep((midnight - now).total_seconds() + 1)
        now = datetime.now(UTC)
        midnight += timedelta(days=1)
    return int(min(now, midnight - timedelta(minutes=50)).timestamp())


def test_with_the_local_sink_the_publisher_sends_within_seconds(started: Started) -> None:
    """`--with-billing-sink` makes the publisher's first send cycle run seconds after start, and the banner says so."""
    run = started.run
    assert run.sink_port is not None
    assert "(local sink; first send after 2s, then every 30s)" in run.output()
    sink = f"http://127.0.0.1:{run.sink_port}/_sink/stats"
    deadline = time.monotonic() + 30
    requests = 0
    while time.monotonic() < deadline and not requests:
        with urllib.request.urlopen(sink, timeout=5) as resp:
            requests = json.loads(resp.read())["requests"]
        time.sleep(0.5)
    assert requests > 0, "the publisher sent nothing to the sink within 30 s of the banner"


def test_sigterm_stops_everything_and_a_second_run_starts_on_the_same_state(
    started: Started, tmp_path: Path
) -> None:
    """SIGTERM stops every child, the broker and PostgreSQL with exit 0; a second run reuses the data under a new epoch, and ends (exit 1, one line) when its broker dies."""
    first = started.run
    epochs = [(first.state / "broker-epoch").read_text().strip()]
    assert _stop(first) == 0, first.output()[-4000:]
    assert "stopping: the services first" in first.output()
    assert not port_open("127.0.0.1", first.kafka_port)
    assert not any(
        port_open("127.0.0.1", p) for p in [*first.ports.values(), *first.metrics_ports.values()]
    )

    second = _start(
        first.state, first.ports, first.metrics_ports, first.kafka_port, tmp_path / "run-1.log"
    )
    try:
        _wait_for_banner(second)
        ingest = second.url("ingest")
        assert _status(f"{ingest}/api/v1/pricing/models", "dev-admin-token") == 200
        epochs.append((first.state / "broker-epoch").read_text().strip())
        os.kill(second.children()["tansu"], signal.SIGKILL)
        code = second.proc.wait(60)
    finally:
        _stop(second)
    output = second.output()
    assert code == 1, output[-4000:]
    assert "tollgate: the embedded broker stopped; stopping everything" in output
    assert not any(port_open("127.0.0.1", p) for p in second.ports.values())
    assert (first.state / "pgdata" / "PG_VERSION").exists()
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize(
    ("taken", "what", "variable"),
    [
        ("kafka", "the embedded broker", "TOLLGATE_EMBEDDED_KAFKA_PORT"),
        ("limits", "limits", "TOLLGATE_LIMITS_PORT"),
        ("limits metrics", "limits metrics", "TOLLGATE_LIMITS_METRICS_PORT"),
        ("billing-sink", "the billing sink", "TOLLGATE_BILLING_SINK_PORT"),
    ],
)
def test_a_port_in_use_is_one_clear_line_and_a_non_zero_exit(
    tmp_path: Path, taken: str, what: str, variable: str
) -> None:
    """A taken port (broker, a service, the billing sink) ends the run before anything starts, with one line naming the port and its variable."""
    ports, metrics_ports = _free_ports()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        kafka_port = port if taken == "kafka" else free_port()
        if taken in ports:
            ports[taken] = port
        if taken == "limits metrics":
            metrics_ports["limits"] = port
        env = _env(tmp_path / "state", ports, metrics_ports, kafka_port)
        env["TOLLGATE_BILLING_SINK_PORT"] = str(port if taken == "billing-sink" else free_port())
        done = subprocess.run(
            [sys.executable, "-m", "libs.service.cli", "run", "--with-billing-sink"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=False,
        )

    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 2, output
    assert output.splitlines() == [
        (
            f"tollgate: port {port} ({what}) is already in use; set {variable} to a free port, "
            "or stop what is listening there"
        )
    ]
    assert not (tmp_path / "state").exists()
