"""Wall time and peak memory of `optimize` against the plain framework steps, in one run.

    python benchmarks/scale_bench.py [--models mobilenetv2,resnet50,vgg16] [--json out.json]

For each model (keras.applications, `weights=None`, saved as Keras 3 `.keras`), two ways to get a
dynamic-int8 ONNX model, each step in its own fresh process so that its peak RSS is its own:

- plain: Keras `model.export()` to a SavedModel; `python -m tf2onnx.convert --saved-model`;
  onnxruntime's `quantize_dynamic`;
- modelpack: `modelpack optimize MODEL -o OUT --eval-data X.npz export --format onnx quantize --method dynamic`,
  which also checks parity, measures fidelity on the eval data and writes a verified package.

Peak RSS comes from `wait4()`, which reports the largest resident set of the process and of every
descendant it waited for, so modelpack's conversion children count. Prints a markdown table; the
the scale table in docs/corpus.md comes from here. Targets (the scale issue): modelpack's peak RSS at most 1.2x
the largest plain step, its wall time at most 1.5x the plain steps together.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FACTORIES = {"mobilenetv2": "MobileNetV2", "resnet50": "ResNet50", "vgg16": "VGG16", "resnet152v2": "ResNet152V2"}
EVAL_EXAMPLES = 16


@dataclass
class Step:
    name: str
    seconds: float
    peak_mb: float  # the largest resident set of any one process of the step (wait4)
    tree_peak_mb: float  # the largest sum over the step's processes alive at once (sampled every 20 ms)
    failed: str | None = None


def _tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and all its descendants, from /proc."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total / 2**20


def measured(name: str, argv: list[str], env: dict[str, str] | None = None, may_fail: bool = False) -> Step:
    """Run argv to completion in a fresh process; its wall time and peak memory (see Step)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    tree_peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            tree_peak[0] = max(tree_peak[0], _tree_rss_mb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stderr is not None
    output = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    step = Step(name, seconds, usage.ru_maxrss / 1024, max(tree_peak[0], usage.ru_maxrss / 1024))
    if proc.returncode != 0:
        why = "killed by SIGKILL (out of memory)" if proc.returncode == -9 else f"exit code {proc.returncode}"
        if not may_fail:
            raise SystemExit(f"{name} failed ({why}):\n{output.decode(errors='replace')[-3000:]}")
        step.failed = why
    return step


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def build(name: str, work: Path) -> tuple[Path, Path, int]:
    """The model's .keras file and eval data, built in a child process; and its parameter count."""
    model = work / f"{name}.keras"
    data = work / f"{name}-eval.npz"
    counted = work / f"{name}.params"
    code = f"""
import numpy as np, keras
keras.utils.set_random_seed(0)
m = keras.applications.{FACTORIES[name]}(weights=None, input_shape=(224, 224, 3), classes=1000)
m.save({str(model)!r})
np.savez({str(data)!r}, x=np.random.default_rng(0).uniform(-1, 1, ({EVAL_EXAMPLES}, 224, 224, 3)).astype('float32'))
open({str(counted)!r}, 'w').write(str(m.count_params()))
"""
    measured(f"build {name}", python(code))
    return model, data, int(counted.read_text())


def plain_steps(model: Path, work: Path) -> list[Step]:
    saved = work / "plain_saved_model"
    onnx_path = work / "plain.onnx"
    export = f"""
import keras
keras.saving.load_model({str(model)!r}, compile=False).export({str(saved)!r}, format="tf_saved_model", verbose=False)
"""
    quantize = f"""
from onnxruntime.quantization import quantize_dynamic
quantize_dynamic({str(onnx_path)!r}, {str(work / 'plain-int8.onnx')!r})
"""
    steps = [measured("Keras export()", python(export)),
             measured("tf2onnx.convert", [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved),
                                          "--output", str(onnx_path), "--opset", "17"], may_fail=True)]
    if steps[-1].failed is None:
        steps.append(measured("quantize_dynamic", python(quantize)))
    return steps


def modelpack_run(model: Path, data: Path, work: Path) -> Step:
    return measured("modelpack optimize", [
        str(BIN / "modelpack"), "optimize", str(model), "-o", str(work / "mp"), "--eval-data", str(data), "-q",
        "export", "--format", "onnx", "quantize", "--method", "dynamic",
    ])


def _gb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB"


def table(rows: list[dict]) -> str:
    lines = ["| model | parameters | `.keras` | plain steps: wall | plain: largest peak RSS | modelpack: wall | "
             "modelpack: peak RSS (all its processes) | wall vs plain (target ≤1.5×) | peak vs plain (target ≤1.2×) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        plain = [Step(**s) for s in r["plain"]]
        ours = Step(**r["modelpack"])
        biggest = max(plain, key=lambda s: s.tree_peak_mb)
        failed = [s for s in plain if s.failed]
        wall = " + ".join(f"{s.seconds:.1f}" for s in plain)
        plain_wall = (f"did not finish: {failed[0].name} {failed[0].failed} after {failed[0].seconds:.0f} s"
                      if failed else f"{sum(s.seconds for s in plain):.1f} s ({wall})")
        plain_peak = f"{'≥ ' if failed else ''}{_gb(biggest.tree_peak_mb)} ({biggest.name})"
        wall_ratio = "-" if failed else f"{ours.seconds / sum(s.seconds for s in plain):.2f}×"
        peak_ratio = f"{'≤ ' if failed else ''}{ours.tree_peak_mb / biggest.tree_peak_mb:.2f}×"
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {r['file_mb']:.0f} MB | {plain_wall} | "
                     f"{plain_peak} | {ours.seconds:.1f} s | {_gb(ours.tree_peak_mb)} | {wall_ratio} | {peak_ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenetv2,resnet50,vgg16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            model, data, params = build(name, work)
            plain = plain_steps(model, work)
            ours = modelpack_run(model, data, work)
            rows.append({"model": name, "parameters": params, "file_mb": model.stat().st_size / 1e6,
                         "plain": [asdict(s) for s in plain], "modelpack": asdict(ours)})
            print(f"{name}: " + ", ".join(f"{s.name} {s.seconds:.1f} s {_gb(s.tree_peak_mb)}"
                                          + (f" ({s.failed})" if s.failed else "") for s in plain + [ours]),
                  file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
