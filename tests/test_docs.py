"""The documentation: a short README, a site that builds strictly from docs/, and pages that say what the tree holds.
(The examples in them run in test_readme.py.)"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from doc_pages import DOCS, PYTHON, nav, pages

SRC = ROOT / "src" / "modelpack"


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 260, f"README.md has {lines} lines: move the detail to a page under docs/"


def test_every_page_is_in_the_nav_so_its_examples_run() -> None:
    listed = nav()
    assert sorted(listed) == sorted(DOCS.glob("*.md")), "mkdocs.yml's nav and docs/*.md differ"
    assert len(set(listed)) == len(listed)


def test_python_blocks_parse() -> None:
    """Every ```python block on every page is valid Python (those that run are run in test_readme.py)."""
    for page in pages():
        for block in PYTHON.findall(page.read_text()):
            try:
                ast.parse(block)
            except SyntaxError as exc:
                raise AssertionError(f"{page.relative_to(ROOT)}: {exc}\n{block}") from exc


def test_layout_map_names_what_the_tree_holds() -> None:
    """The development page's map of src/modelpack: every top-level module and package has a line, and every
    file it names exists (it once named pipeline/run.py long after that file was gone)."""
    text = (DOCS / "development.md").read_text()
    block = re.search(r"```text\nsrc/modelpack/\n(.*?)```", text, re.S)
    assert block, "docs/development.md has no ```text map of src/modelpack/"
    entries: set[str] = set()
    where = SRC
    for line in block.group(1).splitlines():
        head = re.match(r"  (\S.*?)(?:\s{2,}|$)", line)
        if head:  # a new entry: "  name/   what it holds" or "  a.py, b.py   what they hold"
            names = head.group(1).split(", ")
            entries |= set(names)
            where = SRC / names[0] if names[0].endswith("/") else SRC
            line = line[head.end():]
        for name in re.findall(r"\b([\w/]+\.py)\b", line):  # files named in a package's description
            # a module of that package, or a path from the repository root (tests/test_imports.py)
            assert (where / name).is_file() or (ROOT / name).is_file(), \
                f"the layout map names {where.relative_to(SRC.parent)}/{name}: no such file"
    tree = {p.name + ("/" if p.is_dir() else "") for p in SRC.iterdir()
            if p.name not in {"__pycache__", "__main__.py", "py.typed"}}
    assert tree - entries == set(), f"not in the layout map: {sorted(tree - entries)}"


def test_site_builds_strictly(tmp_path: Path) -> None:
    """`make docs`: mkdocs --strict fails on any warning (a broken link or anchor, a page left out of the nav, an
    API reference that does not resolve); the reference shows the API's signatures."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("modelpack.api.optimize", "modelpack.api.benchmark", "modelpack.api.open",
                 "modelpack.api.create_app", "modelpack.oci.artifact.push", "modelpack.stages.Stage"):
        assert f'id="{name}"' in api, name
    assert "eval_data" in api  # signatures, not only names
    site = "".join(p.read_text() for p in (tmp_path / "site").rglob("*.html"))
    assert "fonts.googleapis.com" not in site  # nothing fetched when a page is read offline
