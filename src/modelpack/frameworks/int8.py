"""Choosing onnxruntime int8 per model: measure the candidates, keep the fastest that stays faithful.

No single int8 recipe wins on a CPU. On x86 with VNNI, static QDQ with uint8 activations and
per-channel int8 weights runs convolutions about twice as fast as float, while int8 activations
(S8S8) barely beat it and dynamic ConvInteger is several times slower; a transformer encoder is
fastest with dynamic per-channel MatMulInteger. So the `int8` method builds each candidate that can
apply, measures every one against the float model on the eval examples (fidelity of every output)
and in one interleaved timing loop (batch 1), and keeps the fastest that meets the fidelity target.

Which op types to quantize is measured too. When the graph has more than one group of weight ops (convolutions,
and MatMul/Gemm), the fastest recipe is built again with each group alone, each is timed against float, and the
union of the groups that beat float alone is a candidate as well: int8 MatMuls can be slower than float ones in
a CNN's head while its convolutions gain twofold, or the other way round.

When none meets it, an accuracy-aware fallback in the spirit of Intel Neural Compressor's tuning
keeps the most sensitive nodes in float: it runs the float and the quantized model once with every
quantized node's input and output exposed, ranks nodes by how much error each adds (output error
minus input error), and excludes the top 1, 2, 4, ... until the target holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import reason

WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
# The op-type groups a candidate may quantize alone (onnxruntime's `op_types_to_quantize`).
GROUPS: dict[str, tuple[str, ...]] = {"Conv": ("Conv",), "MatMul/Gemm": ("MatMul", "Gemm")}


@dataclass
class Candidate:
    """One way to quantize, and what measuring it found."""

    name: str
    method: str  # "static", "dynamic", "float" or "int4"
    quant_format: str = "QDQ"  # static only: QDQ or QOperator
    activations: str = "uint8"
    per_channel: bool = True
    excluded: list[str] = field(default_factory=list)
    path: Path | None = None
    speedup: float | None = None  # the worst over the timed batches
    speedup_by_batch: dict[int, float] | None = None
    cosine: float | None = None
    top1_agreement: float | None = None
    meets_target: bool = False
    error: str | None = None
    block_size: int | None = None  # int4 only
    accuracy_level: int | None = None  # int4 only: 0 float compute, 4 int8 compute
    size_bytes: int | None = None  # measured where size decides (int4), in the package's archive
    op_types: list[str] | None = None  # the only op types quantized; None: every one the recipe handles
    reduce_range: bool = False  # 7-bit weights (onnxruntime's reduce_range), for CPUs without VNNI

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        data["excluded"] = len(self.excluded)
        if self.method in ("static", "dynamic"):
            data["op_types"] = list(self.op_types) if self.op_types else "all"
        else:
            data.pop("reduce_range")
        return {k: v for k, v in data.items() if v is not None}


def groups(src: Path) -> dict[str, tuple[str, ...]]:
    """The op-type groups (GROUPS) that `src` has nodes of."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node}
    return {label: types for label, types in GROUPS.items() if ops & set(types)}


def restricted(base: Candidate, labels: list[str], path: Path) -> Candidate:
    """`base`'s recipe applied to the op types of the groups `labels` only."""
    types = [t for label in labels for t in GROUPS[label]]
    return replace(base, name=f"{base.name}, only {' and '.join(labels)}", op_types=types, excluded=[], path=path,
                   speedup=None, speedup_by_batch=None, cosine=None, top1_agreement=None, meets_target=False,
                   error=None)


@dataclass(frozen=True)
class Target:
    cosine: float = 0.98
    agreement: float = 98.0

    def met(self, cosine: float | None, agreement: float | None) -> bool:
        return (cosine is None or cosine >= self.cosine) and (agreement is None or agreement >= self.agreement)


def candidates(src: Path, calibration: Dataset | None) -> list[Candidate]:
    """The recipes worth measuring for this model."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node}
    found = []
    if calibration is not None and ops & {"Conv", "MatMul", "Gemm"}:
        found.append(Candidate("static QDQ, uint8 activations, per-channel int8 weights", "static", "QDQ"))
        found.append(Candidate("static QOperator, uint8 activations, per-channel int8 weights", "static", "QOperator"))
    if ops & {"MatMul", "Gemm"}:
        found.append(Candidate("dynamic, per-channel int8 weights", "dynamic"))
        found.append(Candidate("dynamic, per-channel 7-bit weights (reduce_range)", "dynamic", reduce_range=True))
    if not found:
        found.append(Candidate("dynamic, int8 weights", "dynamic", per_channel=False))
    return found


def build(candidate: Candidate, src: Path, out: Path, work: Path, calibration: Dataset | None,
          feeds: dict[str, np.ndarray]) -> list[str]:
    """Quantize `src` as `candidate` says, into `out`; returns notes."""
    from . import ort

    if candidate.method == "static":
        assert calibration is not None
        return ort.quantize_static(src, out, work, calibration, per_channel=candidate.per_channel,
                                   quant_format=candidate.quant_format, activations=candidate.activations,
                                   exclude=candidate.excluded, op_types=candidate.op_types,
                                   reduce_range=candidate.reduce_range)
    return ort.quantize_dynamic(src, out, per_channel=candidate.per_channel, feeds=feeds,
                                exclude=candidate.excluded, op_types=candidate.op_types,
                                reduce_range=candidate.reduce_range)


def sensitivity(float_path: Path, quant_path: Path, feeds: dict[str, np.ndarray], work: Path,
                only: set[str] | None = None) -> list[str]:
    """Quantizable nodes (or the nodes named in `only`), most error-adding first: each one's output error
    minus its input error."""
    import onnx

    model = onnx.load(str(float_path), load_external_data=False)
    nodes = [n for n in model.graph.node if n.name and (n.name in only if only is not None else n.op_type in WEIGHT_OPS)]
    tensors = sorted({t for n in nodes for t in (n.input[0], n.output[0])})
    errors: dict[str, float] = {}
    try:
        ref = _run_exposing(float_path, tensors, feeds, work / "float-exposed.onnx")
        got = _run_exposing(quant_path, tensors, feeds, work / "quant-exposed.onnx")
    except Exception:  # a graph that will not expose its tensors: fall back to graph order, last first
        return [n.name for n in reversed(nodes)]
    for name in tensors:
        if name in ref and name in got and ref[name].shape == got[name].shape:
            a, b = ref[name].astype(np.float64).ravel(), got[name].astype(np.float64).ravel()
            errors[name] = float(np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-12))
    added = {n.name: errors.get(n.output[0], 0.0) - errors.get(n.input[0], 0.0) for n in nodes}
    return sorted(added, key=lambda name: -added[name])


def _run_exposing(path: Path, tensors: list[str], feeds: dict[str, np.ndarray], out: Path) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as rt

    model = onnx.load(str(path))
    present = {o for n in model.graph.node for o in n.output}
    known = {o.name for o in model.graph.output}
    for name in tensors:
        if name in present and name not in known:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    onnx.save(model, str(out))
    opts = rt.SessionOptions()
    opts.log_severity_level = 4  # run errors become exceptions with the message; no log line too
    session = rt.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {n: np.asarray(v) for n, v in zip(names, session.run(names, feeds)) if v is not None}


def tune(src: Path, work: Path, calibration: Dataset | None, feeds: dict[str, np.ndarray],
         measure: Callable[[Path], tuple[float | None, float | None]],
         time_all: Callable[[list[Path]], list[float]], target: Target,
         note: Callable[[str], None], max_rounds: int = 6) -> tuple[Candidate, list[Candidate], list[str]]:
    """Build and measure every candidate, then fall back node by node if none meets `target`.

    `measure(path)` returns (cosine, top-1 agreement) against the float model; `time_all(paths)` the
    speedup of each over float, timed interleaved in one loop. Returns the chosen candidate, all that
    were measured, and notes."""
    from . import ort

    notes: list[str] = []
    # Name every node once, so the names the fallback excludes mean the same nodes in every candidate.
    src, _ = ort._name_nodes_and_find_heads(src, work / "int8-named.onnx")
    tried = candidates(src, calibration)
    for index, candidate in enumerate(tried):
        candidate.path = work / f"int8-{index}.onnx"
        _build_and_check(candidate, src, work, calibration, feeds, measure, target, notes)
    _time(tried, time_all)
    for c in tried:
        _say(c, note)
    tried += by_group(src, work, tried, calibration, feeds, measure, time_all, target, note, notes)
    usable = [c for c in tried if c.error is None]
    if not usable:
        raise ValueError("no int8 recipe could quantize this model: " + "; ".join(f"{c.name}: {c.error}" for c in tried))
    good = [c for c in usable if c.meets_target]
    if good:
        return fastest_then_closest(good), tried, notes
    # Accuracy-aware fallback from the most faithful candidate that beats float (else the fastest): keep the
    # nodes that add the most error in float until the target holds.
    faster = [c for c in usable if (c.speedup or 0.0) > 1.0]
    base = (max(faster, key=lambda c: (_score(c.cosine), _score(c.top1_agreement, 100.0))) if faster
            else max(usable, key=lambda c: c.speedup or 0.0))
    assert base.path is not None
    ranked = sensitivity(src, base.path, feeds, work)
    count = 1
    best = base
    for round_ in range(max_rounds):
        if count > len(ranked):
            break
        trial = replace(base, name=f"{base.name}, {count} most sensitive node(s) kept in float",
                        excluded=ranked[:count], path=work / f"int8-fallback-{round_}.onnx", speedup=None,
                        speedup_by_batch=None, cosine=None, top1_agreement=None, meets_target=False, error=None)
        _build_and_check(trial, src, work, calibration, feeds, measure, target, notes)
        tried.append(trial)
        if trial.error is None:
            _time([trial], time_all)
            note(f"int8 fallback: {count} node(s) in float: {trial.speedup:.2f}× float speed, cosine "
                 f"{_fmt(trial.cosine)}, agreement {_fmt(trial.top1_agreement)}")
            best = trial
            if trial.meets_target:
                return trial, tried, notes
        count *= 2
    kept = fastest_of_closest([c for c in tried if c.error is None])
    notes.append(f"no int8 recipe met the fidelity target (cosine ≥ {target.cosine:g}, agreement ≥ "
                 f"{target.agreement:g}%); kept the fastest of the closest: {kept.name} (last fallback tried: "
                 f"{best.name})")
    return kept, tried, notes


def by_group(src: Path, work: Path, tried: list[Candidate], calibration: Dataset | None,
             feeds: dict[str, np.ndarray], measure: Callable[[Path], tuple[float | None, float | None]],
             time_all: Callable[[list[Path]], list[float]], target: Target, note: Callable[[str], None],
             notes: list[str]) -> list[Candidate]:
    """The fastest recipe with each op-type group alone, then the union of the groups that beat float alone.

    Only when the graph has more than one group: one candidate per group (and at most one union), not a copy
    of every recipe. The base is the fastest faithful recipe (else the fastest), timed again in the same loop as
    its restrictions so that they compare."""
    present = groups(src)
    usable = [c for c in tried if c.error is None and c.speedup is not None]
    if len(present) < 2 or not usable:
        return []
    faithful = [c for c in usable if c.meets_target]
    base = max(faithful or usable, key=lambda c: c.speedup or 0.0)
    found = [restricted(base, [label], work / f"int8-group-{index}.onnx") for index, label in enumerate(present)]
    for c in found:
        _build_and_check(c, src, work, calibration, feeds, measure, target, notes)
    _time([base, *found], time_all)
    won = [label for label, c in zip(present, found) if c.error is None and (c.speedup or 0.0) > 1.0]
    if 1 < len(won) < len(present):  # a union that is neither one group (measured) nor all of them (the base)
        union = restricted(base, won, work / "int8-group-union.onnx")
        _build_and_check(union, src, work, calibration, feeds, measure, target, notes)
        _time([union], time_all)
        found.append(union)
    for c in found:
        _say(c, note)
    alone = "; ".join(f"{label} {_speed(c)}" for label, c in zip(present, found))
    notes.append(f"int8 op types, each group alone with {base.name} ({_speed(base)} with all): {alone}; "
                 + (f"{' and '.join(won)} beat float" if won else "none beat float"))
    note(notes[-1])
    return found


def _speed(c: Candidate) -> str:
    return f"failed ({c.error})" if c.error else f"{c.speedup or 0.0:.2f}× float speed"


def _say(c: Candidate, note: Callable[[str], None]) -> None:
    note(f"int8 candidate: {c.name}: " + (f"failed ({c.error})" if c.error else
         f"{c.speedup:.2f}× float speed, cosine {_fmt(c.cosine)}, agreement {_fmt(c.top1_agreement)}"))


CLOSE_COSINE = 0.002  # candidates this close in cosine (and CLOSE_POINTS in agreement) are equally faithful
CLOSE_POINTS = 1.0


CLOSE_SPEED = 0.03  # faithful candidates this close in speed to the fastest are equally fast: timing noise


def fastest_then_closest(good: list[Candidate]) -> Candidate:
    """Among faithful candidates within CLOSE_SPEED of the fastest, the most faithful: a 7-bit twin of a recipe
    timed 1% faster within noise should not win over the 8-bit one that keeps the closer outputs."""
    top = max(c.speedup or 0.0 for c in good)
    close = [c for c in good if (c.speedup or 0.0) >= top * (1 - CLOSE_SPEED)]
    return max(close, key=lambda c: (_score(c.cosine), _score(c.top1_agreement, 100.0), c.speedup or 0.0))


def fastest_of_closest(usable: list[Candidate]) -> Candidate:
    """Among candidates within a hair of the most faithful one, the fastest: a cosine 0.0002 better is not
    worth a model ten times slower."""
    top = max(usable, key=lambda c: (_score(c.cosine), _score(c.top1_agreement, 100.0)))
    close = [c for c in usable if _score(c.cosine) >= _score(top.cosine) - CLOSE_COSINE
             and _score(c.top1_agreement, 100.0) >= _score(top.top1_agreement, 100.0) - CLOSE_POINTS]
    return max(close, key=lambda c: c.speedup or 0.0)


def _build_and_check(candidate: Candidate, src: Path, work: Path, calibration: Dataset | None,
                     feeds: dict[str, np.ndarray], measure: Callable[[Path], tuple[float | None, float | None]],
                     target: Target, notes: list[str]) -> None:
    from . import ort

    assert candidate.path is not None
    try:
        for line in build(candidate, src, candidate.path, work, calibration, feeds):
            if line not in notes:
                notes.append(line)
        ort.check_loads(candidate.path, "quantize", feeds)
        candidate.cosine, candidate.top1_agreement = measure(candidate.path)
        candidate.meets_target = target.met(candidate.cosine, candidate.top1_agreement)
    except Exception as exc:  # a recipe that does not apply to this graph is a measured outcome, not a failure
        candidate.error = reason(exc, 200)


def _time(tried: list[Candidate], time_all: Callable[[list[Path]], list[float]]) -> None:
    ready = [c for c in tried if c.error is None and c.path is not None]
    if ready:
        for candidate, speedup in zip(ready, time_all([c.path for c in ready if c.path is not None])):
            candidate.speedup = round(speedup, 3)


def _score(value: float | None, perfect: float = 1.0) -> float:
    return perfect if value is None else value


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
