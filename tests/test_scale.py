"""Conversions in child processes, the lean tf2onnx path, bounded timing: what keeps a big model's run lean.

The memory and wall-time targets themselves are measured in benchmarks/scale_bench.py, not here."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from modelpack import errors
from modelpack.pipeline import isolation


def _kill_myself() -> None:
    """Run in a child: die the way the out-of-memory killer kills."""
    os.kill(os.getpid(), signal.SIGKILL)


def _fail_with_input_error(path: str) -> None:
    raise errors.InputError(f"input '{path}': not a model.")


def test_child_returns_results_and_rebuilds_domain_errors(tmp_path: Path) -> None:
    from modelpack.formats import Repr, detect

    keras_model = Path(__file__).parent.parent / "examples" / "digits" / "model.keras"
    assert isolation.call_spawned("detect", "convert", detect, keras_model).rep is Repr.KERAS
    with pytest.raises(errors.InputError, match="not a model") as caught:
        isolation.call_spawned("a failing step", "convert", _fail_with_input_error, str(tmp_path / "x"))
    assert caught.value.exit_code == 2


def test_a_child_killed_by_a_signal_is_a_failed_stage() -> None:
    with pytest.raises(errors.StageFailed, match=r"stage 'convert' failed: .*the toy step was killed by SIGKILL "
                                                 r"\(SIGKILL is often the out-of-memory killer\)"):
        isolation.call_spawned("the toy step", "convert", _kill_myself)


@pytest.mark.parametrize(("mode", "size", "expected"), [
    ("auto", isolation.THRESHOLD_BYTES - 1, False), ("auto", isolation.THRESHOLD_BYTES, True),
    ("always", 1, True), ("never", 10**12, False),
])
def test_when_conversions_go_to_a_child(monkeypatch: pytest.MonkeyPatch, mode: str, size: int,
                                        expected: bool) -> None:
    monkeypatch.setenv(isolation.CONVERSIONS_ENV, mode)
    assert isolation.spawn_wanted(size) is expected


def test_export_in_a_child_matches_export_in_process(models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = models["keras3"]
    outputs = {}
    for mode in ("always", "never"):
        monkeypatch.setenv(isolation.CONVERSIONS_ENV, mode)
        out = tmp_path / mode
        result = run_cli("optimize", model.path, "-o", out, "--eval-data", model.eval_data, "export",
                         "--format", "onnx", "--format", "tflite")
        assert result.exit_code == 0, result.output
        assert ("in a child process" in result.output) is (mode == "always")
        manifest = json.loads((out / "modelpack.json").read_text())
        assert {a["format"] for a in manifest["artifacts"]} == {"onnx", "tflite"}
        assert all(a["parity"]["max_abs_diff"] <= 1e-4 for a in manifest["artifacts"])
        assert not list(tmp_path.glob(f".{mode}.tmp-*")), "scratch left behind"
        import onnxruntime as ort

        session = ort.InferenceSession(str(out / "model.onnx"))
        x = np.load(model.eval_data)["x"][:8]
        outputs[mode] = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(outputs["always"], outputs["never"], atol=1e-6)


def test_lean_tf2onnx_path_converts_like_the_careful_one(models, tmp_path: Path) -> None:
    """The lean path freezes without grappler and skips tf2onnx's defensive copies; once onnxruntime's basic
    optimizer has folded what grappler would have, the model must answer the same and be no bigger a graph."""
    import onnx
    import onnxruntime as ort
    from tf2onnx import convert as tf2onnx_convert
    from tf2onnx import tf_loader

    from modelpack.formats import Repr, detect
    from modelpack.frameworks import tf2onnx as lean
    from modelpack.inspection import signature_of
    from modelpack.pipeline import convert

    source = detect(models["keras3"].path)
    signature = signature_of(source)
    saved = convert.to(source, Repr.SAVEDMODEL, tmp_path, signature)
    fast = convert.savedmodel_to_onnx(saved, tmp_path / "fast.onnx", signature, 17, True)
    graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
        str(saved.path), None, None, None, ["serving_default"], None, False,
        return_initialized_tables=True, return_tensors_to_rename=True)
    careful, _ = tf2onnx_convert._convert_common(graph_def, name=str(saved.path), opset=17, input_names=inputs,
                                                 output_names=outputs, tensors_to_rename=renames,
                                                 initialized_tables=tables)
    onnx.save(careful, str(tmp_path / "careful.onnx"))
    assert len(onnx.load(str(fast.path)).graph.node) <= len(careful.graph.node)
    x = np.load(models["keras3"].eval_data)["x"][:16]
    answers = []
    for path in (fast.path, tmp_path / "careful.onnx"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        answers.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    np.testing.assert_allclose(answers[0], answers[1], atol=1e-5)
    assert os.environ.get(lean.CATCH_ERRORS) is None, "the lean path must not leak its setting"
    assert not (tmp_path / "fast.onnx.folded").exists()


def test_timing_budget_bounds_the_rounds() -> None:
    from modelpack.timing import interleaved_latencies

    class Counting:
        calls = 0

        def run(self, feeds: dict) -> dict:
            self.calls += 1
            return feeds

    runners = [Counting(), Counting()]
    samples = interleaved_latencies(runners, {}, iterations=200, warmup=5, budget_s=0.0, min_iterations=7)
    assert [len(s) for s in samples] == [7, 7]
    unbounded = interleaved_latencies([Counting()], {}, iterations=30, warmup=2)
    assert len(unbounded[0]) == 30


def test_the_size_worker_thread_leaves_signals_to_the_main_thread() -> None:
    """Linux hands a process's SIGINT to any thread not blocking it; a worker that took it would leave the main
    thread asleep in a stage, and Ctrl-C (or the parent's forwarded SIGINT) would wait for the stage to end."""
    import threading

    from modelpack.pipeline.writer import _background

    seen: list[set[signal.Signals]] = []

    def worker() -> None:
        _background()
        seen.append(signal.pthread_sigmask(signal.SIG_BLOCK, set()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert {signal.SIGINT, signal.SIGTERM} <= seen[0]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the main thread still takes it
