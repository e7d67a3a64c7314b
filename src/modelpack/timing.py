"""Timing runners fairly on a noisy machine: interleaved, after a warm-up, compared by medians."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .runtimes import Runner, Tensors


def interleaved_latencies(runners: Sequence[Runner], feeds: Tensors, iterations: int = 50,
                          warmup: int = 5) -> list[np.ndarray]:
    """Per-call latencies in ms for each runner, taking turns so drift hits all of them alike."""
    for runner in runners:
        for _ in range(warmup):
            runner.run(feeds)
    samples: list[list[float]] = [[] for _ in runners]
    for _ in range(iterations):
        for index, runner in enumerate(runners):
            start = time.perf_counter()
            runner.run(feeds)
            samples[index].append((time.perf_counter() - start) * 1e3)
    return [np.asarray(s) for s in samples]
