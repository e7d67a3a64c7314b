"""`--fail-if` gates: conditions over a benchmark's metrics that fail a CI run.

    p99_ms > 20              any measured artifact, at any batch size
    onnx.p99_ms > 20         only the ONNX artifact
    p50_ms@8 > 5             only at batch size 8
    accuracy_drop > 0.5      per artifact, against the baseline
    size_mb > 5

A gate over a metric that was not measured is a usage error, never a silent pass.
The baseline itself is gated only when it is the only model measured.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from .measure import BenchmarkRecord, GateCheck, LatencyRow, TargetRecord

# Metrics of one model, whatever the batch size.
MODEL_METRICS: dict[str, str] = {
    "size_mb": "raw size in MiB",
    "compressed_mb": "size in MiB as the archive stores it",
    "size_ratio": "compressed size / the baseline's",
    "load_ms": "load time in ms",
    "peak_rss_mb": "peak resident memory of a process running the model, MiB",
    "model_rss_mb": "peak memory above the runtime's own, MiB",
    "accuracy": "top-1 accuracy in % (eval data with labels)",
    "accuracy_drop": "accuracy points lost against the baseline",
    "top1_agreement": "% of top-1 predictions equal to the baseline's",
    "max_abs_diff": "largest output difference from the baseline",
    "cosine": "mean cosine similarity to the baseline's outputs, worst output",
}
# Metrics of one model at one batch size.
LATENCY_METRICS: dict[str, str] = {
    "mean_ms": "mean latency per call, ms",
    "p50_ms": "median latency, ms",
    "p90_ms": "90th percentile latency, ms",
    "p99_ms": "99th percentile latency, ms",
    "std_ms": "standard deviation of latency, ms",
    "iqr_ms": "interquartile range of latency, ms",
    "throughput": "rows per second, one stream",
    "latency_ratio": "p50 / the baseline's p50 at the same batch size",
}
METRICS = {**MODEL_METRICS, **LATENCY_METRICS}

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
}
GATE_RE = re.compile(
    r"^\s*(?:(?P<target>[A-Za-z][\w-]*)\.)?(?P<metric>[a-z0-9_]+)(?:@(?P<batch>\d+))?\s*"
    r"(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


@dataclass(frozen=True)
class Gate:
    text: str
    metric: str
    op: str
    value: float
    target: str | None = None
    batch: int | None = None


def parse(text: str) -> Gate:
    match = GATE_RE.match(text)
    if not match:
        raise UsageError(f"--fail-if '{text}': expected METRIC OP NUMBER, e.g. 'p99_ms > 20' or "
                         f"'onnx.p50_ms@8 > 5' (OP is one of > >= < <= == !=).")
    metric = match["metric"]
    if metric not in METRICS:
        raise UsageError(f"--fail-if '{text}': unknown metric '{metric}'. Valid: {', '.join(sorted(METRICS))}.")
    batch = int(match["batch"]) if match["batch"] else None
    if batch is not None and metric not in LATENCY_METRICS:
        raise UsageError(f"--fail-if '{text}': '{metric}' does not depend on the batch size; drop '@{batch}'.")
    return Gate(text.strip(), metric, match["op"], float(match["value"]), match["target"], batch)


def parse_all(texts: tuple[str, ...] | list[str]) -> list[Gate]:
    return [parse(t) for t in texts]


def _value(record: TargetRecord, metric: str) -> float | None:
    if metric == "size_mb":
        return float(record["size_bytes"]) / 2**20
    if metric == "compressed_mb":
        return float(record["compressed_bytes"]) / 2**20
    value = _field(record, metric)
    return None if value is None else float(value)


def _field(record: TargetRecord | LatencyRow, metric: str) -> Any:
    """A metric named by the user (a gate's text), so not a key the type checker can know."""
    fields: Mapping[str, Any] = record
    return fields.get(metric)


def evaluate(gates: list[Gate], result: BenchmarkRecord) -> list[GateCheck]:
    """Every check each gate made: one per model (and batch size), with `passed`."""
    records = result["targets"]
    gated = [r for r in records if not r["baseline"]] or records
    checks: list[GateCheck] = []
    for gate in gates:
        chosen = [r for r in gated if gate.target is None or r["name"] == gate.target]
        if gate.target is not None and not chosen:
            names = ", ".join(r["name"] for r in records)
            raise UsageError(f"--fail-if '{gate.text}': no model named '{gate.target}' was measured (measured: {names}).")
        for record in chosen:
            if gate.metric in LATENCY_METRICS:
                rows = [row for row in record["latency"] if gate.batch is None or row["batch_size"] == gate.batch]
                if not rows:
                    raise UsageError(f"--fail-if '{gate.text}': batch size {gate.batch} was not measured; "
                                     f"add it to --batch-sizes.")
                found: list[tuple[Any, int | None]] = [(_field(row, gate.metric), row["batch_size"]) for row in rows]
            else:
                found = [(_value(record, gate.metric), None)]
            for value, batch in found:
                if value is None:
                    raise UsageError(f"--fail-if '{gate.text}': {gate.metric} was not measured for "
                                     f"'{record['name']}' ({_why_missing(gate.metric)}).")
                failed = OPS[gate.op](float(value), gate.value)
                checks.append({"gate": gate.text, "model": record["name"], "batch_size": batch,
                               "value": round(float(value), 6), "passed": not failed})
    return checks


def check_measurable(gates: list[Gate], *, labels: bool, memory: bool = True, where: str = "--fail-if") -> None:
    """Refuse, before anything is measured, a gate whose metric this run cannot measure."""
    for gate in gates:
        if (gate.metric in ("accuracy", "accuracy_drop") and not labels) or \
                (gate.metric in ("peak_rss_mb", "model_rss_mb") and not memory):
            raise UsageError(f"{where} '{gate.text}': {gate.metric} cannot be measured in this run "
                             f"({_why_missing(gate.metric)}).")


def _why_missing(metric: str) -> str:
    if metric in ("accuracy", "accuracy_drop"):
        return "it needs --eval-data with labels, array 'y'"
    if metric in ("peak_rss_mb", "model_rss_mb"):
        return "memory is not measured with --no-memory"
    return "not available for this model"


def failures(checks: list[GateCheck]) -> list[str]:
    return [f"{c['gate']}: {c['model']}{'' if c['batch_size'] is None else ' @' + str(c['batch_size'])} "
            f"= {c['value']:g}" for c in checks if not c["passed"]]
