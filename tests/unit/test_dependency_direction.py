"""The import contracts `make lint` checks hold, and they fail on every kind of wrong import."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _config() -> str:
    """The project's own `[tool.importlinter]` table, as a pyproject.toml of its own."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = ["[tool.importlinter]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in table.items() if key != "contracts"]
    for contract in table["contracts"]:
        lines.append("\n[[tool.importlinter.contracts]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in contract.items()]
    return "\n".join(lines) + "\n"


def _tree(root: Path, modules: dict[str, str]) -> None:
    """Packages `libs`, `services` (two services) and `tools` with the given module bodies."""
    bodies = {
        "libs/__init__.py": "",
        "libs/shared.py": "",
        "services/__init__.py": "",
        "services/alpha/__init__.py": "",
        "services/alpha/app.py": "import libs.shared\n",
        "services/beta/__init__.py": "",
        "services/beta/app.py": "import libs.shared\n",
        "tools/__init__.py": "",
        "tools/sim.py": "import libs.shared\nimport services.alpha.app\n",
        **modules,
    }
    for path, body in bodies.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(body)
    (root / "pyproject.toml").write_text(_config())


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(autouse=True)
def _needs_import_linter() -> None:
    if not LINT_IMPORTS.exists():
        pytest.fail("import-linter is not installed: run `make venv`", pytrace=False)


def test_the_repository_keeps_every_contract() -> None:
    """libs imports no service or tool, services import no tool and no other service."""
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_tools_may_build_on_services_and_libs(tmp_path: Path) -> None:
    """The allowed direction (tools -> services -> libs) passes the contracts."""
    _tree(tmp_path, {})
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "body", "broken"),
    [
        ("libs/shared.py", "import services.alpha.app\n", "libs imports no service"),
        ("libs/shared.py", "import tools.sim\n", "libs imports no service and no development"),
        ("services/alpha/app.py", "import tools.sim\n", "services import no development tool"),
        ("services/beta/app.py", "import services.alpha.app\n", "a service imports no other"),
    ],
)
def test_an_import_against_the_direction_breaks_a_contract(
    tmp_path: Path, module: str, body: str, broken: str
) -> None:
    """Each wrong direction fails the check and names the contract it breaks."""
    _tree(tmp_path, {module: body})
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken in result.stdout
    assert "BROKEN" in result.stdout
