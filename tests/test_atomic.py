"""Nothing lost: failed, interrupted and concurrent runs leave no half-written package."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from conftest import BIN, plugin_env, run_cli, tree_digest, wait_until


def test_failing_stage_leaves_nothing_and_input_unchanged(plugin, models, tmp_path: Path) -> None:
    model = models["keras3"]
    before = tree_digest(model.path)
    out = tmp_path / "out" / "pkg"
    result = run_cli("optimize", model.path, "-o", out, "export", "--format", "onnx", "explode", "--message", "kaboom")
    assert result.exit_code == 1
    assert "stage 'explode' failed: kaboom" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []
    assert tree_digest(model.path) == before


def test_failing_stage_keeps_the_previous_package(plugin, models, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    assert run_cli("optimize", models["onnx"].path, "-o", out, "-q", "export").exit_code == 0
    before = tree_digest(out)
    result = run_cli("optimize", models["onnx"].path, "-o", out, "--force", "export", "explode")
    assert result.exit_code == 1
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def _start(args: list[str], env: dict[str, str], ignore_sigint: bool = False) -> subprocess.Popen[str]:
    def background_job() -> None:  # what `modelpack optimize ... &` in a script gets: SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen([str(BIN / "modelpack"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **env}, preexec_fn=background_job if ignore_sigint else None)


def test_interrupt_leaves_nothing_behind(plugin_site: Path, models, tmp_path: Path) -> None:
    for sig, ignored in ((signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)):
        out = tmp_path / f"pkg-{sig.name}-{ignored}"
        proc = _start(["optimize", str(models["onnx"].path), "-o", str(out), "nap", "--seconds", "60"],
                      plugin_env(plugin_site), ignore_sigint=ignored)
        wait_until(lambda out=out: any(p.name.startswith(f".{out.name}.tmp-work") and any(p.iterdir())
                                      for p in tmp_path.iterdir() if p.is_dir()))
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr
        assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_concurrent_run_into_the_same_output_fails_cleanly(models, tmp_path: Path) -> None:
    from modelpack.atomic import atomic_dir

    out = tmp_path / "pkg"
    with atomic_dir(out) as staging:
        (staging / "marker").write_text("first run")
        result = run_cli("optimize", models["onnx"].path, "-o", out, "export")
        assert result.exit_code == 1
        assert "being written by another modelpack run" in result.output
    assert (out / "marker").read_text() == "first run"


def test_stale_temp_dirs_from_a_killed_run_are_swept(models, tmp_path: Path) -> None:
    stale = tmp_path / ".pkg.tmp-abc123"
    stale.mkdir()
    (stale / "junk").write_text("left by kill -9")
    assert run_cli("optimize", models["onnx"].path, "-o", tmp_path / "pkg", "-q", "export").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]
    assert json.loads((tmp_path / "pkg" / "modelpack.json").read_text())["artifacts"][0]["format"] == "onnx"
