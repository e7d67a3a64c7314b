"""The CI examples in examples/ci run: their modelpack commands pass on the bundled model, and gate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml
from conftest import BIN, ROOT

CI = ROOT / "examples" / "ci"


def _github_commands() -> list[str]:
    workflow = yaml.safe_load((CI / "github-actions.yml").read_text())
    steps = workflow["jobs"]["package"]["steps"]
    return [s["run"].strip() for s in steps if s.get("run", "").startswith("modelpack")]


def _gitlab_commands() -> list[str]:
    job = yaml.safe_load((CI / "gitlab-ci.yml").read_text())["model"]
    return [c.strip() for c in job["script"] + job["after_script"] if c.startswith("modelpack")]


def _run(cmd: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_both_examples_run_the_same_gate() -> None:
    assert _github_commands() == _gitlab_commands()
    assert len(_github_commands()) == 3


def test_the_ci_example_passes_and_its_gate_can_fail(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "build").mkdir()
    optimize, bench, report = _github_commands()
    for cmd in (optimize, bench, report):
        proc = _run(cmd, tmp_path)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    result = json.loads((tmp_path / "build" / "benchmark.json").read_text())
    assert result["status"] == "ok" and all(check["passed"] for check in result["gates"])
    assert (tmp_path / "build" / "report.html").stat().st_size > 5000
    # The same gate with an impossible bound fails the job: exit 1, and the JSON says why.
    strict = bench.replace('"onnx.size_mb > 1"', '"onnx.size_mb > 0.01"')
    proc = _run(strict, tmp_path)
    assert proc.returncode == 1
    assert json.loads((tmp_path / "build" / "benchmark.json").read_text())["failed_gates"]
