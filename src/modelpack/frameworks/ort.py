"""onnxruntime's model tools: int8 quantization (dynamic, static QDQ), float16, offline graph optimization.

Needs only the core dependencies: no TensorFlow here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..data import Dataset
from ..errors import StageFailed

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def _quiet() -> None:
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.getLogger("root").setLevel(logging.ERROR)


def quantize_dynamic(src: Path, out: Path, per_channel: bool = False) -> list[str]:
    """Weights to int8, activations quantized at run time. Returns notes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic as ort_dynamic

    _quiet()
    notes: list[str] = []
    ort_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
    if not _runs(out):
        # onnxruntime's CPU kernels lack ConvInteger for int8 weights: keep Conv in float.
        ort_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                    op_types_to_quantize=["MatMul", "Gemm", "Attention", "LSTM", "GRU"])
        notes.append("Conv stays float: onnxruntime has no int8 ConvInteger kernel on this CPU; "
                     "use --method static for int8 convolutions")
    return notes


class _Reader:
    """onnxruntime's CalibrationDataReader over a Dataset, in small batches."""

    def __init__(self, data: Dataset, names: dict[str, str], batch: int = 16) -> None:
        self._data = data
        self._names = names
        self._batch = batch
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        # Every batch the same size: the histogram calibrators stack them.
        n = len(self._data)
        usable = n - n % self._batch if n >= self._batch else n
        for start in range(0, usable, self._batch):
            yield {self._names[k]: v[start:start + self._batch] for k, v in self._data.inputs.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None


def quantize_static(src: Path, out: Path, work: Path, calib: Dataset, method: str = "minmax",
                    per_channel: bool = False) -> list[str]:
    """Static int8 in QDQ format: quant_pre_process, then calibrate on `calib`."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static as ort_static)

    _quiet()
    pre = work / f"{out.stem}.pre.onnx"
    notes = []
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
    except Exception as exc:  # pre-processing is an optimisation; quantize without it if it fails
        notes.append(f"quant_pre_process skipped: {str(exc).splitlines()[0][:120]}")
        pre = src
    import onnxruntime as ort

    names = {i.name: i.name for i in ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()}

    class Reader(_Reader, CalibrationDataReader):
        pass

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    batch = 16 if method == "minmax" else 1
    ort_static(str(pre), str(out), Reader(calib, {k: names.get(k, k) for k in calib.inputs}, batch),
               quant_format=QuantFormat.QDQ, per_channel=per_channel, activation_type=QuantType.QInt8,
               weight_type=QuantType.QInt8, calibrate_method=methods[method],
               extra_options={"CalibTensorRangeSymmetric": method != "minmax"} if method == "percentile" else None)
    return notes


def to_float16(src: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    _quiet()
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(out))


def optimize_graph(src: Path, out: Path, level: str) -> tuple[int, int]:
    """Offline graph optimization (constant folding and fusions), saved as a portable model.

    Returns the node counts before and after. `extended` fusions are CPU-specific but
    saved with standard and com.microsoft ops, which onnxruntime anywhere can load.
    """
    import onnx
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[level]
    opts.optimized_model_filepath = str(out)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    before = len(onnx.load(str(src), load_external_data=False).graph.node)
    after = len(onnx.load(str(out), load_external_data=False).graph.node)
    return before, after


def _runs(path: Path) -> bool:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {}
        for i in session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
            dtype = np.float32 if "float" in i.type else np.int64
            feeds[i.name] = np.zeros(shape, dtype)
        session.run(None, feeds)
        return True
    except Exception:
        return False


def check_loads(path: Path, stage: str) -> None:
    if not _runs(path):
        raise StageFailed(stage, f"onnxruntime cannot run the model written to {path.name}.")


def summary_counts(path: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {"nodes": len(model.graph.node)}
