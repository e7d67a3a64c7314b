"""The examples in the README and in docs/ run, so they cannot rot.

Every ```bash block runs, line by line, in a copy of the repository's examples, with the venv on PATH, page after
page in the order of `doc_pages.pages()` (the README, then the site's nav). A block preceded by `<!-- no-test -->`
is skipped (make demo/test would recurse; servers that do not exit); `<!-- install-test -->` marks the Install
block, run in a fresh venv by test_serve_install.py. A line ending in `# exit N` must exit with N. The Python API
page's blocks run in fresh interpreters, and the serve page's client blocks against a real server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from conftest import BIN, EXAMPLE, ROOT
from doc_pages import DOCS, PYTHON, commands, pages
from servers import Process, free_port


def test_api_page_python_examples_run(tmp_path: Path) -> None:
    """The Python API page's blocks above its reference, in order, each in a fresh interpreter from a copy of the
    examples."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "build").mkdir()
    text = (DOCS / "api.md").read_text()
    blocks = PYTHON.findall(text[:text.index("\n## Reference")])
    assert len(blocks) >= 2
    for block in blocks:
        proc = subprocess.run([str(BIN / "python"), "-c", block], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{block}\n{proc.stdout}\n{proc.stderr}"
        assert proc.stdout.strip(), block


def test_serve_page_client_blocks_run(digits_package: Path, tmp_path: Path) -> None:
    """The serve page's tritonclient blocks (HTTP and gRPC), as written, against `modelpack serve` of a package
    named digits with the key they send; only the ports are this test's own."""
    shutil.copytree(digits_package, tmp_path / "models" / "digits" / "1")  # a repository: the model is "digits"
    blocks = PYTHON.findall((DOCS / "serve.md").read_text())
    assert len(blocks) >= 2 and all("tritonclient" in block for block in blocks)
    grpc = free_port()
    server = Process(tmp_path / "models", "--api-key", "s3cret", "--grpc-port", str(grpc))
    try:
        for block in blocks:
            code = (f"import numpy as np\nx = np.load({str(EXAMPLE / 'eval.npz')!r})['x'][:3].astype(np.float32)\n"
                    + block.replace("localhost:8000", f"127.0.0.1:{server.port}")
                    .replace("localhost:8001", f"127.0.0.1:{grpc}")
                    + "\nassert probs.shape == (3, 10), probs.shape\nprint(probs.argmax(axis=1))\n")
            proc = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"{code}\n{proc.stdout}\n{proc.stderr}"
    finally:
        server.stop()


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    head = text[: text.index("## ")]
    assert "make demo" in head and "make test" in head


def test_examples_run(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "build").mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmds = [(page.relative_to(ROOT), cmd) for page in pages() for cmd in commands(page.read_text())]
    assert len(cmds) >= 10
    assert any(page.name == "README.md" for page, _ in cmds)  # the tour runs too
    for page, cmd in cmds:
        expected = 0
        match = re.search(r"#\s*exit (\d+)\s*$", cmd)
        if match:
            expected = int(match.group(1))
        proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == expected, f"{page}: {cmd}\n{proc.stdout}\n{proc.stderr}"
