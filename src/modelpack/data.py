"""Tensors from files: eval/train/calibration sets (.npz), predict inputs, random inputs."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .signature import DYNAMIC, Signature, TensorSpec

Tensors = dict[str, np.ndarray]


@dataclass
class Dataset:
    """Inputs keyed by the signature's input names, and labels when the file has `y`."""

    inputs: Tensors
    labels: np.ndarray | None
    path: Path | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, n: int) -> "Dataset":
        return Dataset({k: v[:n] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[:n], self.path)


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
    inputs = _select_inputs(arrays, signature, f"{option} '{p}'")
    n = {len(v) for v in inputs.values()}
    if len(n) != 1 or (labels is not None and len(labels) not in n):
        raise InputError(f"{option} '{p}': arrays have different numbers of samples.")
    return Dataset(inputs, labels, p)


def _select_inputs(arrays: dict[str, np.ndarray], signature: Signature, where: str) -> Tensors:
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
    return {spec.name: conform(chosen[spec.name], spec, where) for spec in signature.inputs}


def conform(value: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """Check rank and static dims against the spec, and cast to its dtype."""
    value = np.asarray(value)
    if value.ndim != len(spec.shape) or any(
        d != DYNAMIC and d != v for d, v in zip(spec.shape, value.shape)
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


def random_inputs(signature: Signature, batch: int = 4, seed: int = 0) -> Tensors:
    """Inputs built from the signature: dynamic dims become `batch` (first) or 8 (others)."""
    rng = np.random.default_rng(seed)
    out: Tensors = {}
    for spec in signature.inputs:
        shape = [(batch if i == 0 else 8) if d == DYNAMIC else d for i, d in enumerate(spec.shape)]
        dtype = np.dtype(spec.dtype)
        if dtype.kind in "iu":
            out[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[spec.name] = rng.random(shape, dtype=np.float64).astype(dtype)
    return out
