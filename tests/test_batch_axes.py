"""Batch axes from the graph's dimension names: a time axis is not a batch, and the user can say which axis is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from modelpack.signature import Signature, parse_batch_axes
from modelpack.testing import serve_in_process


def _fixed_batch_onnx(path: Path) -> Path:
    """Batch fixed at 1, only a time axis S dynamic: inputs [1, 1, S, 32] and [1, 2, S, 96], outputs along S."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [32, 4], rng.standard_normal((32, 4)).astype(np.float32).ravel())
    v = helper.make_tensor("v", TensorProto.FLOAT, [96, 4], rng.standard_normal((96, 4)).astype(np.float32).ravel())
    nodes = [helper.make_node("MatMul", ["a", "w"], ["ya"]), helper.make_node("MatMul", ["b", "v"], ["yb"]),
             helper.make_node("ReduceSum", ["yb"], ["ys"], keepdims=1, axes=[1]),
             helper.make_node("Add", ["ya", "ys"], ["y"])]
    graph = helper.make_graph(
        nodes, "fixed_batch_time",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 1, "S", 32]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2, "S", 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "S", 4])], initializer=[w, v])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _signature(path: Path) -> Signature:
    import onnx

    from modelpack.frameworks import onnx as onnxw

    return onnxw.signature(onnx.load(str(path)))


def test_a_time_axis_shared_by_the_inputs_is_not_the_batch(tmp_path: Path) -> None:
    signature = _signature(_fixed_batch_onnx(tmp_path / "m.onnx"))
    assert [signature.batch_axis(n) for n in ("a", "b")] == [0, 0]
    assert signature.fixed_batch and not signature.simple_batch
    # The names survive the manifest round trip, so a package knows it too.
    again = Signature.from_dict(signature.to_dict())
    assert again.fixed_batch and again.batch_axis("b") == 0


def test_a_fixed_batch_model_serves_one_long_request_and_evaluates_along_examples(tmp_path: Path) -> None:
    model = _fixed_batch_onnx(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    # Eval data: 5 examples of 40 steps each, stacked along the batch axis (each runs as its own call).
    np.savez(tmp_path / "eval.npz", a=rng.standard_normal((5, 1, 40, 32)).astype(np.float32),
             b=rng.standard_normal((5, 2, 40, 96)).astype(np.float32))
    out = tmp_path / "pkg"
    result = run_cli("optimize", model, "-o", out, "-q", "--eval-data", tmp_path / "eval.npz", "export")
    assert result.exit_code == 0, result.output
    import json

    manifest = json.loads((out / "modelpack.json").read_text())
    assert manifest["lineage"]["evaluation"]["examples"] == 5  # examples, not 40 time steps
    steps = 100  # more than --max-batch-size: time steps are not examples
    a = rng.standard_normal((1, 1, steps, 32)).astype(np.float32)
    b = rng.standard_normal((1, 2, steps, 96)).astype(np.float32)
    with serve_in_process(out, max_batch_size=32) as client:
        body = {"inputs": [{"name": "a", "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()},
                           {"name": "b", "shape": list(b.shape), "datatype": "FP32", "data": b.ravel().tolist()}]}
        response = client.post("/v2/models/m/infer", json=body)
    assert response.status_code == 200, response.text
    found = response.json()["outputs"][0]
    assert found["shape"] == [1, 1, steps, 4]


def test_the_recurrent_state_model_keeps_its_batch_on_axis_1() -> None:
    """Silero VAD's shape as the corpus ships it: input [batch, sequence], state [2, batch, 128], sr a scalar."""
    from modelpack.signature import TensorSpec

    signature = Signature(
        (TensorSpec.make("input", "float32", [None, None], ["batch", "sequence"]),
         TensorSpec.make("state", "float32", [2, None, 128], ["", "batch", ""]),
         TensorSpec.make("sr", "int64", [])),
        (TensorSpec.make("output", "float32", [None, 1], ["batch", ""]),
         TensorSpec.make("stateN", "float32", [None, None, None], ["AddstateN_dim_0", "batch", "AddstateN_dim_2"])))
    assert [signature.batch_axis(n) for n in ("input", "state", "sr")] == [0, 1, None]
    assert not signature.fixed_batch and not signature.simple_batch


@pytest.mark.corpus
def test_the_corpus_recurrent_state_model() -> None:
    import corpus

    signature = _signature(corpus.get("silero-vad").path)
    assert [signature.batch_axis(n) for n in ("input", "state", "sr")] == [0, 1, None]


def test_the_user_states_the_batch_axis_when_the_graph_cannot(tmp_path: Path) -> None:
    model = _fixed_batch_onnx(tmp_path / "m.onnx")
    signature = _signature(model)
    stated = signature.with_batch_axes(parse_batch_axes(["a=none", "b=2"], signature))
    assert stated.batch_axis("a") is None and stated.batch_axis("b") == 2
    assert Signature.from_dict(stated.to_dict()).batch_axis("b") == 2
    with pytest.raises(ValueError, match="INPUT one of: a, b"):
        parse_batch_axes(["c=0"], signature)
    bad = run_cli("optimize", model, "-o", tmp_path / "pkg", "--batch-axis", "a=7", "export")
    assert bad.exit_code == 2 and "--batch-axis 'a=7'" in bad.output
    ok = run_cli("optimize", model, "-o", tmp_path / "pkg", "-q", "--batch-axis", "a=none", "--batch-axis", "b=none",
                 "export")
    assert ok.exit_code == 0, ok.output
    import json

    manifest = json.loads((tmp_path / "pkg" / "modelpack.json").read_text())
    assert manifest["signature"]["batch_axes"] == {"a": None, "b": None}
