"""Third-party stages: installed with pip, they appear as subcommands with no change to modelpack."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from conftest import make_onnx_mlp, plugin_env, run_cli, run_subprocess


def test_plugin_stage_is_listed(plugin_site: Path) -> None:
    result = run_subprocess("stages", "--json", env=plugin_env(plugin_site))
    assert result.returncode == 0, result.stderr
    stages = {s["name"]: s for s in json.loads(result.stdout)}
    assert {"export", "hello", "explode"} <= set(stages)
    assert stages["hello"]["from"] == "modelpack-hello 0.1.0"
    assert [o["flag"] for o in stages["hello"]["options"]] == ["--greeting", "--times"]
    help_text = run_subprocess("optimize", "--help", env=plugin_env(plugin_site)).stdout
    assert "hello" in help_text and "Stamp a greeting" in help_text


def test_plugin_stage_runs_in_a_pipeline(plugin_site: Path, models, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = run_subprocess("optimize", models["onnx"].path, "-o", out, "hello", "--greeting", "hi", "--times", "2",
                            env=plugin_env(plugin_site))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "modelpack.json").read_text())
    stage = manifest["lineage"]["stages"][0]
    assert stage["name"] == "hello" and stage["params"] == {"greeting": "hi", "times": 2}
    assert stage["metrics"]["greeting_chars"] == 5
    # The pipeline measures every stage's output the same way, plugin or built-in.
    assert stage["metrics"]["max_abs_diff"] == 0.0 and stage["metrics"]["size_bytes"] > 0
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert meta["greeting"] == "hi hi"


def test_plugin_options_are_validated(plugin, models, tmp_path: Path) -> None:
    result = run_cli("optimize", models["onnx"].path, "-o", tmp_path / "pkg", "hello", "--times", "9")
    assert result.exit_code == 2 and "--times" in result.output


def test_plugin_gets_conversions_from_the_pipeline(plugin, models, tmp_path: Path) -> None:
    """A stage that accepts only ONNX, after a Keras input: the pipeline converts first."""
    out = tmp_path / "pkg"
    result = run_cli("optimize", models["tf_keras_h5"].path, "-o", out, "-q", "hello")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "modelpack.json").read_text())
    assert manifest["lineage"]["stages"][0]["input_format"] == "onnx"
    assert [a["format"] for a in manifest["artifacts"]] == ["onnx"]


def test_plugin_declares_itself_through_the_hooks_built_in_stages_use(plugin, tmp_path: Path) -> None:
    """The engine names no stage: a plugin picks the package's codec before any work (as compress --archive
    does) and refuses up front what the run cannot measure (as benchmark --fail-if does)."""
    model = make_onnx_mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "pkg"
    result = run_cli("optimize", model, "-o", out, "-q", "export", "squeeze", "--codec", "bzip2")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "modelpack.json").read_text())
    assert manifest["archive"]["compression"] == "bzip2"
    from modelpack.package.archive import compressed_size

    # the source and every stage were measured with the codec the plugin picked, known from the plan
    assert manifest["lineage"]["source"]["metrics"]["compressed_bytes"] == compressed_size(model, "bzip2")
    refused = run_cli("optimize", model, "-o", tmp_path / "pkg-2", "export", "squeeze", "--need-labels")
    assert refused.exit_code == 2, refused.output
    assert "--need-labels: give --eval-data with labels" in refused.output
    assert not (tmp_path / "pkg-2").exists()


def test_modelpack_testing_runs_a_plugin_stage_and_serves_its_package(plugin, models, tmp_path: Path) -> None:
    """What a plugin author's own tests call: the real pipeline for one stage, the real server in-process."""
    import pytest

    from modelpack.errors import UsageError
    from modelpack.testing import run_stage, serve_in_process

    run = run_stage("hello", models["onnx"].path, tmp_path / "pkg", greeting="hi", times=2)
    assert run.record["name"] == "hello" and run.record["status"] == "ok"
    assert run.record["params"] == {"greeting": "hi", "times": 2}
    assert [a["format"] for a in run.manifest["artifacts"]] == ["onnx"]
    with pytest.raises(UsageError, match="--times"):
        run_stage("hello", models["onnx"].path, tmp_path / "bad", times=9)
    assert not (tmp_path / "bad").exists()
    with serve_in_process(run.package) as client:
        assert client.get("/v2/health/ready").status_code == 200
        meta = client.get("/v2/models/" + run.manifest["name"]).json()
        assert meta["inputs"][0]["name"] == run.manifest["signature"]["inputs"][0]["name"]
