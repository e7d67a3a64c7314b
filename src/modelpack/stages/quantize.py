"""The `quantize` stage: int8 and float16 for TFLite (from Keras/SavedModel) and ONNX (onnxruntime), and QAT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from ..data import Dataset
from ..errors import StageFailed, UsageError, reason
from ..formats import ModelRef, Repr
from . import Stage, StageContext, StageResult, option
from .fine_tuning import FineTuning, FineTuningParams

METHODS = ("int8", "int4", "dynamic", "static", "float16", "qat")
OBJECTIVES = ("latency", "size")
TUNE_BATCHES = (1, 8)  # the latency objective must beat float at batch 1 and at the largest benchmarked batch
CODECS = ("deflate", "lzma", "bzip2")  # what the size objective tries for the archive
SLOWER = 1.05  # a quantized model this much slower than float (median latency) earns a warning
SPEED_BUDGET_S = 3.0  # timing float against quantized stops after this long (and at least 5 rounds)
TUNE_BUDGET_S = 6.0  # ... and timing the int8 candidates
SESSION_BUDGET_S = 3.0  # ... and the session settings, per batch
# Session settings the latency objective measures on the model it keeps, each against onnxruntime's default
# session of that model; one is recorded (and then applied by serve, predict and benchmark) only when it wins
# by SESSION_GAIN at every timed batch.
# SkipLayerNormFusion off: on all-MiniLM-L6-v2 with dynamic int8 its fused SkipLayerNormalization took a quarter
# of the run (2.36× float without it, 1.74× with it, batch 1, one thread). Timed on one intra-op thread like the
# rest of the tuning: on a shared machine, sessions with thread pools timed in turn mostly measure each other's
# spinning threads (a first run at the default threads put every setting, `extended` included, at 0.35-0.6×).
SESSION_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"execution_mode": "parallel"}, {"graph_optimization_level": "extended"},
    {"graph_optimization_level": "basic"}, {"disabled_optimizers": ["SkipLayerNormFusion"]})
SESSION_GAIN = 1.05
# When no int8 recipe beats float, the float graph with onnxruntime's offline optimizations replaces the input
# only when it wins by this much: it is often larger on disk (folded constants), and a gain within timing noise
# (a 1.001x) once kept a file 19% larger that then timed 0.99x against the input. An int8 recipe must win by as
# much under the latency objective: a 1.01x MatMul-only int8 of ppocr-cls, larger than its input, was noise.
FLOAT_GAIN = 1.05


def keeps_optimized_float(candidate: Any) -> bool:
    """Whether the optimized float graph is kept over the input (the latency objective, no int8 winner)."""
    return candidate.error is None and bool(candidate.meets_target) and (candidate.speedup or 0.0) >= FLOAT_GAIN


class QuantizeParams(FineTuningParams):
    method: str = option(
        click.Choice(METHODS), default="int8",
        help="int8: measure onnxruntime's int8 recipes on this model and keep the fastest that stays "
             "faithful (TFLite: dynamic-range int8); int4: 4-bit weights for MatMul and embedding Gather "
             "(ONNX; block size and accuracy level chosen by measurement); dynamic: int8 weights; static: "
             "full int8 with calibration; float16; qat: quantization-aware training (Keras, needs "
             "--train-data).")
    target_cosine: float = option(
        click.FloatRange(-1, 1), default=0.98,
        help="int8: the fidelity a recipe must keep: mean cosine similarity of every float output.")
    target_agreement: float = option(
        click.FloatRange(0, 100), default=98.0,
        help="int8: ... and top-1 agreement with the float model, %, for class scores.")
    target: str = option(
        click.Choice(["auto", "onnx", "tflite"]), default="auto",
        help="Runtime to quantize for; auto keeps ONNX as ONNX and turns Keras/SavedModel into TFLite.")
    calib_data: str | None = option(
        click.Path(dir_okay=False),
        help="An .npz (array x) for static calibration; else a sample of --train-data or --eval-data.")
    calib_samples: int = option(click.IntRange(1, 100000), default=128, help="Calibration samples to use.")
    calibration: str = option(
        click.Choice(["minmax", "entropy", "percentile"]), default="minmax", help="ONNX static calibration method.")
    per_channel: bool = option(is_flag=True, default=False, help="ONNX: per-channel weight scales.")
    objective: str | None = option(
        click.Choice(OBJECTIVES),
        help="int8: latency keeps the fastest faithful candidate and never a model slower than the float "
             "ONNX (at batch 1 and 8); size keeps the smallest faithful one, counting the archive codec.  "
             "[default: the pipeline's --objective, else latency]")
    require_quantized: bool = option(
        is_flag=True, default=False,
        help="int8: keep an int8 model even when none beats float under the latency objective.")


class QuantizeStage(FineTuning, Stage[QuantizeParams]):
    params_type = QuantizeParams
    name = "quantize"
    help = ("Quantize to int8 (tuned per model by default; or dynamic, static, QAT) or float16: ONNX via "
            "onnxruntime, Keras/SavedModel to TFLite.")
    accepts = (Repr.KERAS, Repr.SAVEDMODEL, Repr.ONNX)

    def accepts_for(self, params: QuantizeParams) -> tuple[Repr, ...]:
        if params.method == "qat":
            return (Repr.KERAS,)
        if params.target == "onnx" or params.method == "int4":
            return (Repr.ONNX,)
        if params.target == "tflite":
            return (Repr.KERAS, Repr.SAVEDMODEL)
        return self.accepts

    def plan(self, params: QuantizeParams, rep: Repr) -> Repr:
        if params.method == "qat" and not params.train_data:
            raise UsageError("stage 'quantize': --method qat needs --train-data FILE.npz (arrays x and y).")
        if params.method == "qat" and params.target == "onnx":
            raise UsageError("stage 'quantize': --method qat writes TFLite; use --target tflite or auto.")
        if params.method == "int4" and params.target == "tflite":
            raise UsageError("stage 'quantize': --method int4 writes ONNX (MatMulNBits); use --target onnx or auto.")
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
        extra = {out.rep: {"session": dict(out.session)}} if out.session else {}
        return StageResult(model=out, metrics=metrics, notes=notes, archive_compression=metrics.get("archive_codec"),
                           artifacts=[out] if extra else [], artifact_metrics=extra)


def calibration_data(params: QuantizeParams, ctx: StageContext) -> Dataset:
    """--calib-data, else a sample of --train-data, else of the global --eval-data; else a clear error."""
    for key, flag in (("calib_data", "--calib-data"), ("train_data", "--train-data")):
        if params.get(key):
            data = ctx.dataset(params[key], flag)
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
    if method == "int4":
        return _int4(model, params, ctx, notes, metrics)
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
    from ..frameworks import int8, ort

    objective = params.objective or getattr(ctx, "objective", None) or "latency"
    metrics["objective"] = objective
    has_data = bool(params.calib_data or params.train_data or ctx.eval_data is not None)
    tuning = _Tuning(model, ctx)
    if has_data:
        calib = calibration_data(params, ctx)
    else:
        # Synthetic calibration: static int8 is often the fast recipe for convolutions, so it is measured too.
        calib = Dataset(tuning.examples.inputs, None, None, tuning.examples.axes)
        notes.append("no calibration data (--calib-data, --train-data or --eval-data): static int8 was calibrated "
                     f"on {len(calib)} synthetic examples")
    metrics["tuned_at"] = tuning.timed_at
    measure, time_all, feeds, per_batch = tuning.measure, tuning.time_all, tuning.feeds, tuning.per_batch
    target = int8.Target(params.target_cosine, params.target_agreement)
    work = ctx.scratch("int8")
    work.mkdir()
    chosen, tried, found_notes = int8.tune(model.path, work, calib, feeds[1], measure, time_all, target, ctx.note)
    notes += found_notes
    where = tuning.where
    if objective == "latency" and not params.require_quantized and (chosen.speedup or 0.0) < FLOAT_GAIN:
        optimized = work / "float-optimized.onnx"
        plain = _float_candidate(optimized, model.path)
        if plain.error is None:
            plain.cosine, plain.top1_agreement = measure(optimized)
            plain.meets_target = target.met(plain.cosine, plain.top1_agreement)
            int8._time([plain], time_all)
        tried.append(plain)
        keep_optimized = keeps_optimized_float(plain)
        chosen = plain if keep_optimized else int8.Candidate("float, as given", "float", speedup=1.0)
        if not keep_optimized:
            chosen.path = model.path
            tried.append(chosen)
        metrics["method"] = "float kept"
        notes.append(f"no int8 recipe beat float by {FLOAT_GAIN - 1:.0%} or more ({where}): kept {chosen.name}; "
                     "--require-quantized keeps int8 anyway")
        ctx.note(notes[-1])
    elif objective == "size":
        from ..frameworks import int4

        # Per-tensor dynamic int8 (Conv kept float where onnxruntime lacks ConvInteger) is often the smallest
        # archive after pruning or clustering, though rarely the fastest: a size candidate only.
        extra = int8.Candidate("dynamic, per-tensor int8 weights", "dynamic", per_channel=False,
                               path=work / "int8-size-dynamic.onnx")
        int8._build_and_check(extra, model.path, work, None, feeds[1], measure, target, notes)
        int8._time([extra], time_all)
        tried.append(extra)
        # ... and the input itself: the size objective never returns a model larger than it was given (weights
        # held in Constant nodes, say, which no quantizer touches).
        tried.append(int8.Candidate("float, as given", "float", path=model.path, speedup=1.0, cosine=1.0,
                                    meets_target=True))
        if int4.applies(model.path):  # int4 weights are a size candidate too, when the model has any to hold
            try:
                tried += int4.tune(model.path, work, feeds[1], measure, time_all, _size_on_disk, target, ctx.note)[1]
            except ValueError as exc:
                notes.append(f"size objective: int4 did not apply ({reason(exc, 200)})")
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
        kind = "int4" if chosen.method == "int4" else "int8"
        notes.append(f"{kind} recipe: {chosen.name} ({why}: cosine ≥ {target.cosine:g}, agreement ≥ "
                     f"{target.agreement:g}%; {chosen.speedup or 0:.2f}× float speed at {where})")
        ctx.note(notes[-1])
    out = ctx.scratch({"float": "model.onnx", "int4": "model.int4.onnx"}.get(chosen.method, "model.int8.onnx"))
    assert chosen.path is not None
    from ..package.dir import copy_artifact

    copy_artifact(chosen.path, out)  # with its external data, when it has any
    ort.check_loads(out, "quantize", ctx.probe)
    settings = _tune_session(out, tuning, notes, metrics) if objective == "latency" else None
    return ModelRef(Repr.ONNX, out, session=settings)


def _tune_session(path: Any, tuning: _Tuning, notes: list[str], metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Time SESSION_CANDIDATES on the kept model against its default session, interleaved, at every tuned batch
    on one thread;
    the best is returned when it wins by SESSION_GAIN at each (else None). Every one is recorded."""
    from ..runtimes import OnnxRunner
    from ..timing import interleaved_latencies

    signature = tuning.ctx.signature

    def time_settings(candidates: tuple[dict[str, Any], ...]) -> list[dict[int, float]]:
        runners = [OnnxRunner(path, signature, threads=1)] + [OnnxRunner(path, signature, threads=1, settings=s)
                                                              for s in candidates]
        by_batch: list[dict[int, float]] = [{} for _ in candidates]
        for batch in tuning.batches:
            samples = interleaved_latencies(runners, tuning.feeds[batch], iterations=60, budget_s=SESSION_BUDGET_S)
            base = float(np.median(samples[0]))
            for found, s in zip(by_batch, samples[1:]):
                found[batch] = round(base / float(np.median(s)), 3)
        return by_batch

    measured: list[dict[str, Any]] = [{"settings": s, "speedup_by_batch": b, "speedup": min(b.values())}
                                      for s, b in zip(SESSION_CANDIDATES, time_settings(SESSION_CANDIDATES))]
    best = max(measured, key=lambda m: m["speedup"])
    split = [m for m in measured if max(m["speedup_by_batch"].values()) >= SESSION_GAIN]
    if best["speedup"] < SESSION_GAIN and split:
        # A setting that won at one batch and not at another: on a shared machine one loop's batch can be noise
        # (SkipLayerNormFusion off on MiniLM once timed 1.03x at batch 1 and 1.44x at batch 8, and 1.33x at batch
        # 1 alone), so the most promising is timed again alone against the default, and that decides.
        again = max(split, key=lambda m: m["speedup"])
        (confirmed,) = time_settings((again["settings"],))
        again.update(first_speedup_by_batch=again["speedup_by_batch"], speedup_by_batch=confirmed,
                     speedup=min(confirmed.values()))
        best = max(measured, key=lambda m: m["speedup"])
    won = best["speedup"] >= SESSION_GAIN
    for m in measured:
        m["chosen"] = won and m is best
    metrics["session_candidates"] = measured
    settings = ", ".join(f"{k}={v}" for k, v in best["settings"].items())
    where = f"batch {' and '.join(map(str, tuning.batches))}, 1 thread, against onnxruntime's default session"
    if won:
        metrics["session"] = best["settings"]
        notes.append(f"session setting: {settings} ({best['speedup']:.2f}× at {where}); recorded in the manifest, "
                     "applied by serve, predict and benchmark")
    else:
        notes.append(f"session settings: none beat the default by {SESSION_GAIN:g}× (best {settings}, "
                     f"{best['speedup']:.2f}× at {where})")
    tuning.ctx.note(notes[-1])
    return dict(best["settings"]) if won else None


class _Tuning:
    """How candidates are judged: fidelity against the float model on the stage's examples, and speed
    against it timed interleaved at batch 1 and 8 (when the model batches), one intra-op thread."""

    def __init__(self, model: ModelRef, ctx: StageContext) -> None:
        from ..evaluation import token_mask

        self.model, self.ctx = model, ctx
        self.examples = ctx.examples if ctx.examples is not None else Dataset(ctx.probe, None)
        self.batches = [b for b in TUNE_BATCHES if b == 1 or ctx.signature.simple_batch]
        self.feeds = {b: _batch_feeds(self.examples, b) for b in self.batches}
        self.reference = ctx.outputs(model)
        self.mask = token_mask(ctx.examples.inputs if ctx.examples is not None else None)
        self.timed_at: dict[str, Any] = {
            "batches": self.batches, "threads": 1,
            "shapes": {b: {k: list(v.shape) for k, v in f.items()} for b, f in self.feeds.items()}}
        shapes = ", ".join(f"{k} {v}" for k, v in self.timed_at["shapes"][1].items())
        self.where = f"batch {' and '.join(map(str, self.batches))}, 1 thread, inputs at batch 1: {shapes}"
        self.per_batch: dict[str, dict[int, float]] = {}

    def measure(self, path: Any) -> tuple[float | None, float | None]:
        from ..evaluation import fidelity

        found = fidelity(self.reference, self.ctx.outputs(ModelRef(Repr.ONNX, path)), self.mask)
        return found.get("cosine"), found.get("top1_agreement")

    def time_all(self, paths: list[Any]) -> list[float]:
        """Each path's speedup over float: its worst over the batches, since it must win at every one."""
        from ..runtimes import load_runner
        from ..timing import interleaved_latencies

        # One intra-op thread: the ranking holds on a shared, busy machine, where a thread pool's spinning does not.
        runners = [load_runner(self.model, self.ctx.signature, threads=1)] + [
            load_runner(ModelRef(Repr.ONNX, p), self.ctx.signature, threads=1) for p in paths]
        worst = [float("inf")] * len(paths)
        for batch in self.batches:
            samples = interleaved_latencies(runners, self.feeds[batch], iterations=60, budget_s=TUNE_BUDGET_S)
            base = float(np.median(samples[0]))
            for index, (path, s) in enumerate(zip(paths, samples[1:])):
                ratio = base / float(np.median(s))
                self.per_batch.setdefault(str(path), {})[batch] = round(ratio, 3)
                worst[index] = min(worst[index], ratio)
        return worst


def _size_on_disk(path: Any) -> int:
    from ..package.files import companions

    return int(sum(p.stat().st_size for p in [path, *companions(path)]))


def _int4(model: ModelRef, params: QuantizeParams, ctx: StageContext, notes: list[str],
          metrics: dict[str, Any]) -> ModelRef:
    """4-bit weights (MatMulNBits, GatherBlockQuantized): the smallest model that meets the fidelity target,
    its speed stated against float and against dynamic int8, all timed in one loop."""
    from ..frameworks import int4, int8, ort
    from ..package.dir import copy_artifact

    if not int4.applies(model.path):
        raise UsageError("stage 'quantize': --method int4 quantizes the constant weights of MatMul and Gather "
                         "nodes, and this model has none; use --method int8.")
    tuning = _Tuning(model, ctx)
    metrics["tuned_at"] = tuning.timed_at
    target = int8.Target(params.target_cosine, params.target_agreement)
    work = ctx.scratch("int4")
    work.mkdir()
    reference = int8.Candidate("int8 reference: dynamic, per-channel int8 weights", "dynamic",
                               path=work / "int8-reference.onnx")
    int8._build_and_check(reference, model.path, work, None, tuning.feeds[1], tuning.measure, target, [])
    reference.size_bytes = None if reference.error else _size_on_disk(reference.path)
    try:
        chosen, tried = int4.tune(model.path, work, tuning.feeds[1], tuning.measure, tuning.time_all, _size_on_disk,
                                  target, ctx.note, reference=None if reference.error else reference)
    except ValueError as exc:
        raise StageFailed("quantize", f"{reason(exc, 300)}; use --method int8") from exc
    tried.append(reference)
    for c in tried:
        if c.path is not None and str(c.path) in tuning.per_batch:
            c.speedup_by_batch = tuning.per_batch[str(c.path)]
    float_bytes = _size_on_disk(model.path)
    ratio = float_bytes / (chosen.size_bytes or float_bytes)
    vs_int8 = (chosen.speedup or 0.0) / reference.speedup if reference.speedup else None
    metrics.update(chosen=chosen.name, block_size=chosen.block_size, accuracy_level=chosen.accuracy_level,
                   size_ratio=round(ratio, 3), speedup_vs_float=chosen.speedup,
                   speedup_vs_int8=None if vs_int8 is None else round(vs_int8, 3),
                   candidates=[dict(c.record(), chosen=c is chosen) for c in tried])
    why = ("the smallest that met the target" if chosen.meets_target
           else "none met the target; the most faithful")
    versus = f", {vs_int8:.2f}× the speed of dynamic int8" if vs_int8 else ""
    notes.append(f"int4 recipe: {chosen.name} ({why}: cosine ≥ {target.cosine:g}, agreement ≥ {target.agreement:g}%): "
                 f"{ratio:.2f}× smaller than float ({float_bytes} → {chosen.size_bytes} bytes), cosine "
                 f"{int8._fmt(chosen.cosine)}; {chosen.speedup or 0:.2f}× float speed{versus} at {tuning.where}")
    ctx.note(notes[-1])
    out = ctx.scratch("model.int4.onnx")
    assert chosen.path is not None
    copy_artifact(chosen.path, out)
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


def _same_file(a: Path, b: Path) -> bool:
    """Whether two model files hold the same bytes (a copy of the input counts as the input)."""
    from ..package import digest

    if not (a.is_file() and b.is_file()):
        return False
    return a.stat().st_size == b.stat().st_size and digest(a) == digest(b)


def _speed(baseline: ModelRef, quantized: ModelRef, ctx: StageContext, notes: list[str]) -> dict[str, Any]:
    """Median batch-1 latency of the float and quantized models, timed interleaved; warn when slower."""
    from ..runtimes import load_runner
    from ..timing import interleaved_latencies

    examples = ctx.examples if ctx.examples is not None else Dataset(ctx.probe, None)
    feeds = examples.head(1).inputs
    if not quantized.session and _same_file(baseline.path, quantized.path):
        # The input kept as it is: timing a file against itself would only print noise as a speed.
        ctx.note("kept the float model as given (the same file): not timed against itself, 1.00x by construction")
        return {"speedup": 1.0, "same_file": True}
    runners = [load_runner(baseline, ctx.signature), load_runner(quantized, ctx.signature)]
    samples = interleaved_latencies(runners, feeds, iterations=200, budget_s=SPEED_BUDGET_S)
    float_ms, quant_ms = (float(np.median(s)) for s in samples)
    found: dict[str, Any] = {"float_p50_ms": round(float_ms, 4), "quantized_p50_ms": round(quant_ms, 4),
                             "speedup": round(float_ms / quant_ms, 3) if quant_ms else None,
                             "timed_calls": len(samples[0])}
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
    found["timed_at"] = {"batch": 1, "threads": "onnxruntime default", "shapes": {k: list(v.shape) for k, v in feeds.items()}}
    session = ""
    if quantized.session:  # the package's own session settings, as serve and predict will apply them
        found["timed_at"]["session"] = dict(quantized.session)
        session = " (the quantized model with its recorded session settings: " + ", ".join(
            f"{k}={v}" for k, v in quantized.session.items()) + ")"
    ctx.note(f"timed float against quantized: {len(samples[0])} interleaved batch-1 calls each, onnxruntime's "
             f"default threads{session}, inputs {shapes} (at most {SPEED_BUDGET_S:g} s, at least 5 calls)")
    if quant_ms > float_ms * SLOWER:
        found["slower_than_float"] = True
        notes.append(f"warning: the quantized model is {quant_ms / float_ms:.2f}x slower than float on this CPU "
                     f"({quant_ms:.3f} ms vs {float_ms:.3f} ms median, batch 1, inputs {shapes})")
        ctx.note(notes[-1])
    return found
