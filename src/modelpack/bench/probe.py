"""Load time and peak memory of one model, measured in a fresh process.

Runtimes share a process's memory, so the only honest peak RSS of one runtime
is taken in a process of its own. The parent runs

    python -m modelpack.bench.probe '{"format": ..., "path": ..., "signature": ..., "batch": N}'

and reads one JSON line back: the load time, the RSS after importing the runtime
(the base), and the peak RSS after loading and running the model.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..formats import Repr, detect
from ..signature import Signature

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20


def peak_rss_mb() -> float:
    """This process's high-water RSS. Not getrusage's ru_maxrss: that carries over the parent's peak
    across fork and exec, so a small child started by a big parent would report the parent's size."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _import_runtime(rep: Repr) -> None:
    if rep is Repr.ONNX:
        import onnxruntime  # noqa: F401
    else:
        from ..frameworks import tf

        tf.tensorflow()


def probe(request: dict[str, Any]) -> dict[str, Any]:
    """Load the model, run it a few times at `batch`, and report time and memory."""
    from ..data import random_inputs
    from ..runtimes import load_runner

    rep = Repr(request["format"])
    _import_runtime(rep)
    ref = detect(request["path"])
    signature = Signature.from_dict(request["signature"])
    base = rss_mb()
    start = time.perf_counter()
    runner = load_runner(ref, signature, threads=request.get("threads"), safe=request.get("safe", True))
    load_ms = (time.perf_counter() - start) * 1e3
    feeds = random_inputs(signature, batch=int(request.get("batch", 1)))
    for _ in range(3):
        runner.run(feeds)
    peak = peak_rss_mb()
    return {"load_ms": round(load_ms, 3), "base_rss_mb": round(base, 1), "peak_rss_mb": round(peak, 1),
            "model_rss_mb": round(max(peak - base, 0.0), 1)}


def run_probe(fmt: str, path: Path, signature: Signature, batch: int, threads: int | None, safe: bool,
              timeout: float = 300.0) -> dict[str, Any] | str:
    """The probe's result, or a one-line reason it failed."""
    request = {"format": fmt, "path": str(path), "signature": signature.to_dict(), "batch": batch,
               "threads": threads, "safe": safe}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        proc = subprocess.run([sys.executable, "-m", "modelpack.bench.probe", json.dumps(request)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"the memory probe timed out after {timeout:.0f} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return f"the memory probe failed: {tail}"
    found: dict[str, Any] | str = json.loads(lines[-1])
    return found


if __name__ == "__main__":  # pragma: no cover - exercised through run_probe in a subprocess
    result = probe(json.loads(sys.argv[1]))
    sys.stdout.write(json.dumps(result) + "\n")
