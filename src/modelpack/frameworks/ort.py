"""onnxruntime's model tools: int8 quantization (dynamic, static QDQ), float16, offline graph optimization.

Needs only the core dependencies: no TensorFlow here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import StageFailed, reason


def _quiet() -> None:
    import onnxruntime

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.getLogger("root").setLevel(logging.ERROR)
    onnxruntime.set_default_logger_severity(4)  # the calibrators' own sessions log run errors we handle


DYNAMIC_OPS = ("MatMul", "Gemm", "Attention", "LSTM", "GRU")  # what quantize_dynamic has CPU kernels for, Conv aside


def quantize_dynamic(src: Path, out: Path, per_channel: bool = False,
                     feeds: dict[str, np.ndarray] | None = None, exclude: list[str] | None = None,
                     op_types: list[str] | None = None, reduce_range: bool = False) -> list[str]:
    """Weights to int8, activations quantized at run time; `exclude` names nodes kept in float, `op_types` (when
    given) the only op types quantized, `reduce_range` 7-bit weights. Returns notes."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_dynamic

    _quiet()
    notes: list[str] = []
    ort_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=per_channel, reduce_range=reduce_range,
                op_types_to_quantize=list(op_types or []), nodes_to_exclude=list(exclude or []))
    if _run_error(out, feeds) is not None:
        # onnxruntime's CPU kernels lack ConvInteger for int8 weights: keep Conv in float.
        kept = [t for t in DYNAMIC_OPS if op_types is None or t in op_types]
        if not kept:
            raise ValueError(f"dynamic int8 of {', '.join(op_types or [])} only: onnxruntime has no int8 "
                             "ConvInteger kernel on this CPU")
        ort_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                    reduce_range=reduce_range, op_types_to_quantize=kept, nodes_to_exclude=list(exclude or []))
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
            chunk = self._data.take(slice(start, start + self._batch))
            yield {self._names[k]: v for k, v in chunk.inputs.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None


def quantize_static(src: Path, out: Path, work: Path, calib: Dataset, method: str = "minmax",
                    per_channel: bool = False, quant_format: str = "QDQ", activations: str = "uint8",
                    exclude: list[str] | None = None, op_types: list[str] | None = None,
                    reduce_range: bool = False) -> list[str]:
    """Static int8: quant_pre_process, then calibrate on `calib`; `op_types` (when given) the only op types
    quantized, `reduce_range` 7-bit weights.

    Activations are uint8 by default: onnxruntime's x86 int8 kernels are built for uint8 activations
    with int8 weights (U8S8); with int8 activations static int8 ran barely faster than float here."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
    )
    from onnxruntime.quantization import quantize_static as ort_static

    _quiet()
    pre = work / f"{out.stem}.pre.onnx"
    notes = []
    try:
        # onnxruntime's symbolic shape inference drops debug files into the working directory when it gives
        # up (sym_shape_infer_temp.onnx and its data): let it drop them into our scratch space instead.
        with contextlib.chdir(work):
            quant_pre_process(str(Path(src).absolute()), str(pre.absolute()), skip_symbolic_shape=False)
    except Exception as exc:  # pre-processing is an optimisation; quantize without it if it fails
        notes.append(f"quant_pre_process skipped: {reason(exc, 120)}")
        pre = src
    import onnxruntime as ort

    names = {i.name: i.name for i in ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()}
    pre, excluded = _name_nodes_and_find_heads(pre, work / f"{out.stem}.named.onnx")
    if excluded:
        notes.append("kept in float (they produce the model's outputs, e.g. a final Softmax whose int8 steps of "
                     f"1/255 would tie top-1 scores): {', '.join(excluded)}")

    class Reader(_Reader, CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no types
        pass

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    batch = 16 if method == "minmax" else 1
    extra: dict[str, Any] = {"CalibTensorRangeSymmetric": True} if method == "percentile" else {}

    def quantize() -> None:
        ort_static(str(pre), str(out), Reader(calib, {k: names.get(k, k) for k in calib.inputs}, batch),
                   quant_format=getattr(QuantFormat, quant_format), per_channel=per_channel,
                   activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                   weight_type=QuantType.QInt8, calibrate_method=methods[method],
                   nodes_to_exclude=excluded + list(exclude or []), op_types_to_quantize=list(op_types or []),
                   reduce_range=reduce_range, extra_options=extra)

    try:
        quantize()
    except ValueError as exc:
        # After `compress --graph extended`, onnxruntime's fused ops (FusedConv, FusedGemm) stay float, so a
        # following Conv or Gemm has no int8 input scale to quantize its bias with: keep such biases float.
        if "quantization scale" not in str(exc) or "bias" not in str(exc):
            raise
        extra["QuantizeBias"] = False
        quantize()
        notes.append("biases kept in float: the graph holds onnxruntime fused ops (from compress --graph extended) "
                     "whose outputs have no int8 scale; quantize before compress --graph for full int8")
    return notes


PASS_THROUGH = ("Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose")


def _name_nodes_and_find_heads(src: Path, out: Path) -> tuple[Path, list[str]]:
    """Give every node a name (quantizers exclude nodes by name) and list the nodes producing graph outputs."""
    import onnx

    model = onnx.load(str(src))
    used = {n.name for n in model.graph.node if n.name}
    changed = False
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
            changed = True
    # Walk back from each graph output through ops that only move or relabel data, to the op that computes it.
    producer = {out: node for node in model.graph.node for out in node.output}
    heads: list[str] = []
    for output in model.graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type in PASS_THROUGH and node.input:
            heads.append(node.name)
            node = producer.get(node.input[0])
        if node is not None:
            heads.append(node.name)
    if not changed:
        return src, heads
    onnx.save(model, str(out))
    return out, heads


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
    from ..package.files import companions

    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[level]
    opts.optimized_model_filepath = str(out)
    opts.log_severity_level = 4  # run errors become exceptions with the message; no log line too
    if companions(src):  # weights in external data stay external, in a file beside the optimized model
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", out.name + ".data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    before = len(onnx.load(str(src), load_external_data=False).graph.node)
    after = len(onnx.load(str(out), load_external_data=False).graph.node)
    return before, after


# onnxruntime's input type strings -> numpy dtypes, for feeding a model we only know from its file.
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
             "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
             "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_}


def _run_error(path: Path, feeds: dict[str, np.ndarray] | None = None) -> str | None:
    """Why onnxruntime cannot load or run the model at `path`, or None when it can.

    With `feeds` (real inputs keyed by the model's own input names) it runs on those; otherwise on
    zeros of each input's own dtype and shape (dynamic dims as 1)."""
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # run errors become exceptions with the message; no log line too
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        if feeds is None:
            feeds = {}
            for i in session.get_inputs():
                shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
                feeds[i.name] = np.zeros(shape, ORT_TYPES.get(i.type, np.float32))
        session.run(None, feeds)
        return None
    except Exception as exc:
        return reason(exc)


def check_loads(path: Path, stage: str, feeds: dict[str, np.ndarray] | None = None) -> None:
    """Raise StageFailed unless onnxruntime loads the model and runs it (on `feeds` when given)."""
    error = _run_error(path, feeds)
    if error is not None:
        raise StageFailed(stage, f"onnxruntime cannot run the model written to {path.name}: {error}")

