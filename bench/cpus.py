"""A CPU of its own for one service, for the length of one measurement (Linux only).

Every process of a benchmark run shares one machine: the broker, PostgreSQL, each
service, the simulator and the load generator. A latency target for one service is a
promise about that service on CPU it does not share, as a Kubernetes pod with a whole
CPU under the static CPU manager has it; `own_cpu` arranges the same on this machine by
setting CPU affinities, which needs no privilege for one's own processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

__all__ = ["own_cpu", "process_tree"]

_PROC = Path("/proc")


def process_tree(roots: Iterable[int]) -> set[int]:
    """`roots` and every process descended from them, as `/proc` shows them now."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # The command name in parentheses may hold spaces; the parent pid is the 2nd field after.
        parent = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, ()))
    return seen


def _pin(pids: Iterable[int], cpus: set[int]) -> None:
    # Affinity belongs to threads: every thread of each process, and threads started later
    # inherit from the thread that starts them.
    for pid in pids:
        try:
            threads = [int(t.name) for t in (_PROC / str(pid) / "task").iterdir()]
        except OSError:
            continue
        for tid in threads:
            with suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, cpus)


@contextmanager
def own_cpu(service_pid: int, others: Iterable[int]) -> Iterator[str | None]:
    """Give `service_pid` the last CPU alone, and everything else of the run the others.

    "Everything else" is this process, `others` (the broker, PostgreSQL's postmaster) and
    every process descended from any of them, except the service's own tree; processes
    they start meanwhile (a load generator, a PostgreSQL backend) inherit the affinity.
    Yields what was arranged, or None where it cannot be done (fewer than two CPUs, not
    Linux); every affinity is put back on leaving.
    """
    if not hasattr(os, "sched_setaffinity") or not _PROC.is_dir():
        yield None
        return
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        yield None
        return
    alone = {max(cpus)}
    rest = cpus - alone
    service = process_tree([service_pid])
    roots = [os.getpid(), *others]
    _pin(process_tree(roots) - service, rest)
    _pin(service, alone)
    try:
        yield f"CPU {max(cpus)} to itself, everything else on {len(rest)} other CPU(s)"
    finally:
        _pin(process_tree(roots) | process_tree([service_pid]), cpus)
