"""The README's examples run, so they cannot rot.

Every ```bash block runs, line by line, in a copy of the repository's examples, with the
venv on PATH. A block preceded by `<!-- no-test -->` is skipped (make demo/test would
recurse); `<!-- install-test -->` marks the Install block, run in a fresh venv by test_serve_install.py. A line ending in `# exit N` must exit with N.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from conftest import BIN, ROOT

FENCE = re.compile(r"(<!-- (?:no|install)-test -->\s*)?```bash\n(.*?)```", re.S)


def commands(readme: str) -> list[str]:
    found = []
    for skip, body in FENCE.findall(readme):
        if skip:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip():
                found.append(line.strip())
    return found


PYTHON = re.compile(r"```python\n(.*?)```", re.S)


def test_readme_python_examples_run(tmp_path: Path) -> None:
    """The Python API section's blocks, in order, each in a fresh interpreter from a copy of the examples.
    (Other python blocks talk to a running server; tests/test_serve.py runs those clients.)"""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "build").mkdir()
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Python API"):]
    blocks = PYTHON.findall(section[:section.index("\n### ", 1)])
    assert len(blocks) >= 2
    for block in blocks:
        proc = subprocess.run([str(BIN / "python"), "-c", block], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{block}\n{proc.stdout}\n{proc.stderr}"
        assert proc.stdout.strip(), block


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    head = text[: text.index("## ")]
    assert "make demo" in head and "make test" in head


def test_readme_examples_run(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "build").mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmds = commands((ROOT / "README.md").read_text())
    assert len(cmds) >= 10
    for cmd in cmds:
        expected = 0
        match = re.search(r"#\s*exit (\d+)\s*$", cmd)
        if match:
            expected = int(match.group(1))
        proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == expected, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
