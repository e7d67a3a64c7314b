"""The documentation's Markdown files and their fenced blocks, for the tests that run them.

The README comes first, then `docs/` in the order of mkdocs.yml's nav: a page's examples may use what an earlier
page's examples built (build/digits, made on the optimize page, is served, deployed and signed on later ones).
A ```bash block preceded by `<!-- no-test -->` is not run; `<!-- install-test -->` marks the Install block, run
in a fresh venv by test_serve_install.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from conftest import ROOT

DOCS = ROOT / "docs"
BASH = re.compile(r"(<!-- (?:no|install)-test -->\s*)?```bash\n(.*?)```", re.S)
INSTALL = re.compile(r"<!-- install-test -->\s*```bash\n(.*?)```", re.S)
PYTHON = re.compile(r"```python\n(.*?)```", re.S)


def _files(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _files(value)]
    return [f for item in nav for f in _files(item)]


def nav() -> list[Path]:
    """docs/ pages in the site's order."""
    return [DOCS / name for name in _files(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])]


def pages() -> list[Path]:
    """The README, then every docs/ page in the site's order."""
    return [ROOT / "README.md", *nav()]


def commands(text: str) -> list[str]:
    """The lines of a page's bash blocks that run (continuation lines joined)."""
    found = []
    for skip, body in BASH.findall(text):
        if skip:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip():
                found.append(line.strip())
    return found
