"""prune, quantize and compress on a Keras 3 model, a tf_keras .h5 and a hand-built ONNX model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE, run_cli, tree_digest
from onnx import numpy_helper


def optimize(model, out: Path, *stages: Any, extra: tuple[Any, ...] = ()) -> dict[str, Any]:
    before = tree_digest(model.path)
    result = run_cli("optimize", model.path, "-o", out, "--eval-data", model.eval_data, "-q", *extra, *stages)
    assert result.exit_code == 0, result.output
    assert tree_digest(model.path) == before, "the input model was modified"
    assert run_cli("verify", out).exit_code == 0
    return json.loads((out / "modelpack.json").read_text())


def stage_record(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in manifest["lineage"]["stages"] if r["name"] == name)


# --- prune ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["keras3", "tf_keras_h5"])
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_prune_keras_one_shot_reaches_the_target(models, tmp_path: Path, kind: str, sparsity: float) -> None:
    model = models[kind]
    manifest = optimize(model, tmp_path / "pkg", "prune", "--sparsity", sparsity)
    rec = stage_record(manifest, "prune")
    assert rec["metrics"]["mode"] == "one-shot"
    assert abs(rec["metrics"]["sparsity"] - sparsity) <= 0.01
    layers = rec["metrics"]["layer_sparsity"]
    assert len(layers) >= 2
    for layer, achieved in layers.items():
        assert abs(achieved - sparsity) <= 0.02, layer
    assert any("one-shot" in n for n in rec["notes"])
    assert manifest["artifacts"][0]["format"] == "keras"
    # The pruned weights really are zero in the packaged model, as the manifest says.
    from modelpack.frameworks import keras as kw
    from modelpack.package import Package

    pkg = Package.load(tmp_path / "pkg")
    pruned = kw.load(pkg.model_ref(pkg.artifact("keras")))
    for name, achieved in layers.items():
        kernel = pruned.get_layer(name).get_weights()[0]
        assert float((kernel == 0).mean()) == pytest.approx(achieved, abs=1e-4), name


def test_prune_keras3_lists_layers_that_stay_dense(models, tmp_path: Path) -> None:
    manifest = optimize(models["keras3"], tmp_path / "pkg", "prune", "--sparsity", "0.5")
    rec = stage_record(manifest, "prune")
    dense = " ".join(rec["metrics"]["dense_layers"])
    assert "DepthwiseConv2D" in dense and "BatchNormalization" in dense
    assert any("stayed dense" in n for n in rec["notes"])


@pytest.mark.slow  # TensorFlow
def test_prune_fine_tuned_on_digits_keeps_accuracy(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = run_cli("optimize", EXAMPLE / "model.keras", "-o", out, "--eval-data", EXAMPLE / "eval.npz", "-q",
                     "--max-accuracy-drop", "1.0",
                     "prune", "--sparsity", "0.8", "--train-data", EXAMPLE / "train.npz")
    assert result.exit_code == 0, result.output
    rec = stage_record(json.loads((out / "modelpack.json").read_text()), "prune")
    assert rec["metrics"]["mode"] == "fine-tuned"
    assert abs(rec["metrics"]["sparsity"] - 0.8) <= 0.01
    assert rec["metrics"]["accuracy_drop"] <= 1.0
    assert rec["metrics"]["compressed_bytes"] < rec["metrics"]["size_bytes"] * 0.5


def test_prune_structured_2_of_4(models, tmp_path: Path) -> None:
    manifest = optimize(models["tf_keras_h5"], tmp_path / "pkg", "prune", "--structure", "2:4")
    rec = stage_record(manifest, "prune")
    assert rec["metrics"]["target_sparsity"] == 0.5
    assert abs(rec["metrics"]["sparsity"] - 0.5) <= 0.01


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_onnx_initializers(models, tmp_path: Path, scope: str) -> None:
    manifest = optimize(models["onnx"], tmp_path / "pkg", "prune", "--sparsity", "0.7", "--scope", scope)
    rec = stage_record(manifest, "prune")
    assert abs(rec["metrics"]["sparsity"] - 0.7) <= 0.01
    assert set(rec["metrics"]["layer_sparsity"]) == {"w1", "w2"}
    proto = onnx.load(str(tmp_path / "pkg" / "model.onnx"))
    weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    zeros = sum(int((weights[n] == 0).sum()) for n in ("w1", "w2"))
    assert abs(zeros / sum(weights[n].size for n in ("w1", "w2")) - 0.7) <= 0.01
    if scope == "layer":
        assert all(abs(float((weights[n] == 0).mean()) - 0.7) <= 0.01 for n in ("w1", "w2"))
    assert (weights["b1"] == 0).all()  # biases are not pruned (they were zero to begin with)


def test_prune_onnx_n_of_m_groups(models, tmp_path: Path) -> None:
    optimize(models["onnx"], tmp_path / "pkg", "prune", "--structure", "2:4")
    proto = onnx.load(str(tmp_path / "pkg" / "model.onnx"))
    w1 = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "w1"))
    groups = w1.T.reshape(-1, 4)  # MatMul weight [K, N]: groups of 4 along K
    assert ((groups != 0).sum(axis=1) <= 2).all()


def test_prune_bad_structure_is_a_usage_error(models, tmp_path: Path) -> None:
    result = run_cli("optimize", models["onnx"].path, "-o", tmp_path / "pkg", "prune", "--structure", "4:2")
    assert result.exit_code == 2 and "--structure" in result.output


# --- quantize ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["keras3", "tf_keras_h5"])
@pytest.mark.parametrize("method", ["dynamic", "static", "float16"])
def test_quantize_keras_to_tflite(models, tmp_path: Path, kind: str, method: str) -> None:
    manifest = optimize(models[kind], tmp_path / "pkg", "quantize", "--method", method)
    rec = stage_record(manifest, "quantize")
    assert rec["output_format"] == "tflite" and rec["metrics"]["method"] == method
    assert manifest["artifacts"][0]["format"] == "tflite"
    assert rec["metrics"]["top1_agreement"] >= 75.0
    assert rec["metrics"]["float_p50_ms"] > 0 and rec["metrics"]["quantized_p50_ms"] > 0
    from modelpack.frameworks import tflite

    dtypes = set(tflite.summary(tflite.interpreter(tmp_path / "pkg" / "model.tflite"))["tensor_dtypes"])
    assert ("int8" in dtypes) if method != "float16" else ("float16" in dtypes)


@pytest.mark.parametrize("method,extra", [
    ("dynamic", []), ("static", ["--calibration", "minmax"]), ("static", ["--calibration", "entropy"]),
    ("static", ["--calibration", "percentile", "--per-channel"]), ("float16", []),
])
def test_quantize_onnx(models, tmp_path: Path, method: str, extra: list[str]) -> None:
    manifest = optimize(models["onnx"], tmp_path / "pkg", "quantize", "--method", method, *extra)
    rec = stage_record(manifest, "quantize")
    assert rec["output_format"] == "onnx"
    proto = onnx.load(str(tmp_path / "pkg" / "model.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    if method == "static":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    elif method == "dynamic":
        assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}
    else:
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    assert rec["metrics"]["max_abs_diff"] < 0.5
    assert rec["metrics"]["size_bytes"] < manifest["lineage"]["source"]["metrics"]["size_bytes"] or method == "static"


def test_quantize_keras_to_onnx_target(models, tmp_path: Path) -> None:
    manifest = optimize(models["keras3"], tmp_path / "pkg", "quantize", "--target", "onnx")
    rec = stage_record(manifest, "quantize")
    assert rec["input_format"] == "onnx" and rec["output_format"] == "onnx"


def test_quantize_static_without_calibration_data_is_clear(models, tmp_path: Path) -> None:
    for kind in ("onnx", "keras3"):
        result = run_cli("optimize", models[kind].path, "-o", tmp_path / f"pkg-{kind}", "quantize", "--method", "static")
        assert result.exit_code == 2, result.output
        assert "needs calibration data" in result.output and "--calib-data" in result.output
        assert not (tmp_path / f"pkg-{kind}").exists()


def test_quantize_with_explicit_calibration_file(models, tmp_path: Path) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).random((20, 16), dtype=np.float32))
    result = run_cli("optimize", models["onnx"].path, "-o", tmp_path / "pkg", "-q", "quantize", "--method", "static",
                     "--calib-data", calib, "--calib-samples", "10")
    assert result.exit_code == 0, result.output


def test_quantize_qat(models, tmp_path: Path) -> None:
    model = models["tf_keras_h5"]
    manifest = optimize(model, tmp_path / "pkg", "quantize", "--method", "qat", "--train-data", model.eval_data,
                        "--epochs", "2")
    rec = stage_record(manifest, "quantize")
    assert rec["metrics"]["method"] == "qat" and rec["output_format"] == "tflite"
    assert any("quantization-aware training" in n for n in rec["notes"])


def test_qat_needs_train_data(models, tmp_path: Path) -> None:
    result = run_cli("optimize", models["keras3"].path, "-o", tmp_path / "pkg", "quantize", "--method", "qat")
    assert result.exit_code == 2 and "--train-data" in result.output


def test_quantize_records_when_int8_is_slower(tmp_path: Path) -> None:
    """On this CPU onnxruntime's dynamic int8 convolution is slower than float for the digits CNN."""
    out = tmp_path / "pkg"
    result = run_cli("optimize", EXAMPLE / "model.keras", "-o", out, "--eval-data", EXAMPLE / "eval.npz",
                     "quantize", "--target", "onnx")
    assert result.exit_code == 0, result.output
    rec = stage_record(json.loads((out / "modelpack.json").read_text()), "quantize")
    if rec["metrics"].get("same_file"):  # the latency objective kept the float export itself: nothing to time
        assert rec["metrics"]["speedup"] == 1.0 and "slower_than_float" not in rec["metrics"]
        assert "not timed against itself" in result.output
        return
    ratio = rec["metrics"]["quantized_p50_ms"] / rec["metrics"]["float_p50_ms"]
    if ratio > 1.05:
        assert rec["metrics"]["slower_than_float"] is True
        assert any("slower than float" in n for n in rec["notes"]) and "slower than float" in result.output
    else:
        assert "slower_than_float" not in rec["metrics"]


# --- compress ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["keras3", "tf_keras_h5"])
def test_compress_clusters_keras_weights(models, tmp_path: Path, kind: str) -> None:
    model = models[kind]
    manifest = optimize(model, tmp_path / "pkg", "compress", "--clusters", "8", "--train-data", model.eval_data,
                        "--epochs", "1")
    rec = stage_record(manifest, "compress")
    assert rec["metrics"]["clusters"] == 8 and rec["metrics"]["mode"] == "fine-tuned"
    unique = rec["metrics"]["unique_weights_per_layer"]
    assert len(unique) >= 2 and all(count <= 8 for count in unique.values())
    if kind == "keras3":  # tfmot does not cluster depthwise kernels; the stage says so
        assert any("DepthwiseConv2D" in layer for layer in rec["metrics"]["unclustered_layers"])


def test_compress_onnx_graph(models, tmp_path: Path) -> None:
    manifest = optimize(models["onnx"], tmp_path / "pkg", "compress", "--graph", "extended")
    rec = stage_record(manifest, "compress")
    assert rec["metrics"]["nodes_after"] < rec["metrics"]["nodes_before"] == 4
    assert rec["metrics"]["max_abs_diff"] < 1e-5


def test_compress_archive_codec_is_used_by_pack(models, tmp_path: Path) -> None:
    manifest = optimize(models["onnx"], tmp_path / "pkg", "compress", "--archive", "lzma")
    assert manifest["archive"]["compression"] == "lzma"
    assert manifest["archive"]["compressed_bytes"] == manifest["artifacts"][0]["compressed_size"]
    result = run_cli("pack", tmp_path / "pkg", "-o", tmp_path / "x.mpk", "--json")
    assert json.loads(result.stdout)["compression"] == "lzma"
    import zipfile

    with zipfile.ZipFile(tmp_path / "x.mpk") as zf:
        assert zf.getinfo("model.onnx").compress_type == zipfile.ZIP_LZMA


# --- the accuracy gate and stage order --------------------------------------------------------------------

HARSH = ("prune", "--sparsity", "0.95")  # one-shot 95% pruning wrecks the digits CNN


def test_gate_fails_the_run_naming_stage_and_numbers(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = run_cli("optimize", EXAMPLE / "model.keras", "-o", out, "--eval-data", EXAMPLE / "eval.npz",
                     "--max-accuracy-drop", "1", *HARSH, "export")
    assert result.exit_code == 1
    assert "stage 'prune' lost" in result.output and "--max-accuracy-drop 1" in result.output
    assert "99.72%" in result.output
    assert not out.exists()


def test_gate_skip_drops_the_stage_and_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = run_cli("optimize", EXAMPLE / "model.keras", "-o", out, "--eval-data", EXAMPLE / "eval.npz", "-q",
                     "--max-accuracy-drop", "1", "--on-violation", "skip", *HARSH, "export", "--format", "onnx")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "modelpack.json").read_text())
    prune, export = manifest["lineage"]["stages"]
    assert prune["status"] == "skipped" and any("dropped" in n for n in prune["notes"])
    shown = run_cli("inspect", out)
    assert "prune (skipped: not in the package)" in shown.output, shown.output
    assert export["input_format"] == "keras" and export["status"] == "ok"
    source_acc = manifest["lineage"]["source"]["metrics"]["accuracy"]
    assert manifest["artifacts"][0]["measured"]["accuracy"] == pytest.approx(source_acc, abs=0.01)


def test_gate_needs_labelled_eval_data(models, tmp_path: Path) -> None:
    result = run_cli("optimize", models["onnx"].path, "-o", tmp_path / "pkg", "--max-accuracy-drop", "1", "prune")
    assert result.exit_code == 2 and "--eval-data" in result.output


def test_stages_act_on_the_representation_held(models, tmp_path: Path) -> None:
    manifest = optimize(models["keras3"], tmp_path / "pkg", "prune", "--sparsity", "0.5",
                        "export", "--format", "onnx", "quantize")
    prune, export, quantize = manifest["lineage"]["stages"]
    assert (prune["input_format"], prune["output_format"]) == ("keras", "keras")
    assert (export["input_format"], export["output_format"]) == ("keras", "onnx")
    assert (quantize["input_format"], quantize["output_format"]) == ("onnx", "onnx")
    assert [a["format"] for a in manifest["artifacts"]] == ["onnx"]


def test_quantize_after_tflite_is_refused_up_front(models, tmp_path: Path) -> None:
    result = run_cli("optimize", models["keras3"].path, "-o", tmp_path / "pkg", "export", "--format", "tflite",
                     "quantize")
    assert result.exit_code == 2 and "holds a tflite model" in result.output


def test_every_built_in_stage_declares_its_options_once_on_its_params() -> None:
    """Each option is written once, as an annotated option(...) on the stage's Params: the stage's options are
    those, and every annotation has one, so `params.x` is always set."""
    from modelpack.stages import Params, registry

    for name in ("export", "quantize", "prune", "compress", "benchmark"):
        stage = registry.get(name)
        assert type(stage).options is type(stage).params_type.__options__, name
        typed = {key for cls in type(stage).params_type.__mro__ if cls is not Params
                 for key in getattr(cls, "__annotations__", {}) if issubclass(cls, Params)}
        assert typed == {o.key for o in stage.options}, name
    fine_tuning = [o.flag for o in registry.get("prune").options]
    assert fine_tuning[:3] == ["--sparsity", "--structure", "--scope"] and fine_tuning[3] == "--train-data"


def test_params_options_name_themselves_and_refuse_a_bare_annotation() -> None:
    import click
    import pytest

    from modelpack.stages import Params, Stage, option

    class P(Params):
        max_tries: int = option(click.IntRange(1), default=3, help="How often.")

    class S(Stage[P]):
        name = "s"
        params_type = P

    assert [(o.name, o.flag, o.default) for o in S.options] == [("max-tries", "--max-tries", 3)]
    assert S().resolve({"max_tries": "5"}).max_tries == 5
    with pytest.raises(TypeError, match="annotation.s. forgotten have no option"):
        class Half(Params):
            kept: int = option(int, default=1)
            forgotten: str

    with pytest.raises(TypeError, match="options are declared on P"):
        class Both(Stage[P]):
            name = "both"
            params_type = P
            options = S.options


def test_params_are_typed_read_only_and_name_the_stage() -> None:
    from modelpack.errors import UsageError
    from modelpack.stages import registry

    prune = registry.get("prune")
    params = prune.resolve({"sparsity": "0.25"})  # converted by the option's click type, as from a file
    assert params.sparsity == 0.25 and params["scope"] == "layer" and params.epochs == 12
    assert dict(params)["structure"] is None  # a Mapping too: stages written for dicts keep working
    with pytest.raises(AttributeError, match="stage 'prune' has no option 'sparsty'"):
        params.sparsty  # noqa: B018
    with pytest.raises(AttributeError, match="read-only"):
        params.sparsity = 0.9
    with pytest.raises(UsageError, match="--sparsity"):
        prune.resolve({"sparsity": 2})
    import pickle

    assert pickle.loads(pickle.dumps(params)) == params  # crosses the isolation boundary
