"""The deploy tools install from the project's own script, and a missing one fails loudly."""

from __future__ import annotations

import pytest

from tests.deploy.support import DEPLOY, REPO, ok, run, tool


def test_install_script_is_a_quiet_no_op_once_tools_are_present() -> None:
    """A second run of install-tools.sh succeeds without installing or printing anything."""
    script = DEPLOY / "install-tools.sh"
    ok(run(["bash", script], cwd=REPO))
    again = run(["bash", script], cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert again.stdout == again.stderr == ""


def test_a_missing_tool_fails_with_the_install_command() -> None:
    """Looking up a tool that is not installed fails the test (never skips) and says what to run."""
    with pytest.raises(pytest.fail.Exception, match=r"run `make deploy-tools`"):
        tool("tollgate-no-such-tool")


@pytest.mark.parametrize(
    ("name", "version_args", "expected"),
    [
        ("helm", ("version", "--short"), "v3.17."),
        ("promtool", ("--version",), "promtool, version 2."),
        ("kubernetes-validate", ("--version",), "1.37.0"),
        ("hadolint", ("--version",), "2.15.1"),
    ],
)
def test_pinned_tool_versions(name: str, version_args: tuple[str, ...], expected: str) -> None:
    """Each tool is the version install-tools.sh pins."""
    result = run([tool(name), *version_args])
    assert expected in result.stdout + result.stderr
