"""`pip install modelpack[serve]` alone (no TensorFlow) is enough to serve an ONNX package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.timeout(900)
def test_serve_extra_alone_serves_onnx(digits_package: Path, tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "src"  # build from a copy: setuptools writes build/ beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info",
                                                                  "__pycache__", ".pytest_cache"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", f"{source}[serve]"], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    check = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import importlib.util as u; print([m for m in ('tensorflow', 'keras', 'tf_keras') "
                            "if u.find_spec(m)])"], capture_output=True, text=True)
    assert check.stdout.strip() == "[]", "the serve extra pulled in a deep-learning framework"
    result = subprocess.run([str(venv / "bin" / "modelpack"), "serve", str(digits_package), "--get",
                             "/v2/models/model"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert '"platform":"onnxruntime_onnx"' in result.stdout
