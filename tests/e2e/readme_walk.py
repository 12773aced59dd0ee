"""Run the README's examples against a running system and compare each answer with what it shows.

Every fenced `sh`/`bash` block of the README that calls a service on its `make run` port
(8081-8084) is walked from top to bottom, as a reader would type it: variable assignments
(`NOW=$(date -u …)`), `curl` calls and `.venv/bin/tollgate` commands, each run by bash with
`curl` answered by `tests.e2e.curl_shim`. The `# …` lines under a command are what it shows:

- `# 409 {…}`, `# {…}`, `# 204: …`: a status (when given) and a JSON body (when given). In the
  body, `"…"` stands for any value and `"tgp_…"` for any string starting so; an object
  matches when every key shown matches (the README may leave keys out), a list when it has
  the same items in the same order. A call that shows nothing must answer 2xx.
- under a `tollgate` command: lines of its output, in order, compared with runs of spaces
  made one and `…` standing for anything.

Asynchronous effects (an event reaching reports) are polled for: a command whose answer does
not match yet is run again for a while, as a reader would.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ELLIPSIS: Final = "…"
_FENCE = re.compile(r"^```(\w*)\s*$")
_LOCAL = re.compile(r"\b(127\.0\.0\.1|localhost):(808[1-4])\b")
_HEREDOC = re.compile(r"<<-?\s*'?\"?(\w+)'?\"?")
_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S")
_STATUS = re.compile(r"^(\d{3})\b:?\s*(.*)$", re.DOTALL)
_TOLLGATE = ".venv/bin/tollgate"
# The README's default ports, by service.
PORTS: Final = {"8081": "ingest", "8082": "limits", "8083": "reports", "8084": "publisher"}


@dataclass
class Step:
    """One command of a README block and what the README shows it answering."""

    line: int
    text: str
    shown: list[str] = field(default_factory=list)

    @property
    def is_assignment(self) -> bool:
        return bool(_ASSIGNMENT.match(self.text))

    @property
    def program(self) -> str:
        return self.text.split(maxsplit=1)[0]


def blocks(readme: str) -> list[list[Step]]:
    """The README's walked blocks, each as its steps, in the order they appear."""
    walked: list[list[Step]] = []
    lines = readme.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence or fence.group(1) not in ("sh", "bash"):
            i += 1
            continue
        start = i + 1
        end = start
        while not lines[end].startswith("```"):
            end += 1
        steps = _steps(lines[start:end], first_line=start + 1)
        calls_a_service = any(s.program == "curl" and _LOCAL.search(s.text) for s in steps)
        if calls_a_service or any(s.shown for s in steps):
            walked.append(steps)
        i = end + 1
    return walked


def _steps(body: list[str], *, first_line: int) -> list[Step]:
    steps: list[Step] = []
    i = 0
    while i < len(body):
        line = body[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        number = first_line + i
        text = [line]
        while _continues("\n".join(text)) and i + 1 < len(body):
            i += 1
            text.append(body[i])
        heredoc = _HEREDOC.search("\n".join(text))
        if heredoc:
            while body[i].strip() != heredoc.group(1):
                i += 1
                text.append(body[i])
        i += 1
        shown: list[str] = []
        while i < len(body) and body[i].startswith("#"):
            shown.append(body[i][1:].removeprefix(" "))
            i += 1
        steps.append(Step(number, "\n".join(text), shown))
    return steps


def _continues(text: str) -> bool:
    """Whether a command goes on in the next line: a trailing backslash, or an open quote."""
    if text.rstrip().endswith("\\"):
        return True
    try:
        shlex.split(_HEREDOC.split(text, maxsplit=1)[0].replace("$(", "("))
    except ValueError:
        return True
    return False


def matches(shown: Any, actual: Any) -> bool:
    """Whether an answer is what the README shows, with its `…` wildcards."""
    if isinstance(shown, str) and shown.endswith(ELLIPSIS):
        prefix = shown[: -len(ELLIPSIS)]
        return not prefix or (isinstance(actual, str) and actual.startswith(prefix))
    if isinstance(shown, dict):
        return isinstance(actual, dict) and all(
            key in actual and matches(value, actual[key]) for key, value in shown.items()
        )
    if isinstance(shown, list):
        return (
            isinstance(actual, list)
            and len(shown) == len(actual)
            and all(matches(s, a) for s, a in zip(shown, actual, strict=True))
        )
    if isinstance(shown, bool) or isinstance(actual, bool):
        return shown is actual
    # Otherwise equal values match: JSON's 0 and 0.0 are one number.
    return bool(shown == actual)


def _text_matches(shown: list[str], output: str) -> bool:
    lines = [" ".join(line.split()) for line in output.splitlines()]
    at = 0
    for expected in shown:
        parts = [re.escape(p) for p in " ".join(expected.split()).split(ELLIPSIS)]
        pattern = re.compile(".*".join(parts))
        while at < len(lines) and not pattern.fullmatch(lines[at]):
            at += 1
        if at == len(lines):
            return False
        at += 1
    return True


@dataclass
class Walk:
    """Where the system runs and how the README's commands reach it."""

    ports: Mapping[str, int]
    env: Mapping[str, str]
    workdir: Path
    clock: int
    root: Path
    checked: list[Step] = field(default_factory=list)

    def localise(self, text: str) -> str:
        """The README's command with this system's ports and this interpreter's `tollgate`."""
        text = _LOCAL.sub(lambda m: f"{m.group(1)}:{self.ports[PORTS[m.group(2)]]}", text)
        return text.replace(_TOLLGATE, f'"{sys.executable}" -m libs.service.cli')

    def _prelude(self, assignments: list[str]) -> str:
        shim = f'"{sys.executable}" -m tests.e2e.curl_shim'
        return "\n".join(
            [
                "set -e",
                f'curl() {{ {shim} "$@"; }}',
                # Every `date` of the README tells the same, chosen time (see the test).
                'date() { command date -d "@$TOLLGATE_WALK_CLOCK" "$@"; }',
                *assignments,
            ]
        )

    def _environment(self) -> dict[str, str]:
        return {
            **self.env,
            "PYTHONPATH": str(self.root),
            "TOLLGATE_WALK_STATUS": str(self.workdir / "status"),
            "TOLLGATE_WALK_DIR": str(self.workdir),
            "TOLLGATE_WALK_CLOCK": str(self.clock),
        }

    def run(self, step: Step, assignments: list[str]) -> tuple[int, int | None, str]:
        """Run one step; its exit status, the HTTP status (for curl) and its output."""
        status_file = self.workdir / "status"
        status_file.unlink(missing_ok=True)
        script = f"{self._prelude(assignments)}\n{self.localise(step.text)}\n"
        done = subprocess.run(  # bash running the README's own example
            ["bash", "-c", script],
            env=self._environment(),
            cwd=self.root,
            capture_output=True,
            timeout=120,
            check=False,
        )
        status = int(status_file.read_text()) if status_file.exists() else None
        return done.returncode, status, (done.stdout + done.stderr).decode(errors="replace")

    def assign(self, step: Step, assignments: list[str]) -> str:
        """Evaluate a variable assignment once, as a reader's shell does, and return it as a
        plain assignment of its value for the commands that follow."""
        name = step.text.split("=", 1)[0]
        script = f'{self._prelude(assignments)}\n{self.localise(step.text)}\nprintf %s "${name}"\n'
        done = subprocess.run(  # bash running the README's own assignment
            ["bash", "-c", script],
            env=self._environment(),
            cwd=self.root,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0 or not done.stdout:
            raise AssertionError(
                f"README line {step.line}:\n{step.text}\nexit status {done.returncode}, value "
                f"{done.stdout!r}\n{done.stderr.decode(errors='replace')[-3000:]}"
            )
        return f"{name}={shlex.quote(done.stdout.decode())}"

    def check(self, step: Step, assignments: list[str], *, patience_s: float = 20.0) -> None:
        """Run a step until it answers what the README shows (or patience runs out)."""
        deadline = time.monotonic() + patience_s
        while True:
            code, status, output = self.run(step, assignments)
            problem = self._problem(step, code, status, output)
            if problem is None:
                self.checked.append(step)
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"README line {step.line}:\n{step.text}\n{problem}\noutput:\n{output[-3000:]}"
                )
            time.sleep(0.5)

    def _problem(self, step: Step, code: int, status: int | None, output: str) -> str | None:
        if code != 0:
            return f"exit status {code}"
        if step.program == "curl":
            return _http_problem(step, status, output)
        if step.shown and not _text_matches(step.shown, output):
            return "the output does not show these lines:\n" + "\n".join(step.shown)
        return None

    def walk(self, readme: str) -> list[Step]:
        """Every walked block's steps, in order; returns the commands checked."""
        assignments: list[str] = []
        for block in blocks(readme):
            for step in block:
                if step.is_assignment:
                    assignments.append(self.assign(step, assignments))
                elif step.program in ("curl", _TOLLGATE):
                    self.check(step, assignments)
                else:
                    raise AssertionError(
                        f"README line {step.line}: the walk runs curl and tollgate only, not "
                        f"{step.program!r}"
                    )
        return self.checked


def _http_problem(step: Step, status: int | None, output: str) -> str | None:
    if status is None:
        return "no HTTP answer"
    joined = " ".join(line.strip() for line in step.shown)
    want_status: int | None = None
    found = _STATUS.match(joined)
    if found:
        want_status, joined = int(found.group(1)), found.group(2)
    if want_status is not None and status != want_status:
        return f"status {status}, the README shows {want_status}"
    if want_status is None and not 200 <= status < 300:
        return f"status {status}, and the README shows no error"
    if not joined.startswith(("{", "[")):
        return None
    try:
        shown = json.loads(joined)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"README line {step.line}: what it shows is not JSON ({exc}): {joined}"
        ) from None
    try:
        actual = json.loads(output)
    except json.JSONDecodeError:
        return "the answer is not JSON"
    if not matches(shown, actual):
        return f"the answer differs from the README's:\n{json.dumps(shown, ensure_ascii=False)}"
    return None
