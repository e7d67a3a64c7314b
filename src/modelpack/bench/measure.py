"""Timing models fairly on a noisy machine, and the numbers a benchmark records.

Every target (the original model and each artifact) is loaded once and warmed up.
The timed calls then run in `repeats` rounds; in each round every target takes its
turn at every batch size, in a rotated order, so drift on a shared machine (another
process, a CPU frequency change) hits all targets alike. Ratios against the baseline
come from the same run. The spread of the per-round medians says how far to trust a
number; above NOISY_SPREAD the result carries a warning.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NotRequired, TypedDict

import numpy as np

from ..data import Dataset, Tensors, random_inputs
from ..errors import UsageError
from ..evaluation import DEFAULT_EVAL_LIMIT, accuracy, fidelity, run_batched, token_mask
from ..formats import ModelRef, Repr
from ..package import manifest as mf
from ..package import model_size
from ..package.archive import compressed_size
from ..runtimes import Runner, load_runner
from ..signature import DYNAMIC, Signature
from ..timing import rotated, time_calls

DEFAULT_DURATION_S = 1.0
NOISY_SPREAD = 0.10  # per-round medians more than 10% apart: too noisy to trust
QUANTILES = tuple(range(0, 101, 5))  # kept per batch size, for the report's distribution charts
MAX_CALLS = 200_000


@dataclass(frozen=True)
class BenchSpec:
    """How to measure. `duration_s` and `iterations` are per target and batch size."""

    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None
    duration_s: float | None = None
    iterations: int | None = None
    repeats: int = 5
    warmup: int = 10
    memory: bool = True
    safe: bool = True
    compression: str = "deflate"

    def settings(self) -> dict[str, Any]:
        data = asdict(self)
        data["batch_sizes"] = list(self.batch_sizes)
        if self.iterations is None and self.duration_s is None:
            data["duration_s"] = DEFAULT_DURATION_S
        return data


@dataclass
class Target:
    """One model to measure: the original, or an artifact of a package."""

    name: str
    ref: ModelRef
    baseline: bool = False
    display: str | None = None  # the path to show and record (a package artifact's relative path)
    runner: Runner | None = field(default=None, repr=False)
    load_ms: float = 0.0


def runtime_of(ref: ModelRef) -> str:
    return {Repr.ONNX: "onnxruntime", Repr.TFLITE: "tflite", Repr.SAVEDMODEL: "tensorflow",
            Repr.KERAS: "keras"}[ref.rep]


def batch_inputs(signature: Signature, batch: int, data: Dataset | None) -> Tensors:
    """`batch` rows of eval inputs (repeated when the set is smaller), else random ones."""
    for spec in signature.inputs:
        axis = signature.batch_axis(spec.name)
        fixed = spec.shape[axis] if axis is not None else DYNAMIC
        if fixed != DYNAMIC and fixed != batch:
            raise UsageError(f"--batch-sizes {batch}: input '{spec.name}' has a fixed batch of {fixed}; "
                             f"use --batch-sizes {fixed}.")
    if data is None:
        return random_inputs(signature, batch=batch)
    picked = data.take(np.arange(batch) % len(data))
    return {k: np.ascontiguousarray(v) for k, v in picked.inputs.items()}


def _prepare_runtimes(targets: Sequence[Target], threads: int | None) -> None:
    """Import TensorFlow before any load is timed, so no target is charged for the import."""
    if all(t.ref.rep is Repr.ONNX for t in targets):
        return
    from ..frameworks import tf as tfw

    tf = tfw.tensorflow()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # already initialized in this process; the setting cannot change now
            pass


def load(targets: Sequence[Target], signature: Signature, spec: BenchSpec) -> None:
    _prepare_runtimes(targets, spec.threads)
    for target in targets:
        start = time.perf_counter()
        target.runner = load_runner(target.ref, signature, threads=spec.threads, safe=spec.safe)
        target.load_ms = (time.perf_counter() - start) * 1e3


def _calls_per_round(estimate_ms: float, spec: BenchSpec) -> int:
    if spec.iterations is not None:
        return max(1, math.ceil(spec.iterations / spec.repeats))
    budget_ms = (spec.duration_s if spec.duration_s is not None else DEFAULT_DURATION_S) * 1e3 / spec.repeats
    return int(min(MAX_CALLS, max(3, budget_ms / max(estimate_ms, 1e-3))))


def time_targets(targets: Sequence[Target], signature: Signature, spec: BenchSpec, data: Dataset | None,
                 progress: Callable[[str], None] = lambda m: None) -> dict[tuple[str, int], list[np.ndarray]]:
    """Per (target, batch size): one array of per-call latencies in ms for each round."""
    feeds = {bs: batch_inputs(signature, bs, data) for bs in spec.batch_sizes}
    calls: dict[tuple[str, int], int] = {}
    for bs in spec.batch_sizes:
        for target in targets:
            assert target.runner is not None
            start = time.perf_counter()
            for _ in range(max(spec.warmup, 1)):
                target.runner.run(feeds[bs])
            estimate = (time.perf_counter() - start) * 1e3 / max(spec.warmup, 1)
            calls[(target.name, bs)] = _calls_per_round(estimate, spec)
    samples: dict[tuple[str, int], list[np.ndarray]] = {key: [] for key in calls}
    for rnd in range(spec.repeats):
        progress(f"round {rnd + 1}/{spec.repeats}")
        for bs in spec.batch_sizes:
            for target in rotated(targets, rnd):
                run = target.runner.run
                samples[(target.name, bs)].append(time_calls(run, feeds[bs], calls[(target.name, bs)]))
    return samples


class LatencyRow(TypedDict):
    """One target at one batch size: per-call latency statistics over every interleaved round."""

    batch_size: int
    calls: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    iqr_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # rows per second, one stream
    round_medians_ms: list[float]
    round_spread: float
    noisy: bool
    quantiles_ms: list[float]
    latency_ratio: NotRequired[float | None]  # p50 over the baseline's p50 at the same batch size


class TargetRecord(TypedDict):
    """One measured model in a benchmark record."""

    name: str
    format: str
    runtime: str
    path: str
    baseline: bool
    load_ms: float
    size_bytes: int
    compressed_bytes: int
    latency: list[LatencyRow]
    size_ratio: NotRequired[float]
    accuracy: NotRequired[float]
    accuracy_drop: NotRequired[float]
    top1_agreement: NotRequired[float]
    max_abs_diff: NotRequired[float]
    mean_cosine: NotRequired[float]
    memory_error: NotRequired[str]
    cold_load_ms: NotRequired[float]
    peak_rss_mb: NotRequired[float]
    model_rss_mb: NotRequired[float]
    session: NotRequired[dict[str, Any]]  # the manifest's session settings, as the timed session applied them


class BenchmarkRecord(TypedDict):
    """What one benchmark run records in the manifest (`benchmark`, or a benchmark stage's lineage record)."""

    started_at: str
    finished_at: str
    host: dict[str, Any]
    settings: dict[str, Any]
    baseline: str
    data: str
    targets: list[TargetRecord]
    warnings: list[str]
    gates: NotRequired[list[GateCheck]]  # set by whoever applies --fail-if
    notes: NotRequired[list[str]]
    recorded: NotRequired[bool]  # written into the package's manifest
    float_export: NotRequired[dict[str, Any]]  # a package's float-export speed from its lineage (summary.float_export)


class GateCheck(TypedDict):
    """One check a --fail-if gate made on one model (and batch size)."""

    gate: str
    model: str
    batch_size: int | None
    value: float
    passed: bool


def _session_applied(runner: Runner | None) -> dict[str, Any] | None:
    """The recorded session settings a runner's live session carries (read back from onnxruntime), if any."""
    from ..runtimes import OnnxRunner

    if not isinstance(runner, OnnxRunner) or not runner.settings:
        return None
    return runner.applied()


def latency_stats(rounds: list[np.ndarray], batch: int) -> LatencyRow:
    """The numbers recorded for one target at one batch size."""
    allv = np.concatenate(rounds)
    medians = np.array([np.median(r) for r in rounds])
    p50 = float(np.percentile(allv, 50))
    spread = float((medians.max() - medians.min()) / p50) if p50 > 0 and len(medians) > 1 else 0.0
    q25, q75 = np.percentile(allv, [25, 75])
    return {
        "batch_size": batch,
        "calls": int(allv.size),
        "mean_ms": round(float(allv.mean()), 5),
        "p50_ms": round(p50, 5),
        "p90_ms": round(float(np.percentile(allv, 90)), 5),
        "p99_ms": round(float(np.percentile(allv, 99)), 5),
        "std_ms": round(float(allv.std()), 5),
        "iqr_ms": round(float(q75 - q25), 5),
        "min_ms": round(float(allv.min()), 5),
        "max_ms": round(float(allv.max()), 5),
        "throughput": round(batch * allv.size / (allv.sum() / 1e3), 2),  # rows per second, one stream
        "round_medians_ms": [round(float(m), 5) for m in medians],
        "round_spread": round(spread, 4),
        "noisy": spread > NOISY_SPREAD,
        "quantiles_ms": [round(float(q), 5) for q in np.percentile(allv, QUANTILES)],
    }


def quality(targets: Sequence[Target], data: Dataset | None, signature: Signature) -> dict[str, dict[str, Any]]:
    """Accuracy with labels, and fidelity (top-1 agreement, max abs diff) against the baseline."""
    if data is None:
        data = Dataset(random_inputs(signature, batch=32), None, None,
                       {t.name: signature.batch_axis(t.name) for t in signature.inputs})
    data = data.head(DEFAULT_EVAL_LIMIT)
    labels = data.labels
    outputs = {t.name: run_batched(t.runner, data) for t in targets}  # type: ignore[arg-type]
    base = next(t for t in targets if t.baseline)
    base_acc = accuracy(outputs[base.name], labels) if labels is not None else None
    found: dict[str, dict[str, Any]] = {}
    for target in targets:
        metrics: dict[str, Any] = {}
        if labels is not None:
            acc = accuracy(outputs[target.name], labels)
            if acc is not None:
                metrics["accuracy"] = round(acc, 3)
                if base_acc is not None:
                    metrics["accuracy_drop"] = round(base_acc - acc, 3)
        metrics.update(fidelity(outputs[base.name], outputs[target.name], token_mask(data.inputs)))
        found[target.name] = metrics
    return found


def host() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version()}


def benchmark(targets: Sequence[Target], signature: Signature, spec: BenchSpec, data: Dataset | None = None,
              progress: Callable[[str], None] = lambda m: None) -> BenchmarkRecord:
    """Measure every target in one interleaved run; the record that goes into the manifest."""
    if not targets:
        raise UsageError("nothing to benchmark: no models were given.")
    if sum(t.baseline for t in targets) != 1:
        raise ValueError("exactly one target must be the baseline")
    started = mf.now()
    progress("loading " + ", ".join(t.name for t in targets))
    load(targets, signature, spec)
    progress("timing")
    samples = time_targets(targets, signature, spec, data, progress)
    progress("accuracy and fidelity")
    qual = quality(targets, data, signature)
    base = next(t for t in targets if t.baseline)
    records: list[TargetRecord] = []
    for target in targets:
        record: TargetRecord = {
            "name": target.name, "format": target.ref.rep.value, "runtime": runtime_of(target.ref),
            "path": target.display or str(target.ref.path), "baseline": target.baseline, "load_ms": round(target.load_ms, 3),
            "size_bytes": model_size(target.ref.path), "compressed_bytes": compressed_size(target.ref.path, spec.compression),
            "latency": [latency_stats(samples[(target.name, bs)], bs) for bs in spec.batch_sizes],
        }
        record.update(qual[target.name])  # type: ignore[typeddict-item]  # accuracy and fidelity keys
        applied = _session_applied(target.runner)
        if applied:
            record["session"] = applied
        records.append(record)
    base_record = next(r for r in records if r["name"] == base.name)
    for record in records:
        record["size_ratio"] = round(record["compressed_bytes"] / max(base_record["compressed_bytes"], 1), 4)
        for row, base_row in zip(record["latency"], base_record["latency"]):
            row["latency_ratio"] = round(row["p50_ms"] / base_row["p50_ms"], 4) if base_row["p50_ms"] else None
    if spec.memory:
        progress("peak memory, one process per model")
        for target, record in zip(targets, records):
            found = _memory(target, signature, spec)
            if isinstance(found, str):
                record["memory_error"] = found
            else:
                record["cold_load_ms"] = found["load_ms"]
                record["peak_rss_mb"] = found["peak_rss_mb"]
                record["model_rss_mb"] = found["model_rss_mb"]
    warnings = [
        f"{r['name']} at batch {row['batch_size']}: per-round medians differ by {row['round_spread'] * 100:.0f}% "
        f"(over {NOISY_SPREAD * 100:.0f}%); the machine is busy or the run is short, so treat these numbers with care"
        for r in records for row in r["latency"] if row["noisy"]
    ]
    return {"started_at": started, "finished_at": mf.now(), "host": host(), "settings": spec.settings(),
            "baseline": base.name, "data": str(data.path) if data is not None and data.path else "random inputs",
            "targets": records, "warnings": warnings}


def _memory(target: Target, signature: Signature, spec: BenchSpec) -> dict[str, Any] | str:
    from .probe import run_probe

    return run_probe(target.ref.rep.value, target.ref.path, signature, max(spec.batch_sizes), spec.threads,
                     spec.safe)
