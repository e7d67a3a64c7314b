"""The Install block (docs/install.md), run as written in a fresh venv: a wheel with the serve extra alone (no
TensorFlow) is enough to serve an ONNX package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from doc_pages import INSTALL, pages


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_install_block_serves_onnx_without_tensorflow(digits_package: Path, tmp_path: Path) -> None:
    (block,) = [block for page in pages() for block in INSTALL.findall(page.read_text())]
    source = tmp_path / "src"  # a clean copy, as a fresh clone would be
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                                                  "__pycache__", ".pytest_cache", ".peers"))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join([str(tmp_path / "bin"), *[p for p in env["PATH"].split(os.pathsep)
                                                            if p != str(ROOT / ".venv" / "bin")]])
    (tmp_path / "bin").mkdir()
    base = Path(getattr(sys, "_base_executable", sys.executable))
    (tmp_path / "bin" / "python3").symlink_to(base)
    script = "set -euo pipefail\n" + block + "\npython -c 'import importlib.util as u; print([m for m in " \
        "(\"tensorflow\", \"keras\", \"tf_keras\") if u.find_spec(m)])'\n" \
        f"modelpack serve {digits_package} --get /v2/models/model\n"
    proc = subprocess.run(["bash", "-c", script], cwd=source, env=env, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "modelpack, version 0.1.0" in lines
    assert "[]" in lines, "the serve extra pulled in a deep-learning framework"
    assert '"platform":"onnxruntime_onnx"' in proc.stdout
    assert (source / "venv" / "bin" / "modelpack").is_file()
