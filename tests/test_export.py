"""The export stage on every input format, with its parity check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE, run_cli, tree_digest

ALL = ("onnx", "savedmodel", "tflite")
CASES = {
    "keras3": ALL,
    "keras3_h5": ("onnx", "tflite"),
    "tf_keras_h5": ALL,
    "savedmodel": ALL,
    "onnx": ("onnx",),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_export_formats_with_parity(models, tmp_path: Path, kind: str) -> None:
    model = models[kind]
    before = tree_digest(model.path)
    out = tmp_path / "pkg"
    args = ["optimize", model.path, "-o", out, "--eval-data", model.eval_data, "--json", "export"]
    for fmt in CASES[kind]:
        args += ["--format", fmt]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    manifest = json.loads((out / "modelpack.json").read_text())
    assert payload["manifest"] == manifest
    assert tree_digest(model.path) == before, "the input model was modified"

    assert {a["format"] for a in manifest["artifacts"]} == set(CASES[kind])
    for artifact in manifest["artifacts"]:
        parity = artifact["parity"]
        assert parity["max_abs_diff"] <= 1e-4
        assert parity["checked_on"].startswith("eval data")
        assert parity["top1_agreement"] == 100.0
    stage = manifest["lineage"]["stages"][0]
    assert stage["name"] == "export" and stage["status"] == "ok" and stage["duration_s"] >= 0
    assert stage["finished_at"] >= stage["started_at"]
    assert set(CASES[kind]) <= set(stage["metrics"])
    assert {"size_bytes", "compressed_bytes", "accuracy"} <= set(stage["metrics"])
    assert manifest["lineage"]["source"]["sha256"] and manifest["created_by"]["frameworks"]["onnxruntime"]

    # Every artifact answers like the source model, through modelpack's own runtimes.
    from modelpack.package import Package
    from modelpack.runtimes import load_runner

    pkg = Package.load(out)
    x = np.load(model.eval_data)["x"][:5]
    name = pkg.signature.input_names[0]
    results = [load_runner(pkg.model_ref(a), pkg.signature).run({name: x}) for a in pkg.artifacts]
    for other in results[1:]:
        for key in results[0]:
            np.testing.assert_allclose(other[key], results[0][key], atol=1e-4)
    assert run_cli("verify", out).exit_code == 0


def test_onnx_export_has_canonical_names_and_dynamic_batch(digits_package: Path) -> None:
    import onnxruntime as ort

    manifest = json.loads((digits_package / "modelpack.json").read_text())
    assert manifest["signature"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": [-1, 8, 8, 1]}]
    assert manifest["signature"]["outputs"] == [{"name": "probs", "dtype": "float32", "shape": [-1, 10]}]
    session = ort.InferenceSession(str(digits_package / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["probs"]
    assert session.get_inputs()[0].shape[0] == "batch"
    for batch in (1, 7):
        (probs,) = session.run(None, {"image": np.zeros((batch, 8, 8, 1), np.float32)})
        assert probs.shape == (batch, 10)


def test_digits_accuracy_is_kept(digits_package: Path) -> None:
    manifest = json.loads((digits_package / "modelpack.json").read_text())
    source_acc = manifest["lineage"]["source"]["metrics"]["accuracy"]
    assert source_acc > 95.0
    for artifact in manifest["artifacts"]:
        assert artifact["parity"]["accuracy"] == pytest.approx(source_acc, abs=0.01)


def test_export_without_eval_data_uses_random_inputs(models, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = run_cli("optimize", models["tf_keras_h5"].path, "-o", out, "-q", "export", "--format", "onnx")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "modelpack.json").read_text())
    parity = manifest["artifacts"][0]["parity"]
    assert parity["checked_on"] == "random inputs from the signature"
    assert "accuracy" not in parity


def test_parity_above_atol_fails_and_leaves_nothing(models, tmp_path: Path) -> None:
    model = models["keras3"]
    out = tmp_path / "pkg"
    before = tree_digest(model.path)
    result = run_cli("optimize", model.path, "-o", out, "--eval-data", model.eval_data, "--atol", "0",
                     "export", "--format", "tflite")
    assert result.exit_code == 1, result.output
    assert "stage 'export' failed" in result.output and "--atol 0" in result.output
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp dirs, no lock file
    assert tree_digest(model.path) == before


def test_onnx_input_export_validates_and_copies(models, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    assert run_cli("optimize", models["onnx"].path, "-o", out, "-q", "export").exit_code == 0
    assert (out / "model.onnx").read_bytes() == models["onnx"].path.read_bytes()


def test_no_stage_is_a_usage_error(models, tmp_path: Path) -> None:
    """A pipeline with no stages used to package the model as it was: almost always a forgotten stage."""
    out = tmp_path / "pkg"
    result = run_cli("optimize", EXAMPLE / "model.keras", "-o", out, "-q")
    assert result.exit_code == 2, result.output
    assert "no stages" in result.output and "export" in result.output
    assert not out.exists()


def test_bad_eval_data_is_an_input_error(models, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 3, 3), np.float32))
    result = run_cli("optimize", models["keras3"].path, "-o", tmp_path / "pkg", "--eval-data", wrong, "export")
    assert result.exit_code == 2
    assert "wrong.npz" in result.output and "'image'" in result.output and "[-1, 8, 8, 1]" in result.output


def test_lambda_layer_needs_unsafe_load(tmp_path: Path) -> None:
    from modelpack.frameworks import tf as tfw

    keras = tfw.keras3()
    inp = keras.Input((4,), name="x")
    out = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    path = tmp_path / "lambda.keras"
    keras.Model(inp, out).save(path)
    result = run_cli("optimize", path, "-o", tmp_path / "pkg", "export")
    assert result.exit_code == 2
    assert "safe mode" in result.output and "--unsafe-load" in result.output
    assert not (tmp_path / "pkg").exists()
