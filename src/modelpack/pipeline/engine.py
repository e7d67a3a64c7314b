"""The pipeline: a spec of stages, planned before any work, run over one model into one package.

A run detects the input, plans every stage and the conversions between them
(refusing an impossible pipeline up front), then runs the stages in a scratch
directory and writes the package atomically. The input is only ever read.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import click

from ..atomic import atomic_dir, check_output
from ..data import SYNTHETIC_SIZE, Dataset, load_dataset, random_inputs
from ..errors import GateFailed, ModelpackError, StageFailed, UsageError, reason
from ..evaluation import DEFAULT_EVAL_LIMIT, accuracy, fidelity, run_batched, token_mask
from ..formats import PACKAGE_NAMES, ModelRef, Repr, detect
from ..frameworks import child
from ..package import copy_artifact, digest, model_size
from ..package import manifest as mf
from ..package.archive import compressed_size, file_compressed_size
from ..runtimes import KerasRunner, load_runner
from ..signature import Signature, parse_batch_axes, parse_dims
from ..stages import Option, Params, Stage, StageContext, StageResult, registry
from . import convert


@dataclass
class StageSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


# The pipeline's top-level settings, declared once: `optimize` makes its global options from this list and a
# pipeline file's top-level keys are checked against it. Defaults live in PipelineSpec (these say None, so an
# option not given on the command line leaves a pipeline file's value alone).
SPEC_OPTIONS: tuple[Option, ...] = (
    Option("output", click.Path(path_type=Path), short="-o", help="Package directory to write."),
    Option("eval-data", click.Path(path_type=Path), help=".npz with arrays x (and labels y) for checks."),
    Option("atol", click.FloatRange(min=0), help="Max abs diff an export may show.  [default: 1e-4]"),
    Option("name", str, help="Package name.  [default: the input's file name]"),
    Option("model-version", str, help="Package version.  [default: 1]"),
    Option("max-accuracy-drop", click.FloatRange(min=0),
           help="Fail (or skip) a stage whose output loses more accuracy points than this."),
    Option("min-agreement", click.FloatRange(0, 100),
           help="Fail (or skip) a stage whose top-1 predictions agree with the source model's on fewer than this "
                "% of the eval examples. Needs no labels."),
    Option("min-cosine", click.FloatRange(-1, 1),
           help="Fail (or skip) a stage whose float outputs have a mean cosine similarity to the source model's "
                "below this (worst output). Needs no labels."),
    Option("on-violation", click.Choice(["fail", "skip"]),
           help="On a quality-gate violation: fail the run, or drop the stage and go on.  [default: fail]"),
    Option("eval-limit", click.IntRange(1), help="Eval examples used for fidelity, accuracy and the gates "
           "(the first N).  [default: 512]"),
    Option("unsafe-load", is_flag=True, help="Allow Keras Lambda layers (runs code from the model file)."),
    Option("objective", click.Choice(["latency", "size"]),
           help="What optimizing is for: latency (never slower than the float ONNX) or size (the smallest "
                "package that meets the fidelity targets and gates).  [default: latency]"),
    Option("batch-axis", str, multiple=True,
           help="INPUT=AXIS or INPUT=none: where an input holds its examples, when the graph's dimension names "
                "cannot say (repeat per input).  [default: from the graph]"),
    Option("dim", str, multiple=True,
           help="NAME=SIZE: without --eval-data, the size synthetic inputs give the dynamic dimension the graph "
                "calls NAME (repeatable).  [default: 128 for every dynamic non-batch dimension]"),
)
PATH_OPTIONS = ("input", "output", "eval_data")


@dataclass
class PipelineSpec:
    """Everything a run needs; the command line and a pipeline file both compile to this."""

    input: Path | None
    output: Path | None
    stages: list[StageSpec] = field(default_factory=list)
    eval_data: Path | None = None
    atol: float = 1e-4
    name: str | None = None
    model_version: str = "1"
    unsafe_load: bool = False
    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None
    on_violation: str = "fail"
    eval_limit: int = DEFAULT_EVAL_LIMIT
    force: bool = False
    batch_axis: tuple[str, ...] = ()
    objective: str = "latency"
    dim: tuple[str, ...] = ()


@dataclass
class PlannedStage:
    stage: Stage[Any]
    params: Params
    input_rep: Repr
    output_rep: Repr


class Reporter(Protocol):
    def stage_started(self, index: int, total: int, name: str) -> None: ...
    def stage_finished(self, record: mf.StageRecord) -> None: ...
    def note(self, message: str) -> None: ...


class NullReporter:
    def stage_started(self, index: int, total: int, name: str) -> None:
        pass

    def stage_finished(self, record: mf.StageRecord) -> None:
        pass

    def note(self, message: str) -> None:
        pass


@dataclass
class RunResult:
    output: Path
    manifest: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"output": str(self.output), "manifest": self.manifest}


def plan(spec: PipelineSpec, source_rep: Repr) -> list[PlannedStage]:
    """Resolve every stage and its parameters, and check each can get the representation it needs."""
    planned: list[PlannedStage] = []
    rep = source_rep
    for index, stage_spec in enumerate(spec.stages, 1):
        stage = registry.get(stage_spec.name)
        params = stage.resolve(stage_spec.params)
        accepts = stage.accepts_for(params)
        target = next((r for r in ((rep,) if rep in accepts else ()) + accepts
                       if convert.route(rep, r) is not None), None)
        if target is None:
            accepted = ", ".join(str(r) for r in accepts)
            raise UsageError(
                f"stage {index} '{stage.name}' works on {accepted} models, but the pipeline holds a {rep} model "
                f"there and no conversion reaches those (modelpack converts keras -> savedmodel -> onnx or tflite)."
            )
        output_rep = stage.plan(params, target)
        planned.append(PlannedStage(stage, params, target, output_rep))
        rep = output_rep
    return planned


def default_name(path: Path) -> str:
    stem = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "model"
    return name[:128]


class _Run:
    """State of one run: scratch space, cached reference outputs, the held model. It is the StageContext
    every stage gets."""

    def __init__(self, spec: PipelineSpec, source: ModelRef, signature: Signature, work: Path,
                 eval_data: Dataset | None, reporter: Reporter, compression: str) -> None:
        self.spec = spec
        self.source = source
        self.signature = signature
        self.work = work
        self.eval_data = eval_data
        self.reporter = reporter
        self._outputs: dict[Path, dict[str, Any]] = {}
        self._converted: dict[tuple[Path, Repr, int | None], ModelRef] = {}
        self._datasets: dict[tuple[str, str], Dataset] = {}
        self.source_accuracy: float | None = None
        self.native: Any = None  # the source's Keras model, loaded once for its signature and its outputs
        # A big model's conversions run in fresh processes, so that what the framework takes is returned.
        self.child_conversions = child.wanted(model_size(source.path))
        self.compression = compression
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelpack-sizes", initializer=_background)
        self._sizes: dict[tuple[Path, str], Future[int]] = {}
        self.prefetch_size(source.path)
        # Every measurement uses the same examples: the first --eval-limit rows, labels cut with them.
        # Without eval data, synthetic examples at realistic sizes: what the stages time is what a user runs.
        sizes = parse_dims(spec.dim, signature) if spec.dim else {}
        self.examples = (eval_data if eval_data is not None else
                         Dataset(random_inputs(signature, dims=sizes, other=SYNTHETIC_SIZE), None, None,
                                 {t.name: signature.batch_axis(t.name) for t in signature.inputs}))
        self.probe = self.examples.head(8).inputs

    def outputs(self, ref: ModelRef) -> dict[str, Any]:
        """Outputs of `ref` on the eval inputs (or random ones), cached per model."""
        if ref.path not in self._outputs:
            if ref.path == self.source.path and self.native is not None:  # the Keras model already loaded
                runner: Any = KerasRunner(ref, self.signature, model=self.native)
            else:
                runner = load_runner(ref, self.signature, safe=not self.spec.unsafe_load)
            self._outputs[ref.path] = run_batched(runner, self.examples)
        return self._outputs[ref.path]

    def convert(self, ref: ModelRef, rep: Repr, opset: int | None = None) -> ModelRef:
        """Convert, caching each hop so two exports share their SavedModel; the hops not yet cached run
        together (in one child process for a big model)."""
        chain = convert.route(ref.rep, rep)
        if chain is None:
            raise StageFailed("convert", f"no conversion from {ref.rep} to {rep}")

        def key(src: ModelRef, step: Repr) -> tuple[Path, Repr, int | None]:
            return (src.path, step, opset if step is Repr.ONNX else None)

        current = ref
        for index, step in enumerate(chain[1:], 1):
            if key(current, step) not in self._converted:
                todo = chain[index:]
                self.reporter.note(f"converting {' -> '.join(str(r) for r in [current.rep, *todo])}"
                                   + (" in a child process" if self.child_conversions else ""))
                walked = convert.hops(current, todo, self.work, self.signature, opset=opset or convert.DEFAULT_OPSET,
                                      safe=not self.spec.unsafe_load, in_child=self.child_conversions)
                for src, out in zip([current, *walked], walked):
                    self._converted[key(src, out.rep)] = out
                self.prefetch_size(walked[-1].path)  # the model asked for is measured next
            current = self._converted[key(current, step)]
        return current

    def compressed_size(self, path: Path, compression: str) -> int:
        return self.size_future(path, compression).result()

    def size_future(self, path: Path, compression: str) -> Future[int]:
        """The archive-compressed size of `path`, computed on a worker thread (zlib lets go of the GIL), so that
        compressing a big model overlaps the conversions and measurements that follow; `settle` waits for it."""
        self.prefetch_size(path, compression)
        return self._sizes[(path, compression)]

    def prefetch_size(self, path: Path, compression: str | None = None) -> None:
        key = (path, compression or self.compression)
        if key not in self._sizes:
            self._sizes[key] = self._pool.submit(compressed_size, *key)

    @property
    def objective(self) -> str:
        return self.spec.objective

    def scratch(self, name: str) -> Path:
        return convert.scratch(self.work, name)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def dataset(self, path: Any, option: str) -> Dataset:
        key = (str(path), option)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(path, self.signature, option)
        return self._datasets[key]

    def measure(self, ref: ModelRef, compression: str) -> dict[str, Any]:
        """Size (raw and as the archive would store it), accuracy, and fidelity against the source."""
        found: dict[str, Any] = {"size_bytes": model_size(ref.path),
                                 "compressed_bytes": self.size_future(ref.path, compression)}
        outputs = self.outputs(ref)
        if ref.path != self.source.path:
            found.update(fidelity(self.outputs(self.source), outputs, token_mask(self.examples.inputs)))
        if self.eval_data is not None and self.eval_data.labels is not None:
            acc = accuracy(outputs, self.eval_data.labels)
            if acc is not None:
                found["accuracy"] = round(acc, 3)
                if self.source_accuracy is not None and ref.path != self.source.path:
                    found["accuracy_drop"] = round(self.source_accuracy - acc, 3)
        return found

    # The rest of what a stage sees (StageContext): the run is the context.
    @property
    def workdir(self) -> Path:
        return self.work

    @property
    def atol(self) -> float:
        return self.spec.atol

    @property
    def safe(self) -> bool:
        return not self.spec.unsafe_load

    def note(self, message: str) -> None:
        self.reporter.note(message)


def _background() -> None:
    """Set up a worker thread: signals stay with the main thread, and measuring sizes yields to the work.

    Linux delivers a process's SIGINT to any thread that does not block it. Had this thread taken it, the
    main thread would sleep on in a stage and Ctrl-C would wait for the stage to end."""
    import os
    import signal
    import threading

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:  # Linux schedules threads as tasks: a lower priority for this one only
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: the sizes are measured all the same
        pass


def run(spec: PipelineSpec, reporter: Reporter | None = None) -> RunResult:
    """Run the pipeline described by `spec` and write its package atomically."""
    # Frameworks print progress to stdout (tf_keras' export does); stdout belongs to results.
    with contextlib.redirect_stdout(sys.stderr):
        return _run(spec, reporter or NullReporter())


def _run(spec: PipelineSpec, reporter: Reporter) -> RunResult:
    from ..inspection import load_native, signature_of

    if spec.input is None:
        raise UsageError("no input model: give INPUT, or 'input' in the pipeline file.")
    if spec.output is None:
        raise UsageError("no output: give -o/--output, or 'output' in the pipeline file.")
    source = detect(spec.input)
    check_output(spec.output, spec.force)
    _check_identity(spec, source)
    if spec.on_violation not in ("fail", "skip"):
        raise UsageError(f"--on-violation '{spec.on_violation}': use fail or skip.")
    planned = plan(spec, source.rep)
    if spec.output.absolute() == source.path.absolute():
        raise UsageError(f"output '{spec.output}' is the input model; pick another -o.")
    source_digest = digest(source.path)
    if any(step.params.get("train_data") for step in planned):
        from ..frameworks import tf as tfw

        if tfw.prefer_stable_training():
            reporter.note("fine-tuning ahead: TensorFlow's oneDNN custom ops are off for this run "
                          f"({tfw.ONEDNN}=0; they crash tf_keras training on some models)")

    native = load_native(source, safe=not spec.unsafe_load)
    signature = signature_of(source, native=native)
    if spec.batch_axis:
        try:
            signature = signature.with_batch_axes(parse_batch_axes(spec.batch_axis, signature))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if spec.dim:
        try:
            parse_dims(spec.dim, signature)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    full_eval = load_dataset(spec.eval_data, signature) if spec.eval_data else None
    if source.rep is not Repr.KERAS:
        native = None
    if spec.max_accuracy_drop is not None and (full_eval is None or full_eval.labels is None):
        raise UsageError("--max-accuracy-drop needs --eval-data with labels (array 'y') to measure accuracy; "
                         "without labels, gate on --min-agreement or --min-cosine against the source model.")
    if (spec.min_agreement is not None or spec.min_cosine is not None) and full_eval is None:
        raise UsageError("--min-agreement and --min-cosine compare outputs on real inputs: give --eval-data FILE.npz "
                         "(labels are not needed).")
    _check_stage_gates(spec, labels=full_eval is not None and full_eval.labels is not None)
    eval_data = full_eval.head(spec.eval_limit) if full_eval is not None else None
    evaluation = ({"data": str(spec.eval_data), "examples": len(eval_data), "of": len(full_eval),
                   "limit": spec.eval_limit} if full_eval is not None and eval_data is not None else
                  {"data": "random inputs from the signature", "examples": 4})
    if full_eval is not None and eval_data is not None and len(eval_data) < len(full_eval):
        reporter.note(f"measuring on the first {len(eval_data)} of {len(full_eval)} eval examples "
                      f"(--eval-limit {spec.eval_limit})")
    compression = planned_compression(planned)

    output = spec.output.absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(output, force=spec.force) as staging:
        work = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-work-", dir=output.parent))
        state: _Run | None = None
        try:
            state = _Run(spec, source, signature, work, eval_data, reporter, compression)
            state.native, native = native, None
            source_metrics = state.measure(source, compression)  # compressed sizes are futures until settled
            state.native = None
            state.source_accuracy = source_metrics.get("accuracy")
            source_record: dict[str, Any] = {
                "path": str(spec.input), "sha256": source_digest.sha256, "format": source.describe(),
                "size": model_size(source.path), "metrics": source_metrics,
            }
            lineage_extra: dict[str, Any] = {"evaluation": evaluation, "objective": spec.objective}
            held = source
            records: list[mf.StageRecord] = []
            packaged: dict[Repr, tuple[ModelRef, dict[str, Any]]] = {}
            for index, step in enumerate(planned, 1):
                reporter.stage_started(index, len(planned), step.stage.name)
                started, t0 = mf.now(), time.perf_counter()
                model = state.convert(held, step.input_rep)
                result = _run_stage(step, model, state)
                # The codec is known from the plan; a plugin stage may still pick one as it runs.
                compression = result.archive_compression or compression
                metrics = {**result.metrics, **state.measure(result.model, compression)}
                record: mf.StageRecord = {
                    "name": step.stage.name, "params": _jsonable(step.params), "started_at": started,
                    "finished_at": mf.now(), "duration_s": round(time.perf_counter() - t0, 3),
                    "metrics": metrics, "input_format": str(model.rep), "output_format": str(result.model.rep),
                    "status": "ok",
                }
                notes = list(result.notes)
                violation = _gate(spec, step.stage.name, metrics)
                if violation and spec.on_violation == "fail":
                    raise GateFailed(violation + " Pass --on-violation skip to drop this stage and go on.")
                if violation:
                    record["status"] = "skipped"
                    notes.append(violation + " The stage's output was dropped; the pipeline went on from its input.")
                    reporter.note("skipped: " + violation)
                if notes:
                    record["notes"] = notes
                record["finished_at"] = mf.now()
                record["duration_s"] = round(time.perf_counter() - t0, 3)
                records.append(record)
                reporter.stage_finished(settled(record, wait=False))
                if violation:
                    continue
                for artifact in result.artifacts:
                    packaged[artifact.rep] = (artifact, result.artifact_metrics.get(artifact.rep, {}))
                held = result.model
            if held.rep not in packaged or packaged[held.rep][0] != held:
                packaged[held.rep] = (held, {})
            if digest(source.path) != source_digest:  # pragma: no cover - a guard, never expected to fire
                raise ModelpackError(f"input '{source.path}' changed during the run; nothing was written.")
            packaged = {rep: (ref, {**extra, "measured": _artifact_view(state.measure(ref, compression))})
                        for rep, (ref, extra) in packaged.items()}
            source_record, records = settled(source_record), settled(records)
            manifest = _write_package(staging, spec, source, signature, source_record, records, packaged,
                                      compression, lineage_extra,
                                      lambda path: state.compressed_size(path, compression))
        finally:
            if state is not None:
                state.close()
            shutil.rmtree(work, ignore_errors=True)
    return RunResult(output, manifest)


def settled(value: Any, wait: bool = True) -> Any:
    """`value` with every Future replaced by its result; with `wait=False`, futures not done yet are left out."""
    if isinstance(value, Future):
        return value.result() if wait or value.done() else None
    if isinstance(value, dict):
        found = {k: settled(v, wait) for k, v in value.items()}
        return {k: v for k, v in found.items() if v is not None or not isinstance(value[k], Future)}
    if isinstance(value, list):
        return [settled(v, wait) for v in value]
    return value


def _artifact_view(measured: dict[str, Any]) -> dict[str, Any]:
    """What a package artifact records of its measurement: quality against the source model."""
    keys = ("accuracy", "accuracy_drop", "top1_agreement", "cosine", "exact_match", "max_abs_diff", "outputs")
    return {k: measured[k] for k in keys if k in measured}


def _gate(spec: PipelineSpec, stage: str, metrics: dict[str, Any]) -> str | None:
    """The reason a stage's output breaks a quality gate, or None.

    --max-accuracy-drop needs labels; --min-agreement (top-1 agreement with the source model, %) and
    --min-cosine (mean cosine similarity of every float output to the source's) need none.
    """
    drop = metrics.get("accuracy_drop")
    if spec.max_accuracy_drop is not None and drop is not None and drop > spec.max_accuracy_drop:
        source = metrics["accuracy"] + drop
        return (f"stage '{stage}' lost {drop:.2f} accuracy points ({source:.2f}% -> {metrics['accuracy']:.2f}%), "
                f"more than --max-accuracy-drop {spec.max_accuracy_drop:g}.")
    agree = metrics.get("top1_agreement")
    if spec.min_agreement is not None and agree is not None and agree < spec.min_agreement:
        return (f"stage '{stage}' agrees with the source model's top-1 on {agree:.2f}% of the eval examples, "
                f"below --min-agreement {spec.min_agreement:g}.")
    cosine = metrics.get("cosine")
    if spec.min_cosine is not None and cosine is not None and cosine < spec.min_cosine:
        worst = min(((n, m["cosine"]) for n, m in metrics.get("outputs", {}).items() if "cosine" in m),
                    key=lambda item: item[1], default=("?", cosine))
        return (f"stage '{stage}' output '{worst[0]}' has mean cosine similarity {cosine:.4f} to the source model's, "
                f"below --min-cosine {spec.min_cosine:g}.")
    return None


def planned_compression(planned: list[PlannedStage]) -> str:
    """The archive codec the package will use: the last `compress --archive`, else deflate.

    Known before any work, so the source model and every stage are measured with the same codec."""
    chosen = "deflate"
    for step in planned:
        value = step.params.get("archive") if step.stage.name == "compress" else None
        if isinstance(value, str):
            chosen = value
    return chosen


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _check_stage_gates(spec: PipelineSpec, *, labels: bool) -> None:
    """A benchmark stage's --fail-if over accuracy needs labelled --eval-data: say so before any stage runs."""
    from ..bench import gates

    for stage in spec.stages:
        if stage.name == "benchmark":
            texts = stage.params.get("fail_if") or ()
            gates.check_measurable(gates.parse_all(list(texts)), labels=labels,
                                   memory=bool(stage.params.get("memory", False)), where="benchmark --fail-if")


def _check_identity(spec: PipelineSpec, source: ModelRef) -> None:
    if spec.name is not None and not NAME_RE.match(spec.name):
        raise UsageError(f"--name '{spec.name}': use letters, digits, '.', '_' or '-' (at most 128, no leading symbol).")
    if not VERSION_RE.match(spec.model_version):
        raise UsageError(f"--model-version '{spec.model_version}': use letters, digits, '.', '_' or '-', e.g. 1 or 2.0.1.")


def _run_stage(step: PlannedStage, model: ModelRef, ctx: StageContext) -> StageResult:
    try:
        return step.stage.run(model, step.params, ctx)
    except (ModelpackError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise StageFailed(step.stage.name, reason(exc)) from exc


def _write_package(staging: Path, spec: PipelineSpec, source: ModelRef, signature: Signature,
                   source_record: dict[str, Any], records: list[mf.StageRecord],
                   packaged: dict[Repr, tuple[ModelRef, dict[str, Any]]], compression: str,
                   lineage_extra: dict[str, Any], sizes: Callable[[Path], int]) -> dict[str, Any]:
    artifacts = []
    for rep in Repr:
        if rep not in packaged:
            continue
        ref, extra = packaged[rep]
        name = PACKAGE_NAMES[rep]
        if rep is Repr.KERAS and ref.container == "h5":
            name = "model.h5"
        extra_files = copy_artifact(ref.path, staging / name)
        d = digest(staging / name)
        # A plain copy holds the measured bytes, whose compressed size is known by now; a model re-laid out
        # with external data is measured as written.
        entry: dict[str, Any] = {"format": rep.value, "path": name, "size": d.size, "sha256": d.sha256, "kind": d.kind,
                 "compressed_size": file_compressed_size(staging / name, compression) if extra_files
                 else sizes(ref.path)}
        if extra_files:
            listed = []
            for companion in extra_files:
                e = digest(companion)
                listed.append({"path": companion.name, "size": e.size, "sha256": e.sha256,
                               "compressed_size": file_compressed_size(companion, compression)})
            entry["files"] = listed  # external data: hashed here, so a signature covers every byte loaded
        entry.update(extra)
        artifacts.append(entry)
    data = {
        "schema_version": mf.SCHEMA_VERSION,
        "name": spec.name or default_name(source.path),
        "version": spec.model_version,
        "signature": signature.to_dict(),
        "artifacts": artifacts,
        "lineage": {"source": source_record, "stages": records, **lineage_extra},
        "archive": {"compression": compression,
                    "raw_bytes": sum(a["size"] + sum(f["size"] for f in a.get("files", [])) for a in artifacts),
                    "compressed_bytes": sum(a["compressed_size"] + sum(f["compressed_size"] for f in a.get("files", []))
                                            for a in artifacts)},
        "created_by": mf.created_by(),
        "created_at": mf.now(),
    }
    mf.write(staging / mf.MANIFEST_NAME, data)
    return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
