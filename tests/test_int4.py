"""int4 weight-only quantization: MatMulNBits and GatherBlockQuantized, block size and accuracy level measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli


def _ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def tiny_bert(path: Path, vocab: int = 4000, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A 2-layer BERT encoder with random weights, built like the corpus's MiniLM (embedding table and all)."""
    import corpus

    rng = np.random.default_rng(seed)
    inter = hidden * 4

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    weights = {"embeddings.word_embeddings.weight": w(vocab, hidden),
               "embeddings.position_embeddings.weight": w(64, hidden),
               "embeddings.token_type_embeddings.weight": w(2, hidden),
               "embeddings.LayerNorm.weight": np.ones(hidden, np.float32),
               "embeddings.LayerNorm.bias": np.zeros(hidden, np.float32)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, (out, inp) in {"attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden),
                                 "attention.self.value": (hidden, hidden), "attention.output.dense": (hidden, hidden),
                                 "intermediate.dense": (inter, hidden), "output.dense": (hidden, inter)}.items():
            weights[p + name + ".weight"], weights[p + name + ".bias"] = w(out, inp), w(out)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            weights[p + name + ".weight"] = np.ones(hidden, np.float32)
            weights[p + name + ".bias"] = np.zeros(hidden, np.float32)
    config = {"hidden_size": hidden, "num_attention_heads": 4, "num_hidden_layers": layers}
    corpus.build_bert_onnx(weights, config, path)
    return path


def _eval(path: Path, vocab: int = 4000, seq: int = 32, n: int = 16) -> Path:
    rng = np.random.default_rng(1)
    mask = np.ones((n, seq), np.int64)
    mask[n // 2:, seq // 2:] = 0  # padded sentences, as real batches have
    np.savez(path, input_ids=rng.integers(0, vocab, (n, seq)).astype(np.int64), attention_mask=mask,
             token_type_ids=np.zeros((n, seq), np.int64))
    return path


def _int4(tmp_path: Path, model: Path, data: Path, *options: str) -> dict[str, Any]:
    out = tmp_path / "pkg"
    result = run_cli("optimize", model, "-o", out, "--eval-data", data, "-q", "quantize", "--method", "int4",
                     *options)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "modelpack.json").read_text())
    record = next(r for r in manifest["lineage"]["stages"] if r["name"] == "quantize")
    return {"out": out, "manifest": manifest, "record": record, "output": result.output}


def test_int4_weights_on_a_small_encoder(tmp_path: Path) -> None:
    model = tiny_bert(tmp_path / "bert.onnx")
    found = _int4(tmp_path, model, _eval(tmp_path / "eval.npz"))
    metrics = found["record"]["metrics"]
    ops = _ops(found["out"] / "model.onnx")
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and "MatMul" in ops  # attention's q·k stays float
    int4s = [c for c in metrics["candidates"] if c["method"] == "int4"]
    # Every block size at both accuracy levels was measured, and each is in the manifest with what it found.
    assert {(c["block_size"], c["accuracy_level"]) for c in int4s} >= {(b, a) for b in (16, 32, 64, 128) for a in (0, 4)}
    assert all("size_bytes" in c and "cosine" in c and "speedup" in c for c in int4s if "error" not in c)
    reference = next(c for c in metrics["candidates"] if c["name"].startswith("int8 reference"))
    assert reference["speedup"] > 0 and not reference["chosen"]
    chosen = next(c for c in metrics["candidates"] if c["chosen"])
    assert chosen["method"] == "int4" and chosen["meets_target"] and chosen["cosine"] >= 0.98
    # The smallest faithful candidate wins.
    assert chosen["size_bytes"] <= min(c["size_bytes"] for c in int4s if c.get("meets_target")) * 1.005
    assert metrics["size_ratio"] >= 4.0  # the embedding table dominates, as in real encoders
    assert metrics["block_size"] == chosen["block_size"] and metrics["accuracy_level"] == chosen["accuracy_level"]
    note = next(n for n in found["record"]["notes"] if n.startswith("int4 recipe:"))
    assert "smaller than float" in note and "float speed" in note and "the speed of dynamic int8" in note
    assert "1 thread" in note and "input_ids [1, 32]" in note
    # The package runs where it is served: predict loads MatMulNBits and GatherBlockQuantized.
    np.savez(tmp_path / "one.npz", **{k: v[:2] for k, v in np.load(tmp_path / "eval.npz").items()})
    result = run_cli("predict", found["out"], "--input", tmp_path / "one.npz", "-o", tmp_path / "pred.npz")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "pred.npz")["sentence_embedding"].shape == (2, 64)


def test_int4_refuses_a_model_without_weights_it_can_hold(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "relu.onnx"))
    result = run_cli("optimize", tmp_path / "relu.onnx", "-o", tmp_path / "pkg", "-q", "quantize", "--method", "int4")
    assert result.exit_code == 2 and "--method int4" in result.output and "--method int8" in result.output


@pytest.mark.corpus
def test_int4_minilm_is_five_times_smaller_and_faithful(tmp_path: Path) -> None:
    import corpus

    model = corpus.get("minilm")
    found = _int4(tmp_path, model.path, model.eval_data)
    metrics = found["record"]["metrics"]
    chosen = next(c for c in metrics["candidates"] if c["chosen"])
    float_bytes = model.path.stat().st_size
    assert float_bytes / (found["out"] / "model.onnx").stat().st_size >= 5.0, metrics
    assert chosen["meets_target"] and chosen["cosine"] >= 0.98, chosen
    assert metrics["speedup_vs_float"] > 0 and metrics["speedup_vs_int8"] > 0


@pytest.mark.slow  # seconds: left out of make test-fast
def test_the_size_objective_keeps_int4_when_it_is_the_smallest_faithful(tmp_path: Path) -> None:
    model = tiny_bert(tmp_path / "bert.onnx")
    out = tmp_path / "small"
    result = run_cli("optimize", model, "-o", out, "--eval-data", _eval(tmp_path / "eval.npz"), "-q",
                     "--objective", "size", "quantize")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "modelpack.json").read_text())
    metrics = next(r for r in manifest["lineage"]["stages"] if r["name"] == "quantize")["metrics"]
    methods = {c["method"] for c in metrics["candidates"]}
    assert {"int4", "dynamic"} <= methods  # int8 and int4 candidates, side by side in the manifest
    chosen = next(c for c in metrics["candidates"] if c["chosen"])
    assert chosen["method"] == "int4" and chosen["meets_target"], chosen
    assert {"MatMulNBits", "GatherBlockQuantized"} <= _ops(out / "model.onnx")
    assert metrics["archive_bytes"] == min(a["compressed_size"] for a in manifest["artifacts"])
