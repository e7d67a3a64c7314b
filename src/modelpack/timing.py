"""Timing runners fairly on a noisy machine: interleaved, after a warm-up, compared by medians."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from .runtimes import Runner, Tensors


def interleaved_latencies(runners: Sequence[Runner], feeds: Tensors, iterations: int = 50,
                          warmup: int = 5, budget_s: float | None = None, min_iterations: int = 5) -> list[np.ndarray]:
    """Per-call latencies in ms for each runner, taking turns so drift hits all of them alike.

    With `budget_s`, stop after `min_iterations` rounds once the rounds have used that many seconds (a big
    model then gets fewer rounds, not minutes of timing), and warm up slow models with a single call."""
    started = time.perf_counter()
    for runner in runners:
        for done in range(warmup):
            t0 = time.perf_counter()
            runner.run(feeds)
            if budget_s is not None and done == 0 and (time.perf_counter() - t0) * 20 > budget_s:
                break
    samples: list[list[float]] = [[] for _ in runners]
    for round_ in range(iterations):
        if budget_s is not None and round_ >= min_iterations and time.perf_counter() - started > budget_s:
            break
        for index, runner in enumerate(runners):
            start = time.perf_counter()
            runner.run(feeds)
            samples[index].append((time.perf_counter() - start) * 1e3)
    return [np.asarray(s) for s in samples]
