"""int8 against float on real models, in one run: does `quantize` (method int8) pay on this CPU?

    python benchmarks/int8_bench.py

For the transformer encoder (all-MiniLM-L6-v2, sequence 128) and MobileNetV2 (224×224) from the
corpus: the float ONNX model, and the package `modelpack optimize ... quantize` makes from it (the
recipe it chose, with its measured candidates). Both are timed interleaved in one loop at batch 1 and
8, on one intra-op thread and on all of them, and compared on the eval examples (mean cosine of the
worst output, top-1 agreement). Prints a markdown table; the int8 table in docs/corpus.md comes from here.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import corpus  # noqa: E402

ROUNDS = 7


def float_onnx(model: corpus.CorpusModel, work: Path) -> Path:
    """The corpus model as float ONNX (Keras models go through modelpack's own export)."""
    if model.path.suffix == ".onnx":
        return model.path
    _cli("optimize", model.path, "-o", work / "float", "--eval-data", model.eval_data, "-q", "export")
    return work / "float" / "model.onnx"


def _cli(*args: Any) -> str:
    from click.testing import CliRunner

    from modelpack.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(result.output)
    return result.output


def timed(paths: list[Path], feeds: dict[str, np.ndarray], threads: int | None) -> list[float]:
    """p50 ms of each model, calls interleaved round by round so drift hits all alike."""
    import onnxruntime as ort

    sessions = []
    for path in paths:
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        sessions.append(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]))
    for s in sessions:
        for _ in range(5):
            s.run(None, feeds)
    start = time.perf_counter()
    sessions[0].run(None, feeds)
    calls = max(5, min(200, int(0.4 / max(time.perf_counter() - start, 1e-4))))
    samples: list[list[float]] = [[] for _ in sessions]
    for _ in range(ROUNDS):
        for i, s in enumerate(sessions):
            for _ in range(calls):
                t0 = time.perf_counter_ns()
                s.run(None, feeds)
                samples[i].append((time.perf_counter_ns() - t0) / 1e6)
    return [float(np.median(s)) for s in samples]


def bench(name: str, model: corpus.CorpusModel, work: Path) -> list[dict[str, Any]]:
    from modelpack.data import load_dataset
    from modelpack.evaluation import fidelity, run_batched, token_mask
    from modelpack.formats import ModelRef, Repr
    from modelpack.inspection import signature_of
    from modelpack.runtimes import load_runner

    source = float_onnx(model, work)
    start = time.perf_counter()
    _cli("optimize", source, "-o", work / "int8", "--eval-data", model.eval_data, "-q", "quantize")
    quantize_s = time.perf_counter() - start
    manifest = json.loads((work / "int8" / "modelpack.json").read_text())
    stage = manifest["lineage"]["stages"][-1]["metrics"]
    quantized = work / "int8" / "model.onnx"
    signature = signature_of(ModelRef(Repr.ONNX, source))
    data = load_dataset(model.eval_data, signature).head(128)
    ref = run_batched(load_runner(ModelRef(Repr.ONNX, source), signature), data)
    got = run_batched(load_runner(ModelRef(Repr.ONNX, quantized), signature), data)
    quality = fidelity(ref, got, token_mask(data.inputs))
    rows = []
    for batch in (1, 8):
        feeds = {k: np.ascontiguousarray(v) for k, v in data.take(np.arange(batch) % len(data)).inputs.items()}
        for threads in (1, None):
            float_ms, int8_ms = timed([source, quantized], feeds, threads)
            rows.append({"model": name, "batch": batch, "threads": threads or os.cpu_count(),
                         "float_ms": float_ms, "int8_ms": int8_ms, "speedup": float_ms / int8_ms,
                         "cosine": quality.get("cosine"), "agreement": quality.get("top1_agreement"),
                         "recipe": stage["chosen"], "candidates": stage["candidates"],
                         "quantize_s": quantize_s})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | batch | threads | float p50 ms | int8 p50 ms | speedup | cosine | top-1 agreement | recipe chosen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agreement = "-" if r["agreement"] is None else f"{r['agreement']:.1f}%"
        lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['float_ms']:.2f} | {r['int8_ms']:.2f} | "
                     f"{r['speedup']:.2f}× | {r['cosine']:.4f} | {agreement} | {r['recipe']} |")
    return "\n".join(lines)


def main() -> None:
    models = {"all-MiniLM-L6-v2, seq 128": corpus.minilm(seq=128), "MobileNetV2 224×224": corpus.mobilenetv2()}
    rows: list[dict[str, Any]] = []
    for name, model in models.items():
        with tempfile.TemporaryDirectory() as tmp:
            rows += bench(name, model, Path(tmp))
    print(markdown(rows))
    print()
    for name in models:
        first = next(r for r in rows if r["model"] == name)
        print(f"{name}: quantize took {first['quantize_s']:.1f} s; candidates measured:")
        for c in first["candidates"]:
            state = c.get("error") or (f"{c.get('speedup', 0):.2f}× float, cosine {c.get('cosine', float('nan')):.4f}"
                                       + (f", agreement {c['top1_agreement']:.1f}%" if "top1_agreement" in c else ""))
            print(f"  {'*' if c['chosen'] else ' '} {c['name']}: {state}")
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "int8_bench.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
