"""Size, accuracy and latency of optimization variants of the bundled digits CNN, in one run.

    .venv/bin/python benchmarks/optimize_bench.py [--codec deflate|lzma] [--iterations 300] [--json out.json]

Every variant goes through the real pipeline (`modelpack.pipeline.run`). Sizes are of
the package's ONNX artifact, raw and compressed with the same codec as the original
model file; ratios are against the original `.keras` compressed with that codec.
Latencies are onnxruntime batch-1 medians, timed interleaved across all variants in the
same loop, so drift on a shared machine hits them all alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digits"
TRAIN = str(EXAMPLE / "train.npz")

VARIANTS: dict[str, list[tuple[str, dict]]] = {
    "float ONNX (export only)": [("export", {"format": ["onnx"]})],
    "int8 (dynamic)": [("export", {"format": ["onnx"]}), ("quantize", {"method": "dynamic"})],
    "int8 (tuned: quantize's default)": [("export", {"format": ["onnx"]}), ("quantize", {})],
    "int8 (static QDQ, per-channel)": [("export", {"format": ["onnx"]}),
                                       ("quantize", {"method": "static", "per_channel": True})],
    "prune 80% fine-tuned + int8": [("prune", {"sparsity": 0.8, "train_data": TRAIN}),
                                    ("export", {"format": ["onnx"]}), ("quantize", {"method": "dynamic"})],
    "prune 80% fine-tuned + static int8": [("prune", {"sparsity": 0.8, "train_data": TRAIN}),
                                           ("export", {"format": ["onnx"]}),
                                           ("quantize", {"method": "static", "per_channel": True})],
    "cluster 16 fine-tuned + int8": [("compress", {"clusters": 16, "train_data": TRAIN}),
                                     ("export", {"format": ["onnx"]}), ("quantize", {"method": "dynamic"})],
}
TARGETS = {  # variant -> (minimum compressed-size ratio, maximum accuracy drop), from the optimization issue
    "int8 (dynamic)": (3.5, 1.0),
    "prune 80% fine-tuned + int8": (10.0, 1.0),
    "cluster 16 fine-tuned + int8": (8.0, 1.0),
}


def _speed(latency_ratio: float) -> str:
    """One convention for speed everywhere: "N× faster" or "N× slower" than the baseline."""
    if latency_ratio <= 0:
        return "-"
    return f"{1 / latency_ratio:.2f}× faster" if latency_ratio <= 1 else f"{latency_ratio:.2f}× slower"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", choices=["deflate", "lzma"], default="deflate")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from modelpack.package import Package
    from modelpack.package.archive import compressed_size
    from modelpack.pipeline import PipelineSpec, StageSpec, run
    from modelpack.runtimes import OnnxRunner
    from modelpack.timing import interleaved_latencies

    source = EXAMPLE / "model.keras"
    base_raw = source.stat().st_size
    base_packed = compressed_size(source, args.codec)
    rows = []
    runners = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, stages in VARIANTS.items():
            t0 = time.perf_counter()
            spec = PipelineSpec(input=source, output=Path(tmp) / label.replace(" ", "_").replace("%", ""),
                                stages=[StageSpec(n, p) for n, p in stages], eval_data=EXAMPLE / "eval.npz")
            result = run(spec)
            pkg = Package.load(result.output)
            entry = pkg.artifact("onnx")
            path = pkg.path_of(entry)
            raw, packed = path.stat().st_size, compressed_size(path, args.codec)
            measured = entry["measured"]
            source_acc = result.manifest["lineage"]["source"]["metrics"]["accuracy"]
            rows.append({
                "variant": label, "raw_bytes": raw, "compressed_bytes": packed,
                "ratio_vs_original_compressed": round(base_packed / packed, 2),
                "accuracy": measured.get("accuracy"), "source_accuracy": source_acc,
                "accuracy_drop": measured.get("accuracy_drop", 0.0),
                "pipeline_seconds": round(time.perf_counter() - t0, 1),
            })
            runners.append(OnnxRunner(path.read_bytes(), pkg.signature))
            print(f"built {label} in {rows[-1]['pipeline_seconds']} s", file=sys.stderr)

        x = np.load(EXAMPLE / "eval.npz")["x"][:1]
        latencies = interleaved_latencies(runners, {"image": x}, iterations=args.iterations, warmup=20)
    float_p50 = float(np.median(latencies[0]))
    for row, samples in zip(rows, latencies):
        row["ort_p50_ms"] = round(float(np.median(samples)), 4)
        row["ort_p90_ms"] = round(float(np.percentile(samples, 90)), 4)
        row["latency_vs_float"] = round(float(np.median(samples)) / float_p50, 2)

    print(f"\noriginal: {source.name}, {base_raw / 1024:.1f} KB raw, {base_packed / 1024:.1f} KB {args.codec}, "
          f"accuracy {rows[0]['source_accuracy']:.2f}% on {EXAMPLE.name}/eval.npz\n")
    header = ("variant", "raw KB", f"{args.codec} KB", "smaller", "accuracy %", "drop", "ORT p50 ms", "speed vs float")
    lines = [header] + [(r["variant"], f"{r['raw_bytes'] / 1024:.1f}", f"{r['compressed_bytes'] / 1024:.1f}",
                         f"{r['ratio_vs_original_compressed']:.1f}×", f"{r['accuracy']:.2f}",
                         f"{r['accuracy_drop']:.2f}", f"{r['ort_p50_ms']:.3f}", _speed(r["latency_vs_float"]))
                        for r in rows]
    print("| " + " | ".join(lines[0]) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for line in lines[1:]:
        print("| " + " | ".join(line) + " |")
    failed = []
    for row in rows:
        if row["variant"] in TARGETS:
            ratio, drop = TARGETS[row["variant"]]
            ok = row["ratio_vs_original_compressed"] >= ratio and row["accuracy_drop"] <= drop
            print(f"target {row['variant']}: >= {ratio}x and drop <= {drop}: {'met' if ok else 'MISSED'}")
            if not ok:
                failed.append(row["variant"])
    if args.json:
        args.json.write_text(json.dumps({"codec": args.codec, "original_bytes": base_raw,
                                         "original_compressed_bytes": base_packed, "rows": rows}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
