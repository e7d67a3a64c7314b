"""Measuring a model's outputs: fidelity against a reference, per output, and accuracy.

Fidelity looks at every output, not the first: a model's first output may be an integer
pass-through while the embedding that matters comes second. For each float output it records
the max abs diff and the mean cosine similarity of each example's values; for a classifier-like
output (float, [batch, classes]) also the top-1 agreement; an integer or bool output must match
exactly. The summaries a gate reads (`max_abs_diff`, `cosine`, `top1_agreement`) are the worst
over the outputs.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .data import Dataset, Tensors
from .runtimes import Runner

DEFAULT_EVAL_LIMIT = 512  # examples used for fidelity and accuracy unless --eval-limit says otherwise


INPUT_BYTES_PER_CALL = 4 * 2**20  # a framework keeps the memory of its biggest call: ResNet50 on 16 images
# took TensorFlow to 3.2 GB and kept it there, on 4 at a time 1.4 GB


def run_batched(runner: Runner, data: Dataset, batch: int | None = None) -> Tensors:
    """The model's outputs on every example of `data`, run `batch` examples at a time (by default as many as
    fit in INPUT_BYTES_PER_CALL of inputs, 1 to 128).

    Models whose inputs are not all batched on axis 0 (a recurrent state, a shared scalar) run in
    one call: their outputs cannot be stitched back along axis 0.
    """
    n = len(data)
    if batch is None:
        per_example = sum(v.nbytes // max(len(v), 1) for v in data.inputs.values() if np.ndim(v)) or 1
        batch = max(1, min(128, INPUT_BYTES_PER_CALL // per_example))
    if data.fixed_batch:
        batch, n = data.fixed_batch, n - n % data.fixed_batch  # a fixed-batch model: whole calls only
    elif any(data.axis(name) != 0 for name in data.inputs) or n <= batch:
        return runner.run(data.inputs)
    parts = [runner.run(data.take(slice(start, start + batch)).inputs) for start in range(0, n, batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _rows(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    return value.reshape(value.shape[0], -1) if value.ndim >= 1 and value.shape[0] else value.reshape(1, -1)


CLASS_NAMES = re.compile(r"logit|prob|score|class|pred|label|softmax", re.I)


def is_classifier(value: np.ndarray, name: str = "") -> bool:
    """Class scores: a float [batch, classes] output holding probabilities, or named like logits/probs/scores.

    An embedding has the same shape, but its top-1 index means nothing, so the shape alone is not enough."""
    value = np.asarray(value)
    if value.dtype.kind != "f" or value.ndim != 2 or value.shape[1] < 2:
        return False
    if CLASS_NAMES.search(name):
        return True
    with np.errstate(invalid="ignore"):
        return bool(value.size and np.all(value >= 0) and np.allclose(value.sum(axis=1), 1.0, atol=1e-3))


def output_fidelity(reference: np.ndarray, other: np.ndarray, name: str = "") -> dict[str, Any]:
    """Fidelity of one output against the reference's."""
    ref, oth = np.asarray(reference), np.asarray(other)
    if ref.shape != oth.shape:
        return {"shape_mismatch": [list(ref.shape), list(oth.shape)], "max_abs_diff": float("inf"), "cosine": 0.0}
    if ref.dtype.kind not in "fc":
        return {"exact_match": round(float((ref == oth).mean() * 100.0) if ref.size else 100.0, 3)}
    a, b = _rows(ref), _rows(oth)
    if a.shape[1] < 2:  # one value per example (a regression score): compare the column across examples
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    diff = np.abs(a - b)
    found: dict[str, Any] = {"max_abs_diff": float(diff.max()) if diff.size else 0.0}
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, (a * b).sum(axis=1) / np.where(norms == 0, 1.0, norms))
    cos = np.where(np.isfinite(cos), cos, 0.0)
    found["cosine"] = round(float(cos.mean()), 6) if cos.size else 1.0
    if is_classifier(ref, name):
        found["top1_agreement"] = round(float((ref.argmax(axis=1) == oth.argmax(axis=1)).mean() * 100.0), 3)
    return found


MASK_NAMES = ("attention_mask", "input_mask")


def token_mask(inputs: Tensors | None) -> np.ndarray | None:
    """The real (non-padding) positions of a transformer's batch, from its `attention_mask` input, if any."""
    for name, value in (inputs or {}).items():
        if name.lower().endswith(MASK_NAMES) and np.asarray(value).ndim == 2:
            return np.asarray(np.asarray(value) != 0)
    return None


def fidelity(reference: Tensors, other: Tensors, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Per-output fidelity, plus the worst case over outputs as `max_abs_diff`, `cosine`, `top1_agreement`.

    With `mask` (a transformer's attention mask), outputs shaped [batch, sequence, ...] are compared on the
    real tokens only: the values at padding positions are arbitrary and no consumer reads them."""
    per_output = {}
    for name, ref in reference.items():
        if name not in other:
            continue
        got = other[name]
        ref_a, got_a = np.asarray(ref), np.asarray(got)
        if mask is not None and ref_a.ndim >= 3 and ref_a.shape[:2] == mask.shape and got_a.shape == ref_a.shape:
            ref_a, got_a = ref_a[mask], got_a[mask]
        per_output[name] = output_fidelity(ref_a, got_a, name)
    found: dict[str, Any] = {"max_abs_diff": max((m.get("max_abs_diff", 0.0) for m in per_output.values()),
                                                 default=0.0)}
    cosines = [m["cosine"] for m in per_output.values() if "cosine" in m]
    if cosines:
        found["cosine"] = min(cosines)
    agreements = [m["top1_agreement"] for m in per_output.values() if "top1_agreement" in m]
    if agreements:
        found["top1_agreement"] = min(agreements)
    exact = [m["exact_match"] for m in per_output.values() if "exact_match" in m]
    if exact:
        found["exact_match"] = min(exact)
    found["outputs"] = per_output
    return found


def max_abs_diff(reference: Tensors, other: Tensors) -> float:
    return float(fidelity(reference, other)["max_abs_diff"])


def classifier_output(outputs: Tensors) -> str | None:
    """The first output that looks like class scores ([batch, classes], float), if any."""
    return next((name for name, value in outputs.items() if is_classifier(value, name)), None)


def accuracy(outputs: Tensors, labels: np.ndarray) -> float | None:
    """Top-1 accuracy in percent from the first classifier-like output, when labels are class ids."""
    name = classifier_output(outputs)
    labels = np.asarray(labels)
    if name is None or labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(outputs[name]):
        return None
    return float((np.asarray(outputs[name]).argmax(axis=1) == labels).mean() * 100.0)


def agreement(reference: Tensors, other: Tensors) -> float | None:
    """Top-1 agreement in percent, worst over the classifier-like outputs."""
    return fidelity(reference, other).get("top1_agreement")


def compare(reference: Tensors, other: Tensors, data: Dataset | None) -> dict[str, Any]:
    """Fidelity of `other` against `reference`, plus accuracy when `data` has labels.

    `data` must be the examples both outputs were computed on: its labels are cut with them.
    """
    metrics = fidelity(reference, other, token_mask(data.inputs) if data is not None else None)
    if data is not None and data.labels is not None:
        acc = accuracy(other, data.labels)
        if acc is not None:
            metrics["accuracy"] = round(acc, 3)
    return metrics
