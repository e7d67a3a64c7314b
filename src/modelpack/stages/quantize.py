"""The `quantize` stage: int8 and float16 for TFLite (from Keras/SavedModel) and ONNX (onnxruntime), and QAT."""

from __future__ import annotations

from typing import Any

import click
import numpy as np

from ..data import Dataset
from ..errors import StageFailed, UsageError, reason
from ..formats import ModelRef, Repr
from . import Option, Stage, StageContext, StageResult
from .fine_tuning import FINE_TUNING, FineTuningParams

METHODS = ("int8", "dynamic", "static", "float16", "qat")
OBJECTIVES = ("latency", "size")
TUNE_BATCHES = (1, 8)  # the latency objective must beat float at batch 1 and at the largest benchmarked batch
CODECS = ("deflate", "lzma", "bzip2")  # what the size objective tries for the archive
SLOWER = 1.05  # a quantized model this much slower than float (median latency) earns a warning
SPEED_BUDGET_S = 3.0  # timing float against quantized stops after this long (and at least 5 rounds)
TUNE_BUDGET_S = 6.0  # ... and timing the int8 candidates


class QuantizeParams(FineTuningParams):
    method: str
    target_cosine: float
    target_agreement: float
    target: str
    calib_data: str | None
    calib_samples: int
    calibration: str
    per_channel: bool
    objective: str | None
    require_quantized: bool


class QuantizeStage(Stage[QuantizeParams]):
    params_type = QuantizeParams
    name = "quantize"
    help = ("Quantize to int8 (tuned per model by default; or dynamic, static, QAT) or float16: ONNX via "
            "onnxruntime, Keras/SavedModel to TFLite.")
    accepts = (Repr.KERAS, Repr.SAVEDMODEL, Repr.ONNX)
    options = (
        Option("method", click.Choice(METHODS), default="int8",
               help="int8: measure onnxruntime's int8 recipes on this model and keep the fastest that stays "
                    "faithful (TFLite: dynamic-range int8); dynamic: int8 weights; static: full int8 with "
                    "calibration; float16; qat: quantization-aware training (Keras, needs --train-data)."),
        Option("target-cosine", click.FloatRange(-1, 1), default=0.98,
               help="int8: the fidelity a recipe must keep: mean cosine similarity of every float output."),
        Option("target-agreement", click.FloatRange(0, 100), default=98.0,
               help="int8: ... and top-1 agreement with the float model, %, for class scores."),
        Option("target", click.Choice(["auto", "onnx", "tflite"]), default="auto",
               help="Runtime to quantize for; auto keeps ONNX as ONNX and turns Keras/SavedModel into TFLite."),
        Option("calib-data", click.Path(dir_okay=False),
               help="An .npz (array x) for static calibration; else a sample of --train-data or --eval-data."),
        Option("calib-samples", click.IntRange(1, 100000), default=128, help="Calibration samples to use."),
        Option("calibration", click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
               help="ONNX static calibration method."),
        Option("per-channel", is_flag=True, default=False, help="ONNX: per-channel weight scales."),
        Option("objective", click.Choice(OBJECTIVES),
               help="int8: latency keeps the fastest faithful candidate and never a model slower than the float "
                    "ONNX (at batch 1 and 8); size keeps the smallest faithful one, counting the archive codec.  "
                    "[default: the pipeline's --objective, else latency]"),
        Option("require-quantized", is_flag=True, default=False,
               help="int8: keep an int8 model even when none beats float under the latency objective."),
        *FINE_TUNING,
    )

    def accepts_for(self, params: QuantizeParams) -> tuple[Repr, ...]:
        if params.method == "qat":
            return (Repr.KERAS,)
        if params.target == "onnx":
            return (Repr.ONNX,)
        if params.target == "tflite":
            return (Repr.KERAS, Repr.SAVEDMODEL)
        return self.accepts

    def plan(self, params: QuantizeParams, rep: Repr) -> Repr:
        if params.method == "qat" and not params.train_data:
            raise UsageError("stage 'quantize': --method qat needs --train-data FILE.npz (arrays x and y).")
        if params.method == "qat" and params.target == "onnx":
            raise UsageError("stage 'quantize': --method qat writes TFLite; use --target tflite or auto.")
        return Repr.ONNX if rep is Repr.ONNX else Repr.TFLITE

    def run(self, model: ModelRef, params: QuantizeParams, ctx: StageContext) -> StageResult:
        method = params.method
        notes: list[str] = []
        metrics: dict[str, Any] = {"method": method}
        if model.rep is Repr.ONNX:
            out = _onnx(model, params, ctx, notes, metrics)
            baseline = model
        else:
            out = _tflite(model, params, ctx, notes)
            baseline = ctx.convert(ctx.convert(model, Repr.SAVEDMODEL), Repr.TFLITE)
        metrics["runtime"] = str(out.rep)
        metrics.update(_speed(baseline, out, ctx, notes))
        return StageResult(model=out, metrics=metrics, notes=notes, archive_compression=metrics.get("archive_codec"))


def calibration_data(params: QuantizeParams, ctx: StageContext) -> Dataset:
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
    n = min(params.calib_samples, len(data))
    order = np.sort(np.random.default_rng(0).permutation(len(data))[:n])
    picked = data.take(order)
    return Dataset(picked.inputs, None, data.path, data.axes)


def _onnx(model: ModelRef, params: QuantizeParams, ctx: StageContext, notes: list[str],
          metrics: dict[str, Any]) -> ModelRef:
    from ..frameworks import ort

    method = params.method
    if method == "int8":
        return _int8(model, params, ctx, notes, metrics)
    out = ctx.scratch(f"model.{method}.onnx")
    if method == "dynamic":
        notes += ort.quantize_dynamic(model.path, out, per_channel=params.per_channel, feeds=ctx.probe)
    elif method == "static":
        calib = calibration_data(params, ctx)
        ctx.note(f"calibrating on {len(calib)} samples ({params.calibration})")
        notes += ort.quantize_static(model.path, out, ctx.workdir, calib, params.calibration, params.per_channel)
    else:
        ort.to_float16(model.path, out)
    ort.check_loads(out, "quantize", ctx.probe)
    for line in notes:
        ctx.note(line)
    return ModelRef(Repr.ONNX, out)


def _int8(model: ModelRef, params: QuantizeParams, ctx: StageContext, notes: list[str],
          metrics: dict[str, Any]) -> ModelRef:
    """Measure onnxruntime's int8 recipes on this model; keep what the objective asks for.

    Latency: the fastest that meets the fidelity target, and never slower than float (at batch 1 and 8,
    one thread): when no int8 recipe beats it, float itself (with onnxruntime's offline optimizations when
    those win). Size: the smallest archive member that meets the target."""
    from ..evaluation import fidelity, token_mask
    from ..frameworks import int8, ort
    from ..runtimes import load_runner
    from ..timing import interleaved_latencies

    objective = params.objective or getattr(ctx, "objective", None) or "latency"
    metrics["objective"] = objective
    has_data = bool(params.calib_data or params.train_data or ctx.eval_data is not None)
    examples = ctx.examples if ctx.examples is not None else Dataset(ctx.probe, None)
    if has_data:
        calib = calibration_data(params, ctx)
    else:
        # Synthetic calibration: static int8 is often the fast recipe for convolutions, so it is measured too.
        calib = Dataset(examples.inputs, None, None, examples.axes)
        notes.append("no calibration data (--calib-data, --train-data or --eval-data): static int8 was calibrated "
                     f"on {len(calib)} synthetic examples")
    batches = [b for b in TUNE_BATCHES if b == 1 or ctx.signature.simple_batch]
    feeds = {b: _batch_feeds(examples, b) for b in batches}
    reference = ctx.outputs(model)
    timed_at: dict[str, Any] = {"batches": batches, "threads": 1,
                "shapes": {b: {k: list(v.shape) for k, v in f.items()} for b, f in feeds.items()}}
    metrics["tuned_at"] = timed_at

    mask = token_mask(ctx.examples.inputs if ctx.examples is not None else None)

    def measure(path: Any) -> tuple[float | None, float | None]:
        found = fidelity(reference, ctx.outputs(ModelRef(Repr.ONNX, path)), mask)
        return found.get("cosine"), found.get("top1_agreement")

    per_batch: dict[Any, dict[int, float]] = {}

    def time_all(paths: list[Any]) -> list[float]:
        # One intra-op thread: the ranking holds on a shared, busy machine, where a thread pool's spinning does not.
        # Each candidate's speedup is its worst over the batches: it must win at every one.
        runners = [load_runner(model, ctx.signature, threads=1)] + [
            load_runner(ModelRef(Repr.ONNX, p), ctx.signature, threads=1) for p in paths]
        worst = [float("inf")] * len(paths)
        for batch in batches:
            samples = interleaved_latencies(runners, feeds[batch], iterations=60, budget_s=TUNE_BUDGET_S)
            base = float(np.median(samples[0]))
            for index, (path, s) in enumerate(zip(paths, samples[1:])):
                ratio = base / float(np.median(s))
                per_batch.setdefault(str(path), {})[batch] = round(ratio, 3)
                worst[index] = min(worst[index], ratio)
        return worst

    target = int8.Target(params.target_cosine, params.target_agreement)
    work = ctx.scratch("int8")
    work.mkdir()
    chosen, tried, found_notes = int8.tune(model.path, work, calib, feeds[1], measure, time_all, target, ctx.note)
    notes += found_notes
    shapes = ", ".join(f"{k} {v}" for k, v in timed_at["shapes"][1].items())
    where = f"batch {' and '.join(map(str, batches))}, 1 thread, inputs at batch 1: {shapes}"
    if objective == "latency" and not params.require_quantized and (chosen.speedup or 0.0) <= 1.0:
        optimized = work / "float-optimized.onnx"
        plain = _float_candidate(optimized, model.path)
        if plain.error is None:
            plain.cosine, plain.top1_agreement = measure(optimized)
            plain.meets_target = target.met(plain.cosine, plain.top1_agreement)
            int8._time([plain], time_all)
        tried.append(plain)
        keep_optimized = plain.error is None and plain.meets_target and (plain.speedup or 0.0) > 1.0
        chosen = plain if keep_optimized else int8.Candidate("float, as given", "float", speedup=1.0)
        if not keep_optimized:
            chosen.path = model.path
            tried.append(chosen)
        metrics["method"] = "float kept"
        notes.append(f"no int8 recipe beat float ({where}): kept {chosen.name}; --require-quantized keeps int8 anyway")
        ctx.note(notes[-1])
    elif objective == "size":
        chosen = _smallest(tried, chosen, ctx, metrics, notes)
    for c in tried:
        if c.path is not None and str(c.path) in per_batch:
            c.speedup_by_batch = per_batch[str(c.path)]
    metrics["chosen"] = chosen.name
    metrics["candidates"] = [dict(c.record(), chosen=c is chosen) for c in tried]
    if chosen.method != "float":
        why = {"latency": "the fastest that met the target", "size": "the smallest that met the target"}[objective]
        if not chosen.meets_target:
            why = "none met the target; the fastest of those closest"
        notes.append(f"int8 recipe: {chosen.name} ({why}: cosine ≥ {target.cosine:g}, agreement ≥ "
                     f"{target.agreement:g}%; {chosen.speedup or 0:.2f}× float speed at {where})")
        ctx.note(notes[-1])
    out = ctx.scratch("model.int8.onnx" if chosen.method != "float" else "model.onnx")
    assert chosen.path is not None
    from ..package.dir import copy_artifact

    copy_artifact(chosen.path, out)  # with its external data, when it has any
    ort.check_loads(out, "quantize", ctx.probe)
    return ModelRef(Repr.ONNX, out)


def _float_candidate(out: Any, src: Any) -> Any:
    """Float with onnxruntime's offline optimizations (constant folding, fusions) as a candidate."""
    from ..frameworks import int8, ort

    candidate = int8.Candidate("float, onnxruntime offline optimizations (extended)", "float", path=out)
    try:
        ort.optimize_graph(src, out, "extended")
        ort.check_loads(out, "quantize")
    except Exception as exc:  # an optimization that does not apply is a measured outcome
        candidate.error = reason(exc, 200)
    return candidate


def _smallest(tried: list[Any], fastest: Any, ctx: StageContext, metrics: dict[str, Any], notes: list[str]) -> Any:
    """The size objective: the faithful candidate whose archive member is smallest with the best codec."""
    from ..package.archive import compressed_size

    faithful = [c for c in tried if c.error is None and c.meets_target and c.path is not None] or [fastest]
    best, best_size, best_codec = fastest, None, "deflate"
    for c in faithful:
        for codec in CODECS:
            size = compressed_size(c.path, codec)
            if best_size is None or size < best_size:
                best, best_size, best_codec = c, size, codec
    metrics["archive_codec"] = best_codec
    metrics["archive_bytes"] = best_size
    notes.append(f"size objective: {best.name}, {best_size} bytes in a {best_codec} archive")
    ctx.note(notes[-1])
    return best


def _batch_feeds(examples: Dataset, batch: int) -> dict[str, np.ndarray]:
    """`batch` examples (repeated when there are fewer), each input along its own batch axis."""
    picked = examples.take(np.arange(batch) % max(len(examples), 1))
    return {k: np.ascontiguousarray(v) for k, v in picked.inputs.items()}


def _tflite(model: ModelRef, params: QuantizeParams, ctx: StageContext, notes: list[str]) -> ModelRef:
    from ..frameworks import tf as tfw
    from ..pipeline.convert import savedmodel_to_tflite, scratch

    tf = tfw.tensorflow()
    method = params.method
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
    out = scratch(ctx.workdir, f"model.{method}.tflite")
    return savedmodel_to_tflite(saved, out, ctx.signature, 0, ctx.safe, configure)


def _qat(model: ModelRef, params: QuantizeParams, ctx: StageContext, notes: list[str]) -> ModelRef:
    from ..frameworks import tf as tfw
    from ..frameworks import tfmot
    from .fine_tuning import training_from

    tf = tfw.tensorflow()
    training = training_from(params, ctx)
    if training is None:
        raise UsageError("stage 'quantize': --method qat trains the model: give --train-data FILE.npz (x and y).")
    tf_model = tfmot.load_tf_keras(model, ctx.safe, ctx.probe, ctx.note)
    q_model = tfmot.quantize_aware(tf_model, training, ctx.note)
    out = ctx.scratch("model.qat.tflite")
    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(q_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        out.write_bytes(converter.convert())
    except Exception as exc:
        raise StageFailed("quantize", f"TFLite conversion of the QAT model failed: {reason(exc, 200)}") from exc
    notes.append(f"quantization-aware training for {training.epochs} epochs, then int8 TFLite")
    return ModelRef(Repr.TFLITE, out)


def _speed(baseline: ModelRef, quantized: ModelRef, ctx: StageContext, notes: list[str]) -> dict[str, Any]:
    """Median batch-1 latency of the float and quantized models, timed interleaved; warn when slower."""
    from ..runtimes import load_runner
    from ..timing import interleaved_latencies

    examples = ctx.examples if ctx.examples is not None else Dataset(ctx.probe, None)
    feeds = examples.head(1).inputs
    runners = [load_runner(baseline, ctx.signature), load_runner(quantized, ctx.signature)]
    samples = interleaved_latencies(runners, feeds, iterations=200, budget_s=SPEED_BUDGET_S)
    float_ms, quant_ms = (float(np.median(s)) for s in samples)
    found: dict[str, Any] = {"float_p50_ms": round(float_ms, 4), "quantized_p50_ms": round(quant_ms, 4),
                             "speedup": round(float_ms / quant_ms, 3) if quant_ms else None,
                             "timed_calls": len(samples[0])}
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
    found["timed_at"] = {"batch": 1, "threads": "onnxruntime default", "shapes": {k: list(v.shape) for k, v in feeds.items()}}
    ctx.note(f"timed float against quantized: {len(samples[0])} interleaved batch-1 calls each, onnxruntime's "
             f"default threads, inputs {shapes} (at most {SPEED_BUDGET_S:g} s, at least 5 calls)")
    if quant_ms > float_ms * SLOWER:
        found["slower_than_float"] = True
        notes.append(f"warning: the quantized model is {quant_ms / float_ms:.2f}x slower than float on this CPU "
                     f"({quant_ms:.3f} ms vs {float_ms:.3f} ms median, batch 1, inputs {shapes})")
        ctx.note(notes[-1])
    return found
