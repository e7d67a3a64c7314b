"""The pipeline's loop: check and plan everything, then run each stage over the model the last one left.

A run detects the input, plans every stage and the conversions between them (refusing an impossible pipeline
up front, `spec`), checks its gates (`gates`), then runs the stages in a scratch directory with a run context
(`context`) and writes the package atomically (`writer`). The input is only ever read.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..atomic import atomic_dir, check_output
from ..data import Dataset, load_dataset
from ..errors import GateFailed, ModelpackError, StageFailed, UsageError, reason
from ..formats import ModelRef, Repr, detect
from ..package import Digest, digest, model_size
from ..package import manifest as mf
from ..signature import Signature, parse_batch_axes, parse_dims
from ..stages import StageContext, StageResult
from . import gates, isolation
from .context import NullReporter, Reporter, RunContext
from .spec import PipelineSpec, PlannedStage, jsonable, plan, planned_compression
from .writer import Sizes, artifact_view, settled, write_package


@dataclass
class RunResult:
    output: Path
    manifest: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"output": str(self.output), "manifest": self.manifest}


@dataclass
class _Checked:
    """What the run knows before any stage runs: the source, its plan, its signature and its eval data."""

    source: ModelRef
    output: Path  # absolute
    source_digest: Digest
    planned: list[PlannedStage]
    signature: Signature
    native: Any  # the source's Keras model, loaded once for its signature and its reference outputs
    eval_data: Dataset | None
    evaluation: dict[str, Any]


def run(spec: PipelineSpec, reporter: Reporter | None = None) -> RunResult:
    """Run the pipeline described by `spec` and write its package atomically."""
    # Frameworks print progress to stdout (tf_keras' export does); stdout belongs to results.
    with contextlib.redirect_stdout(sys.stderr):
        return _run_pipeline(spec, reporter or NullReporter())


def run_isolated(spec: PipelineSpec, reporter: Reporter | None = None, *, debug: bool = False, verbose: bool = False,
                 terminal: Callable[[TextIO], None] | None = None) -> RunResult:
    """`run()` in a forked child when that is safe, so a crash inside a framework is a StageFailed naming the
    stage, not a dead process; in-process otherwise (see `isolation.fork_available`)."""
    reporter = reporter or NullReporter()
    if not isolation.fork_available() or spec.output is None:
        return run(spec, reporter)
    value = isolation.run_forked(lambda forward: run(spec, forward), reporter, spec.output, debug=debug,
                                 verbose=verbose, terminal=terminal)
    return RunResult(Path(value["output"]), value["manifest"])


def _run_pipeline(spec: PipelineSpec, reporter: Reporter) -> RunResult:
    checked = _check(spec, reporter)
    output = checked.output
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(output, force=spec.force) as staging:
        work = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-work-", dir=output.parent))
        sizes = Sizes(planned_compression(checked.planned))
        try:
            ctx = RunContext(spec, checked.source, checked.signature, work, checked.eval_data, reporter, sizes)
            manifest = _run_stages(spec, checked, ctx, staging)
        finally:
            sizes.close()
            shutil.rmtree(work, ignore_errors=True)
    return RunResult(output, manifest)


def _check(spec: PipelineSpec, reporter: Reporter) -> _Checked:
    """Everything refused before any work: the input, the output, the plan, the signature and the gates."""
    from ..inspection import load_native, signature_of

    if spec.input is None:
        raise UsageError("no input model: give INPUT, or 'input' in the pipeline file.")
    if spec.output is None:
        raise UsageError("no output: give -o/--output, or 'output' in the pipeline file.")
    source = detect(spec.input)
    check_output(spec.output, spec.force)
    gates.check_identity(spec)
    planned = plan(spec, source.rep)
    if spec.output.absolute() == source.path.absolute():
        raise UsageError(f"output '{spec.output}' is the input model; pick another -o.")
    source_digest = digest(source.path)
    if any(step.stage.trains(step.params) for step in planned):
        from ..frameworks import tf as tfw

        if tfw.prefer_stable_training():
            reporter.note("fine-tuning ahead: TensorFlow's oneDNN custom ops are off for this run "
                          f"({tfw.ONEDNN}=0; they crash tf_keras training on some models)")
    native = load_native(source, safe=not spec.unsafe_load)
    signature = _signature(spec, signature_of(source, native=native))
    full_eval = load_dataset(spec.eval_data, signature) if spec.eval_data else None
    gates.check_gates(spec, planned, full_eval)
    eval_data = full_eval.head(spec.eval_limit) if full_eval is not None else None
    evaluation: dict[str, Any] = {"data": "random inputs from the signature", "examples": 4}
    if full_eval is not None and eval_data is not None:
        evaluation = {"data": str(spec.eval_data), "examples": len(eval_data), "of": len(full_eval),
                      "limit": spec.eval_limit}
        if len(eval_data) < len(full_eval):
            reporter.note(f"measuring on the first {len(eval_data)} of {len(full_eval)} eval examples "
                          f"(--eval-limit {spec.eval_limit})")
    return _Checked(source, spec.output.absolute(), source_digest, planned, signature, native if source.rep is Repr.KERAS else None,
                    eval_data, evaluation)


def _signature(spec: PipelineSpec, signature: Signature) -> Signature:
    """The source's signature with --batch-axis applied, and --dim checked against it."""
    try:
        if spec.batch_axis:
            signature = signature.with_batch_axes(parse_batch_axes(spec.batch_axis, signature))
        if spec.dim:
            parse_dims(spec.dim, signature)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return signature


def _run_stages(spec: PipelineSpec, checked: _Checked, ctx: RunContext, staging: Path) -> dict[str, Any]:
    """Each planned stage over the model the last one kept; then the package, written into `staging`."""
    source = checked.source
    ctx.native, checked.native = checked.native, None
    source_metrics = ctx.measure(source)  # compressed sizes are futures until settled
    ctx.native = None
    ctx.source_accuracy = source_metrics.get("accuracy")
    source_record: dict[str, Any] = {
        "path": str(spec.input), "sha256": checked.source_digest.sha256, "format": source.describe(),
        "size": model_size(source.path), "metrics": source_metrics,
    }
    held = source
    records: list[mf.StageRecord] = []
    packaged: dict[Repr, tuple[ModelRef, dict[str, Any]]] = {}
    for index, step in enumerate(checked.planned, 1):
        record, result = _run_step(spec, index, len(checked.planned), step, held, ctx)
        records.append(record)
        if record["status"] == "skipped":
            continue
        for artifact in result.artifacts:
            packaged[artifact.rep] = (artifact, result.artifact_metrics.get(artifact.rep, {}))
        held = result.model
    if held.rep not in packaged or packaged[held.rep][0] != held:
        packaged[held.rep] = (held, {})
    if digest(source.path) != checked.source_digest:  # pragma: no cover - a guard, never expected to fire
        raise ModelpackError(f"input '{source.path}' changed during the run; nothing was written.")
    packaged = {rep: (ref, {**extra, "measured": artifact_view(ctx.measure(ref))})
                for rep, (ref, extra) in packaged.items()}
    lineage = {"source": settled(source_record), "stages": settled(records), "evaluation": checked.evaluation,
               "objective": spec.objective}
    return write_package(staging, spec, source, checked.signature, lineage, packaged, ctx.sizes)


def _run_step(spec: PipelineSpec, index: int, total: int, step: PlannedStage, held: ModelRef,
              ctx: RunContext) -> tuple[mf.StageRecord, StageResult]:
    """One stage: convert what the pipeline holds, run the stage, measure its output and gate it."""
    ctx.reporter.stage_started(index, total, step.stage.name)
    started, t0 = mf.now(), time.perf_counter()
    model = ctx.convert(held, step.input_rep)
    result = _call_stage(step, model, ctx)
    # The codec is known from the plan; a plugin stage may still pick one as it runs.
    ctx.sizes.compression = result.archive_compression or ctx.sizes.compression
    metrics = {**result.metrics, **ctx.measure(result.model)}
    record: mf.StageRecord = {
        "name": step.stage.name, "params": jsonable(step.params), "started_at": started,
        "finished_at": mf.now(), "duration_s": round(time.perf_counter() - t0, 3),
        "metrics": metrics, "input_format": str(model.rep), "output_format": str(result.model.rep),
        "status": "ok",
    }
    notes = list(result.notes)
    violation = gates.violation(spec, step.stage.name, metrics)
    if violation and spec.on_violation == "fail":
        raise GateFailed(violation + " Pass --on-violation skip to drop this stage and go on.")
    if violation:
        record["status"] = "skipped"
        notes.append(violation + " The stage's output was dropped; the pipeline went on from its input.")
        ctx.reporter.note("skipped: " + violation)
    if notes:
        record["notes"] = notes
    record["finished_at"] = mf.now()
    record["duration_s"] = round(time.perf_counter() - t0, 3)
    ctx.reporter.stage_finished(settled(record, wait=False))
    return record, result


def _call_stage(step: PlannedStage, model: ModelRef, ctx: StageContext) -> StageResult:
    """The stage's own run; anything it raises that is not modelpack's names the stage."""
    try:
        return step.stage.run(model, step.params, ctx)
    except (ModelpackError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise StageFailed(step.stage.name, reason(exc)) from exc
