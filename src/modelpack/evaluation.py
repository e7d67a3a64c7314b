"""Measuring a model's outputs: parity against a reference, accuracy, fidelity."""

from __future__ import annotations

from typing import Any

import numpy as np

from .data import Dataset, Tensors
from .runtimes import Runner

EVAL_LIMIT = 512  # enough samples for a stable number, few enough to stay fast


def run_batched(runner: Runner, inputs: Tensors, batch: int = 128) -> Tensors:
    n = len(next(iter(inputs.values())))
    parts: list[Tensors] = []
    for start in range(0, n, batch):
        parts.append(runner.run({k: v[start:start + batch] for k, v in inputs.items()}))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def max_abs_diff(reference: Tensors, other: Tensors) -> float:
    worst = 0.0
    for name, ref in reference.items():
        diff = np.abs(np.asarray(other[name], dtype=np.float64) - np.asarray(ref, dtype=np.float64))
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
    return worst


def accuracy(outputs: Tensors, labels: np.ndarray) -> float | None:
    """Top-1 accuracy in percent from the first output, when labels are class ids."""
    first = np.asarray(next(iter(outputs.values())))
    labels = np.asarray(labels)
    if first.ndim != 2 or labels.ndim != 1 or labels.dtype.kind not in "iu":
        return None
    return float((first.argmax(axis=1) == labels).mean() * 100.0)


def agreement(reference: Tensors, other: Tensors) -> float | None:
    """Top-1 agreement in percent between two models' first outputs."""
    a = np.asarray(next(iter(reference.values())))
    b = np.asarray(other[next(iter(reference))])
    if a.ndim != 2:
        return None
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean() * 100.0)


def compare(reference: Tensors, other: Tensors, data: Dataset | None) -> dict[str, Any]:
    """Parity metrics of `other` against `reference`, plus accuracy when labels exist."""
    metrics: dict[str, Any] = {"max_abs_diff": max_abs_diff(reference, other)}
    agree = agreement(reference, other)
    if agree is not None:
        metrics["top1_agreement"] = round(agree, 3)
    if data is not None and data.labels is not None:
        acc = accuracy(other, data.labels)
        if acc is not None:
            metrics["accuracy"] = round(acc, 3)
    return metrics
