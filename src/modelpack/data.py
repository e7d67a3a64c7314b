"""Tensors from files: eval/train/calibration sets (.npz), predict inputs, random inputs."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .signature import DYNAMIC, Signature, TensorSpec

Tensors = dict[str, np.ndarray]


@dataclass
class Dataset:
    """Inputs keyed by the signature's input names, and labels when the file has `y`.

    `axes` says where each input holds its examples (see `Signature.batch_axis`): axis 0 for most,
    another axis for e.g. a recurrent state, None for an input every example shares (a scalar).
    """

    inputs: Tensors
    labels: np.ndarray | None
    path: Path | None = None
    axes: dict[str, int | None] = field(default_factory=dict)
    fixed_batch: int | None = None  # the model takes exactly this many examples per call (e.g. a TFLite batch of 1)

    def axis(self, name: str) -> int | None:
        return self.axes.get(name, 0)

    def __len__(self) -> int:
        for name, value in self.inputs.items():
            axis = self.axis(name)
            if axis is not None:
                return int(value.shape[axis])
        return 1

    def take(self, index: np.ndarray | slice) -> Dataset:
        """The examples at `index` (an index array or a slice), labels cut with them."""
        picked = {}
        for name, value in self.inputs.items():
            axis = self.axis(name)
            if axis is None:
                picked[name] = value
            else:
                where: list[Any] = [slice(None)] * value.ndim
                where[axis] = index
                picked[name] = value[tuple(where)]
        return Dataset(picked, None if self.labels is None else self.labels[index], self.path, self.axes,
                       self.fixed_batch)

    def head(self, n: int) -> Dataset:
        return self.take(slice(0, n))


def load_dataset(path: str | Path, signature: Signature, option: str = "--eval-data") -> Dataset:
    """Read an .npz with `x` (or one array per input name) and optional `y`."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{option} '{p}': no such file. Expected an .npz with arrays 'x' and 'y'.")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{option} '{p}': not a readable .npz ({exc}). Expected arrays 'x' and 'y'.") from exc
    labels = arrays.pop("y", None)
    axes = {t.name: signature.batch_axis(t.name) for t in signature.inputs}
    inputs = _select_inputs(arrays, signature, f"{option} '{p}'", axes)
    rows = {name: v.shape[axis] for name, v in inputs.items() if (axis := axes[name]) is not None}
    counts = set(rows.values()) | ({len(labels)} if labels is not None and labels.ndim else set())
    if len(counts) > 1:
        found = ", ".join(f"{k}: {v}" for k, v in rows.items()) + (f", y: {len(labels)}" if labels is not None else "")
        raise InputError(f"{option} '{p}': arrays have different numbers of examples ({found}).")
    if counts == {0}:
        raise InputError(f"{option} '{p}': the arrays hold no examples.")
    fixed = {t.shape[axis] for t in signature.inputs if (axis := axes[t.name]) is not None}
    fixed_batch = fixed.pop() if len(fixed) == 1 and DYNAMIC not in fixed else None
    return Dataset(inputs, labels, p, axes, fixed_batch)


def _select_inputs(arrays: dict[str, np.ndarray], signature: Signature, where: str,
                   axes: dict[str, int | None] | None = None) -> Tensors:
    names = signature.input_names
    if all(n in arrays for n in names):
        chosen = {n: arrays[n] for n in names}
    elif len(names) == 1 and "x" in arrays:
        chosen = {names[0]: arrays["x"]}
    elif len(names) == 1 and len(arrays) == 1:
        chosen = {names[0]: next(iter(arrays.values()))}
    else:
        expected = "'x'" if len(names) == 1 else ", ".join(f"'{n}'" for n in names)
        raise InputError(f"{where}: expected array(s) {expected}, found {sorted(arrays) or 'none'}.")
    axes = axes or {}
    return {spec.name: conform(chosen[spec.name], spec, where, axes.get(spec.name)) for spec in signature.inputs}


def conform(value: np.ndarray, spec: TensorSpec, where: str, batch_axis: int | None = None) -> np.ndarray:
    """Check rank and static dims against the spec (any number of examples on `batch_axis`), and cast."""
    value = np.asarray(value)
    if value.ndim != len(spec.shape) or any(
        d != DYNAMIC and d != v and i != batch_axis for i, (d, v) in enumerate(zip(spec.shape, value.shape))
    ):
        raise InputError(
            f"{where}: input '{spec.name}' has shape {list(value.shape)}, expected {list(spec.shape)} (-1 = any)."
        )
    try:
        return value.astype(spec.dtype, copy=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: input '{spec.name}' cannot be read as {spec.dtype}.") from exc


def load_tensors(path: str | Path, signature: Signature) -> Tensors:
    """Predict input: .npy (single input), .npz, or .json (a list, or an object keyed by input name)."""
    p = Path(path)
    where = f"--input '{p}'"
    if not p.is_file():
        raise InputError(f"{where}: no such file. Expected .npy, .npz or .json.")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arrays = {"x": np.load(p, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files if k != "y"}
        elif suffix == ".json":
            data = json.loads(p.read_text())
            if isinstance(data, dict) and "input_data" in data:
                data = data["input_data"]
            arrays = {k: np.asarray(v) for k, v in data.items()} if isinstance(data, dict) else {"x": np.asarray(data)}
        else:
            raise InputError(f"{where}: unsupported extension '{suffix}'. Expected .npy, .npz or .json.")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{where}: cannot read it ({exc}).") from exc
    return _select_inputs(arrays, signature, where)


SYNTHETIC_SIZE = 128  # a dynamic non-batch axis in synthetic inputs that are timed: a realistic sequence length


def random_inputs(signature: Signature, batch: int = 4, seed: int = 0, dims: Mapping[str, int] | None = None,
                  other: int = 8) -> Tensors:
    """Inputs built from the signature: the batch axis becomes `batch`, a dynamic dim the graph names in
    `dims` that size, other dynamic dims `other` (small for a smoke run; SYNTHETIC_SIZE where speed counts)."""
    rng = np.random.default_rng(seed)
    out: Tensors = {}
    dims = dims or {}
    for spec in signature.inputs:
        axis = signature.batch_axis(spec.name)
        names = spec.dims or ("",) * len(spec.shape)
        shape = [(batch if i == axis else dims.get(names[i], other)) if d == DYNAMIC else d
                 for i, d in enumerate(spec.shape)]
        dtype = np.dtype(spec.dtype)
        if dtype.kind in "iu":
            out[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[spec.name] = rng.random(shape, dtype=np.float64).astype(dtype)
    return out
