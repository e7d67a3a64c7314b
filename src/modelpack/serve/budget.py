"""The server's CPU and memory budgets: how many intra-op threads the models share, and how much memory they hold.

**CPU.** Every onnxruntime session makes its own intra-op pool, one thread per core by default, so N models (or
N `--workers` processes) start N x cores threads that spin against each other (onnxruntime#23523). onnxruntime
1.32's Python API does offer one process-wide pool (`onnxruntime.capi._pybind_state.set_global_thread_pool_sizes`
before the first session, then `SessionOptions.use_per_session_threads = False`), but once it exists *every*
session must use it: a session with its own threads fails to load ("use_per_session_threads must be false when
using a global thread pool"). That rules out the one-thread session `ServedModel.prefer_one_thread` picks for
models that take microseconds, which runs them faster than any pool (a 64-256-256-10 MLP at batch 1: 33 us on
a one-thread session, 66 us on a global pool of 2, 40 us on a global pool of 1, this 2-core machine, shared).
So the budget is shared instead: a session that names no thread count gets `cores // workers` intra-op threads
(not one per core in every worker), and a model that runs faster on one thread still gets one. With `--workers
2` on 2 cores that is one thread per session: no pools at all. `--threads` (or a thread count the package's
session settings recorded) wins, as before.

**Memory.** A model's memory is measured, not guessed: the process's resident memory (VmRSS) just before its load
and just after its warm-up, the difference being what the process paid for it (weights, onnxruntime's arena and
pre-packed weights, the warm-up's buffers; any runtime, TFLite too). onnxruntime's arena statistics are not in
its Python API, so "arena + file size" cannot be read, only guessed. The delta is floored at the artifact's file
size: a load that reuses heap freed by an evicted model would otherwise look free. The runtime's one-time set-up
(its environment and kernel registry, about 10 MB, and the modules and heap a first package load brings in) is
paid once at start-up (`prime()`, then one load of the smallest version, let go), so it is not charged to whichever
model loads first.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger("modelpack.serve")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cores() -> int:
    """The cores this process may run on (its affinity mask, which a container's cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resident_bytes() -> int:
    """This process's resident memory now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


@dataclass(frozen=True)
class CpuBudget:
    """One budget for the cores: worker processes, the intra-op threads each process's models share, batching."""

    cores: int
    workers: int
    intra_op_threads: int  # of each session that names no count: cores // workers (0: onnxruntime's default)
    explicit: bool  # --threads
    max_batch_size: int
    batch_timeout_ms: float

    def describe(self, models: int, memory_budget_mb: float | None) -> str:
        threads = (f"{self.intra_op_threads} intra-op thread(s) per model (--threads)" if self.explicit else
                   f"{self.intra_op_threads} intra-op thread(s) per model (cores // workers; one for a model that "
                   "runs faster on one)" if self.intra_op_threads else
                   "onnxruntime's intra-op pool per model (one for a model that runs faster on one)")
        memory = f", memory budget {memory_budget_mb:g} MB" if memory_budget_mb is not None else ""
        return (f"CPU budget: {self.cores} core(s), {self.workers} worker(s), {models} model(s) per worker, "
                f"{threads}, batches of up to {self.max_batch_size} rows (waiting {self.batch_timeout_ms:g} ms)"
                f"{memory}")


def cpu_budget(workers: int, threads: int | None, repository: bool, max_batch_size: int,
               batch_timeout_ms: float) -> CpuBudget:
    """Size the intra-op threads from the cores and the workers: `cores // workers` per session."""
    n = cores()
    if threads is not None:
        return CpuBudget(n, workers, threads, True, max_batch_size, batch_timeout_ms)
    shared = repository or workers > 1  # `serve PKG` with one worker: onnxruntime's default, as it always was
    return CpuBudget(n, workers, max(1, n // workers) if shared else 0, False, max_batch_size, batch_timeout_ms)


def apply(budget: CpuBudget) -> None:
    """Make the budget's thread count the default of the sessions this process builds from now on."""
    from .. import runtimes

    runtimes.set_default_intra_op_threads(None if budget.explicit else budget.intra_op_threads or None)


def prime() -> None:
    """Pay onnxruntime's one-time set-up now (import, environment, kernels), so no model's measurement holds it."""
    from onnx import TensorProto, helper

    from .. import runtimes

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "prime",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), runtimes.session_options(),
                                   providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.zeros((1, 4), np.float32)})
