"""The benchmark's CPU arrangement: one service alone on a CPU, then everything put back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bench.cpus import own_cpu, process_tree

# A child that starts a grandchild, then waits; it prints the grandchild's pid.
_PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def family() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A process with a child of its own: (the process, the child's pid)."""
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    try:
        yield parent, grandchild
    finally:
        os.kill(grandchild, 9)
        parent.kill()
        parent.wait()
        parent.stdout.close()


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.1)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_process_tree_holds_descendants_and_not_siblings(
    family: tuple[subprocess.Popen[str], int], bystander: subprocess.Popen[bytes]
) -> None:
    parent, grandchild = family
    tree = process_tree([parent.pid])
    assert tree == {parent.pid, grandchild}
    assert bystander.pid not in tree


def test_own_cpu_isolates_the_service_and_restores_every_affinity(
    family: tuple[subprocess.Popen[str], int], bystander: subprocess.Popen[bytes]
) -> None:
    service, service_child = family
    everything = os.sched_getaffinity(0)
    with own_cpu(service.pid, [bystander.pid]) as arranged:
        if len(everything) < 2:
            assert arranged is None
            return
        assert arranged is not None
        alone = {max(everything)}
        assert os.sched_getaffinity(service.pid) == alone
        assert os.sched_getaffinity(service_child) == alone
        # This process, its other children and the named others get the remaining CPUs.
        for pid in (0, bystander.pid):
            assert os.sched_getaffinity(pid) == everything - alone
        # A process started meanwhile inherits the arrangement.
        late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            assert os.sched_getaffinity(late.pid) == everything - alone
        finally:
            late.kill()
            late.wait()
    for pid in (0, bystander.pid, service.pid, service_child):
        assert os.sched_getaffinity(pid) == everything
