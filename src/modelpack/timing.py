"""Timing runners fairly on a noisy machine: interleaved, after a warm-up, compared by medians."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .runtimes import Runner, Tensors


def time_calls(run: Callable[[Tensors], Any], feeds: Tensors, calls: int) -> np.ndarray:
    """Latency in ms of each of `calls` back-to-back calls, on the nanosecond clock."""
    clock = time.perf_counter_ns
    out = np.empty(calls)
    for i in range(calls):
        t0 = clock()
        run(feeds)
        out[i] = clock() - t0
    return out / 1e6


def rotated(items: Sequence[Any], round_: int) -> list[Any]:
    """`items` starting at a different one each round, so no runner always goes first (or after the same one)."""
    shift = round_ % len(items) if items else 0
    return list(items[shift:]) + list(items[:shift])


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
            samples[index].append(float(time_calls(runner.run, feeds, 1)[0]))
    return [np.asarray(s) for s in samples]
