"""What a package's numbers say, in words, the same way everywhere (the CLI, the report, the API's users).

One convention for every comparison: "N× faster" or "N× slower", "N× smaller" or "N× larger", and accuracy
as a difference in points. A headline puts a package's main numbers on one line. A stage's parameters are
shown only where they differ from the stage's defaults, so no table lists settings a stage did not use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _compare(base: float | None, value: float | None, less: str, more: str, same: str) -> str:
    if not base or not value:
        return "-"
    if abs(value / base - 1) < 0.005:
        return same
    return f"{base / value:.3g}× {less}" if value <= base else f"{value / base:.3g}× {more}"


def faster(base_ms: float | None, ms: float | None) -> str:
    """How the time `ms` compares with `base_ms`."""
    return _compare(base_ms, ms, "faster", "slower", "same speed")


def faster_ratio(ratio: float | None) -> str:
    """A time over the baseline's time (what benchmark records as latency_ratio)."""
    return "-" if not ratio else faster(1.0, ratio)


def smaller(base: float | None, size: float | None) -> str:
    return _compare(base, size, "smaller", "larger", "same size")


def points(diff: float | None) -> str:
    """An accuracy difference in percentage points, with a real minus sign."""
    if diff is None:
        return "-"
    return f"{round(diff, 2) + 0.0:+.2f} pt".replace("-", "−")  # + 0.0: no "-0.00"


def headline(parts: Iterable[str | None]) -> str:
    return " · ".join(p for p in parts if p and p != "-")


def _gates(checks: list[dict[str, Any]] | None) -> str | None:
    if not checks:
        return None
    passed = sum(1 for c in checks if c["passed"])
    return f"gates {passed}/{len(checks)} passed"


FORMAT_NAMES = {"keras": "Keras", "savedmodel": "SavedModel", "onnx": "ONNX", "tflite": "TFLite"}


def baseline_phrase(result: Mapping[str, Any]) -> str:
    """What a benchmark's ratios are against, in words: "vs the Keras model's own call"."""
    base = next((t for t in result["targets"] if t["baseline"]), None)
    if base is None:
        return ""
    kind = FORMAT_NAMES.get(base["format"], base["format"])
    if base["name"] == "original":
        return f"vs the {kind} model's own call" if base["format"] in ("keras", "savedmodel") else \
            f"vs the original {kind} model"
    if base["name"] == "baseline":
        return f"vs the baseline {kind} model"
    return f"vs the package's {kind} artifact"


def float_export(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The package's model against its float export, as the last quantize stage timed them interleaved
    (batch 1, onnxruntime's default threads); None when no quantize stage ran and kept its output."""
    for record in reversed(manifest.get("lineage", {}).get("stages", [])):
        metrics = record.get("metrics", {})
        if record["name"] != "quantize" or record.get("status", "ok") != "ok" or not metrics.get("quantized_p50_ms"):
            continue
        timed = metrics.get("timed_at", {})
        return {"format": record.get("output_format"), "float_p50_ms": metrics["float_p50_ms"],
                "p50_ms": metrics["quantized_p50_ms"], "batch_size": timed.get("batch", 1),
                "threads": timed.get("threads", "onnxruntime default"), "stage": "quantize"}
    return None


def _float_export_part(found: Mapping[str, Any] | None, fmt: str) -> str | None:
    if not found or found.get("format") != fmt:
        return None
    kind = FORMAT_NAMES.get(fmt, fmt)
    return (faster(found["float_p50_ms"], found["p50_ms"]) + f" vs the float {kind} export "
            f"(p50 @{found['batch_size']}, timed by quantize)")


def benchmark_headline(result: Mapping[str, Any]) -> str:
    """The first measured model against the baseline (named), and against its float export when the package's
    lineage timed one: size, p50 at the first batch size, accuracy, gates."""
    others = [t for t in result["targets"] if not t["baseline"]]
    if not others:
        return headline([_gates(result.get("gates"))]) or "measured the baseline only"
    best = others[0]
    first = best["latency"][0]
    return headline([
        f"{best['name']}: " + smaller(1.0, best.get("size_ratio")),
        faster_ratio(first.get("latency_ratio")) + f" p50 @{first['batch_size']} {baseline_phrase(result)}".rstrip()
        if first.get("latency_ratio") else None,
        _float_export_part(result.get("float_export"), best["format"]),
        points(-best["accuracy_drop"]) + " accuracy" if best.get("accuracy_drop") is not None else None,
        _gates(result.get("gates")),
    ])


def optimize_headline(manifest: Mapping[str, Any]) -> str:
    """The package against the model it came from: size, speed (when a benchmark ran), accuracy, gates."""
    source = manifest["lineage"]["source"]
    src = source.get("metrics", {})
    best = manifest["artifacts"][0]
    size = (best.get("compressed_size") or best["size"]) + sum(  # with its external data, as the source counts it
        f.get("compressed_size") or f.get("size", 0) for f in best.get("files", []))
    parts: list[str | None] = [smaller(src.get("compressed_bytes") or source.get("size"), size)]
    bench = manifest.get("benchmark") or next((r["metrics"]["benchmark"] for r in reversed(manifest["lineage"]["stages"])
                                               if r["name"] == "benchmark" and r.get("status", "ok") == "ok"), None)
    if bench:
        others = [t for t in bench["targets"] if not t["baseline"]]
        if others and others[-1]["latency"][0].get("latency_ratio"):
            row = others[-1]["latency"][0]
            parts.append(faster_ratio(row["latency_ratio"]) + f" p50 @{row['batch_size']} {baseline_phrase(bench)}".rstrip())
    parts.append(_float_export_part(float_export(manifest), best["format"]))
    measured = best.get("measured") or {}
    if measured.get("accuracy_drop") is not None:
        parts.append(points(-measured["accuracy_drop"]) + " accuracy")
    elif measured.get("top1_agreement") is not None:
        parts.append(f"{measured['top1_agreement']:.1f}% top-1 agreement")
    objective = manifest["lineage"].get("objective")
    if objective and any(r["name"] in ("quantize", "compress") for r in manifest["lineage"]["stages"]):
        parts.append(f"objective {objective}")
    skipped = [r["name"] for r in manifest["lineage"]["stages"] if r.get("status", "ok") != "ok"]
    if skipped:
        parts.append(f"skipped: {', '.join(skipped)}")
    if bench:
        parts.append(_gates(bench.get("gates")))
    return headline(parts)



def _differs(value: Any, default: Any) -> bool:
    if isinstance(default, tuple):
        default = list(default)
    return bool(value != default)



def changed_params(record: Mapping[str, Any], defaults: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A lineage record's parameters that are set and differ from its stage's defaults
    (`stages.registry.defaults_of(lineage)`)."""
    known = defaults.get(record["name"], {})
    return {k: v for k, v in record["params"].items()
            if v not in (None, [], "", False) and _differs(v, known.get(k, object()))}
