"""Starting a process waits for its own listener, not for whoever holds the port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from libs.service.embedded import listens

LISTEN_AND_WAIT = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


def test_a_listener_is_found_in_the_process_that_holds_it_only() -> None:
    """Another process's listener on a port is not this process's, and the reverse."""
    with subprocess.Popen(  # this interpreter, a fixed script
        [sys.executable, "-c", LISTEN_AND_WAIT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        theirs = int(child.stdout.readline())
        with socket.socket() as mine:
            mine.bind(("127.0.0.1", 0))
            mine.listen()
            port = mine.getsockname()[1]
            assert listens(os.getpid(), port) is True
            assert listens(child.pid, port) is False
            assert listens(child.pid, theirs) is True
            assert listens(os.getpid(), theirs) is False
        child.kill()
