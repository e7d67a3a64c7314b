"""The `quantize` stage: int8 and float16 for TFLite (from Keras/SavedModel) and ONNX (onnxruntime), and QAT."""

from __future__ import annotations

from typing import Any

import click
import numpy as np

from ..data import Dataset
from ..errors import StageFailed, UsageError
from ..formats import ModelRef, Repr
from . import FINE_TUNING, Option, Stage, StageContext, StageResult

METHODS = ("dynamic", "static", "float16", "qat")
SLOWER = 1.05  # a quantized model this much slower than float (median latency) earns a warning


class QuantizeStage(Stage):
    name = "quantize"
    help = "Quantize to int8 (dynamic, static or QAT) or float16: ONNX via onnxruntime, Keras/SavedModel to TFLite."
    accepts = (Repr.KERAS, Repr.SAVEDMODEL, Repr.ONNX)
    options = (
        Option("method", click.Choice(METHODS), default="dynamic",
               help="dynamic: int8 weights; static: full int8 with calibration; float16; qat: "
                    "quantization-aware training (Keras, needs --train-data)."),
        Option("target", click.Choice(["auto", "onnx", "tflite"]), default="auto",
               help="Runtime to quantize for; auto keeps ONNX as ONNX and turns Keras/SavedModel into TFLite."),
        Option("calib-data", click.Path(dir_okay=False),
               help="An .npz (array x) for static calibration; else a sample of --train-data or --eval-data."),
        Option("calib-samples", click.IntRange(1, 100000), default=128, help="Calibration samples to use."),
        Option("calibration", click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
               help="ONNX static calibration method."),
        Option("per-channel", is_flag=True, default=False, help="ONNX: per-channel weight scales."),
        *FINE_TUNING,
    )

    def accepts_for(self, params: dict[str, Any]) -> tuple[Repr, ...]:
        if params["method"] == "qat":
            return (Repr.KERAS,)
        if params["target"] == "onnx":
            return (Repr.ONNX,)
        if params["target"] == "tflite":
            return (Repr.KERAS, Repr.SAVEDMODEL)
        return self.accepts

    def plan(self, params: dict[str, Any], rep: Repr) -> Repr:
        if params["method"] == "qat" and not params.get("train_data"):
            raise UsageError("stage 'quantize': --method qat needs --train-data FILE.npz (arrays x and y).")
        if params["method"] == "qat" and params["target"] == "onnx":
            raise UsageError("stage 'quantize': --method qat writes TFLite; use --target tflite or auto.")
        return Repr.ONNX if rep is Repr.ONNX else Repr.TFLITE

    def run(self, model: ModelRef, params: dict[str, Any], ctx: StageContext) -> StageResult:
        method = params["method"]
        notes: list[str] = []
        if model.rep is Repr.ONNX:
            out = _onnx(model, params, ctx, notes)
            baseline = model
        else:
            out = _tflite(model, params, ctx, notes)
            baseline = ctx.convert(ctx.convert(model, Repr.SAVEDMODEL), Repr.TFLITE)
        metrics: dict[str, Any] = {"method": method, "runtime": str(out.rep)}
        metrics.update(_speed(baseline, out, ctx, notes))
        return StageResult(model=out, metrics=metrics, notes=notes)


def calibration_data(params: dict[str, Any], ctx: StageContext) -> Dataset:
    """--calib-data, else a sample of --train-data, else of the global --eval-data; else a clear error."""
    for key, option in (("calib_data", "--calib-data"), ("train_data", "--train-data")):
        if params.get(key):
            data = ctx.dataset(params[key], option)
            break
    else:
        if ctx.eval_data is None:
            raise UsageError("stage 'quantize': --method static needs calibration data: give --calib-data FILE.npz "
                             "(array x), or --train-data, or the global --eval-data.")
        data = ctx.eval_data
    n = min(params["calib_samples"], len(data))
    order = np.random.default_rng(0).permutation(len(data))[:n]
    return Dataset({k: v[order] for k, v in data.inputs.items()}, None, data.path)


def _onnx(model: ModelRef, params: dict[str, Any], ctx: StageContext, notes: list[str]) -> ModelRef:
    from ..frameworks import ort

    method = params["method"]
    out = ctx.scratch(f"model.{method}.onnx")
    if method == "dynamic":
        notes += ort.quantize_dynamic(model.path, out, per_channel=params["per_channel"])
    elif method == "static":
        calib = calibration_data(params, ctx)
        ctx.note(f"calibrating on {len(calib)} samples ({params['calibration']})")
        notes += ort.quantize_static(model.path, out, ctx.workdir, calib, params["calibration"], params["per_channel"])
    else:
        ort.to_float16(model.path, out)
    ort.check_loads(out, "quantize")
    for line in notes:
        ctx.note(line)
    return ModelRef(Repr.ONNX, out)


def _tflite(model: ModelRef, params: dict[str, Any], ctx: StageContext, notes: list[str]) -> ModelRef:
    from ..convert import savedmodel_to_tflite
    from ..frameworks import tf as tfw

    tf = tfw.tensorflow()
    method = params["method"]
    if method == "qat":
        return _qat(model, params, ctx, notes)
    calib = calibration_data(params, ctx) if method == "static" else None

    def configure(converter: Any) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if method == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif calib is not None:
            ctx.note(f"calibrating on {len(calib)} samples")
            names = list(calib.inputs)

            def representative() -> Any:
                for i in range(len(calib)):
                    yield [calib.inputs[name][i:i + 1] for name in names]

            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            notes.append("full-integer int8 kernels; inputs and outputs stay float32")

    saved = ctx.convert(model, Repr.SAVEDMODEL)
    return savedmodel_to_tflite(saved, ctx.workdir, ctx.signature, 0, ctx.safe, configure, f"model.{method}.tflite")


def _qat(model: ModelRef, params: dict[str, Any], ctx: StageContext, notes: list[str]) -> ModelRef:
    from ..frameworks import tf as tfw
    from ..frameworks import tfmot
    from .prune import training_from

    tf = tfw.tensorflow()
    training = training_from(params, ctx)
    tf_model = tfmot.load_tf_keras(model, ctx.safe, ctx.probe, ctx.note)
    q_model = tfmot.quantize_aware(tf_model, training, ctx.note)
    out = ctx.scratch("model.qat.tflite")
    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(q_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        out.write_bytes(converter.convert())
    except Exception as exc:
        raise StageFailed("quantize", f"TFLite conversion of the QAT model failed: {str(exc).splitlines()[0][:200]}")
    notes.append(f"quantization-aware training for {training.epochs} epochs, then int8 TFLite")
    return ModelRef(Repr.TFLITE, out)


def _speed(baseline: ModelRef, quantized: ModelRef, ctx: StageContext, notes: list[str]) -> dict[str, Any]:
    """Median batch-1 latency of the float and quantized models, timed interleaved; warn when slower."""
    from ..runtimes import load_runner
    from ..timing import interleaved_latencies

    feeds = {k: v[:1] for k, v in ctx.probe.items()}
    runners = [load_runner(baseline, ctx.signature), load_runner(quantized, ctx.signature)]
    float_ms, quant_ms = (float(np.median(s)) for s in interleaved_latencies(runners, feeds, iterations=200))
    found: dict[str, Any] = {"float_p50_ms": round(float_ms, 4), "quantized_p50_ms": round(quant_ms, 4),
                             "speedup": round(float_ms / quant_ms, 3) if quant_ms else None}
    if quant_ms > float_ms * SLOWER:
        found["slower_than_float"] = True
        notes.append(f"warning: the quantized model is {quant_ms / float_ms:.2f}x slower than float on this CPU "
                     f"({quant_ms:.3f} ms vs {float_ms:.3f} ms median, batch 1)")
        ctx.note(notes[-1])
    return found
