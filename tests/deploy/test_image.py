"""The container image: its Dockerfile lints clean and its build context holds what it copies."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.deploy.support import DOCKERFILE, DOCKERIGNORE, REPO, run, tool


def _hadolint(path: Path) -> tuple[int, str]:
    result = run([tool("hadolint"), "--no-color", "--failure-threshold", "style", path])
    return result.returncode, result.stdout + result.stderr


def _instructions(name: str) -> list[str]:
    return [
        line.split(None, 1)[1]
        for line in DOCKERFILE.read_text().splitlines()
        if line.split(None, 1)[:1] == [name]
    ]


def test_dockerfile_passes_hadolint() -> None:
    """The Dockerfile has no hadolint finding at any severity, style included."""
    code, output = _hadolint(DOCKERFILE)
    assert code == 0, output


def test_hadolint_catches_a_careless_dockerfile(tmp_path: Path) -> None:
    """Hadolint fails a Dockerfile with an unpinned base image and an unpinned apt install."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python app.py\n"
    )
    code, output = _hadolint(broken)
    assert code != 0
    assert "DL3007" in output, output


def test_image_runs_tollgate_as_a_non_root_user() -> None:
    """The runtime stage runs `tollgate serve ingest` by default, as a numeric non-root user."""
    assert _instructions("ENTRYPOINT") == ['["tollgate"]']
    assert json.loads(_instructions("CMD")[-1]) == ["serve", "ingest"]
    user = _instructions("USER")[-1]
    uid = user.split(":", 1)[0]
    assert uid.isdigit(), f"USER {user} must be numeric so runAsNonRoot can verify it"
    assert int(uid) != 0


def test_every_stage_builds_from_the_slim_python_311_image() -> None:
    """Both stages start from the python:3.11 slim image named once in an ARG."""
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert base is not None
    assert base.group(1).startswith("python:3.11-slim")
    assert [f.split()[0] for f in _instructions("FROM")] == ["${PYTHON_IMAGE}"] * 2


def test_build_context_keeps_every_copied_path() -> None:
    """Every path the Dockerfile copies from the context is allowed back in by .dockerignore."""
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    assert "*" in ignore, ".dockerignore is an allowlist: it starts by excluding everything"
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for copy in _instructions("COPY"):
        parts = copy.split()
        if any(p.startswith("--from=") for p in parts):
            continue
        for source in parts[:-1]:
            source_path = source.rstrip("/")
            assert (REPO / source_path).exists(), f"COPY {source}: no such path"
            assert any(source_path == a or source_path.startswith(a + "/") for a in allowed), (
                f"COPY {source}: excluded by .dockerignore"
            )


def test_image_leaves_the_development_tools_out() -> None:
    """The production image copies no development tool: `tools/` is neither copied nor let in."""
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    assert not [line for line in ignore if line.startswith("!tools")], ignore
    sources = [
        source.rstrip("/")
        for copy in _instructions("COPY")
        if not any(p.startswith("--from=") for p in copy.split())
        for source in copy.split()[:-1]
    ]
    assert sources, "the Dockerfile copies nothing from the context"
    assert not [s for s in sources if s == "tools" or s.startswith("tools/")], sources


def test_image_points_migrations_at_the_copied_directory() -> None:
    """TOLLGATE_MIGRATIONS_DIR names the folder the migrations are copied to."""
    text = DOCKERFILE.read_text()
    workdir = _instructions("WORKDIR")[-1]
    assert "COPY deploy/migrations/ deploy/migrations/" in text
    assert f"TOLLGATE_MIGRATIONS_DIR={workdir}/deploy/migrations" in text
    assert (REPO / "deploy" / "migrations").is_dir()
