"""The documents link to files and headings that exist, and CONTRIBUTING.md never leaves the repository."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").rglob("*.md")],
)
_FENCED = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where nothing is a link."""
    return _CODE_SPAN.sub("", _FENCED.sub("", text))


def links(text: str) -> list[str]:
    """Every link target of a Markdown text (inline links and images), in order."""
    return [match.group(1) for match in _LINK.finditer(_prose(text))]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings, numbered as GitHub numbers repeats."""
    seen: Counter[str] = Counter()
    found = set()
    for match in _HEADING.finditer(_FENCED.sub("", text)):
        base = slug(match.group(1))
        found.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def broken_links(document: Path, root: Path) -> list[str]:
    """The links of `document` that lead nowhere: a missing file, a missing heading, or outside `root`."""
    problems = []
    for target in links(document.read_text(encoding="utf-8")):
        if _EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        path = (document.parent / unquote(path_part)).resolve() if path_part else document
        if not path.is_relative_to(root):
            problems.append(f"{target}: outside the repository")
        elif not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text("utf-8")):
            problems.append(f"{target}: no heading #{anchor} in {path.relative_to(root)}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(document: Path) -> None:
    """Each relative link of README.md, CONTRIBUTING.md and docs/ names an existing file, and an existing heading where it names one."""
    assert links(document.read_text(encoding="utf-8")), f"{document.name} links nowhere"
    assert broken_links(document, ROOT) == []


def test_contributing_links_only_inside_the_repository() -> None:
    """CONTRIBUTING.md sends a contributor to the repository's own files, never beside or outside it."""
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    outside = [t for t in links(text) if _EXTERNAL.match(t)]
    assert outside == []
    assert "../" not in text
    assert {"docs/architecture.md", "docs/events.md", "docs/style.md"} <= {
        t.partition("#")[0] for t in links(text)
    }


def test_the_checker_finds_missing_files_headings_and_ways_out(tmp_path: Path) -> None:
    """A link to a missing file, a missing heading or a file outside the root is reported; links in code are not links."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# Title\n\n## Step 2: the `run` (:8081)\n## Again\n## Again\n"
    )
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#step-2-the-run-8081) [ok](docs/a.md#again-1) [ok](#top) "
        "[web](https://example.com/x) ![img](docs/a.md)\n"
        "[gone](docs/b.md) [no heading](docs/a.md#nope) [out](../elsewhere.md)\n"
        "`[code](docs/c.md)`\n```\n[fenced](docs/d.md)\n```\n# Top\n"
    )
    assert broken_links(page, tmp_path) == [
        "docs/b.md: no such file",
        "docs/a.md#nope: no heading #nope in docs/a.md",
        "../elsewhere.md: outside the repository",
    ]
