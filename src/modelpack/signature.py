"""The model's signature: name, dtype and shape of every input and output.

Shapes use -1 for a dynamic dimension. Every artifact of a package answers to the
same canonical names; runtimes map their own tensor names onto these.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DYNAMIC = -1


# Dimension names that exporters generate per tensor (tf2onnx's unk__12, onnxruntime's Add_dim_0): they say
# nothing about which axes of different tensors are the same, so they count as unnamed.
_GENERATED = re.compile(r"^(unk__\d+|.*_dim_\d+|\d+)$")
_BATCH_NAME = re.compile(r"^(batch.*|.*_batch|.*batch_size|n|b|bs|N|B)$", re.I)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    # The graph's symbolic name of each dimension ("" for none), when the format has them (ONNX).
    dims: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if any(self.dims):
            data["dims"] = list(self.dims)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]),
                   tuple(str(d) for d in data.get("dims", ())))

    @classmethod
    def make(cls, name: str, dtype: Any, shape: Iterable[int | None], dims: Iterable[str] = ()) -> TensorSpec:
        sizes = tuple(DYNAMIC if d is None or int(d) < 0 else int(d) for d in shape)
        named = tuple(dims)
        return cls(name, np.dtype(dtype).name, sizes, named if any(named) and len(named) == len(sizes) else ())

    def dim_name(self, axis: int) -> str:
        """The symbolic name of a dynamic dimension that can tie it to other tensors', or ""."""
        if axis >= len(self.dims) or self.shape[axis] != DYNAMIC:
            return ""
        name = self.dims[axis]
        return "" if _GENERATED.match(name) else name


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = field(default=())
    # Batch axes the user stated (`--batch-axis INPUT=N|none`), by input name; they win over inference.
    stated_axes: tuple[tuple[str, int | None], ...] = field(default=(), compare=False)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }
        if self.stated_axes:
            data["batch_axes"] = dict(self.stated_axes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        stated = data.get("batch_axes") or {}
        return cls(
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            tuple((str(k), None if v is None else int(v)) for k, v in stated.items()),
        )

    def with_batch_axes(self, stated: dict[str, int | None]) -> Signature:
        """This signature with the batch axes the user stated (checked against the inputs)."""
        if not stated:
            return self
        return Signature(self.inputs, self.outputs, tuple({**dict(self.stated_axes), **stated}.items()))

    def batch_axis(self, name: str) -> int | None:
        """The axis along which input `name` holds examples, or None for an input shared by all of them.

        A stated axis (`--batch-axis`) wins. Otherwise the graph's symbolic dimension names say which
        axes are the same: a dynamic axis 0 named like any other tensor's batch (or named "batch", "N")
        is the batch, and an input holds its examples wherever that name appears in it (a recurrent state
        [2, batch, 128]), or shares them when it does not (a sample rate). A model whose named dynamic
        axes are never a leading one (inputs [1, 1, S, 32] and [1, 2, S, 96]: batch fixed at 1, time
        dynamic) is fixed-batch: axis 0 holds its one example. Without names the shape decides, as
        before: a dynamic axis 0, else the first dynamic axis, else axis 0 when every input is static.
        """
        stated = dict(self.stated_axes)
        if name in stated:
            return stated[name]
        spec = next(t for t in self.inputs if t.name == name)
        if not spec.shape:
            return None
        names = self._batch_names()
        if names is not None:
            if not names:  # named dynamic axes, none of them a batch: a fixed-batch model
                return 0 if all(not self._dynamic_unnamed(t) for t in self.inputs) else self._positional(spec)
            for axis in range(len(spec.shape)):
                if spec.dim_name(axis) in names:
                    return axis
            if not self._dynamic_unnamed(spec):
                return None
        return self._positional(spec)

    def _positional(self, spec: TensorSpec) -> int | None:
        if spec.shape[0] == DYNAMIC:
            return 0
        if all(DYNAMIC not in t.shape for t in self.inputs if t.shape):
            return 0
        return spec.shape.index(DYNAMIC) if DYNAMIC in spec.shape else None

    @staticmethod
    def _has_named(spec: TensorSpec) -> bool:
        return any(spec.dim_name(a) for a in range(len(spec.shape)))

    @staticmethod
    def _dynamic_unnamed(spec: TensorSpec) -> bool:
        return any(d == DYNAMIC and not spec.dim_name(a) for a, d in enumerate(spec.shape))

    def _batch_names(self) -> set[str] | None:
        """Names of the batch dimension, or None when the inputs name no dynamic dimension at all."""
        tensors = self.inputs + self.outputs
        if not any(self._has_named(t) for t in self.inputs):
            return None
        found = {t.dim_name(0) for t in tensors if t.shape and t.dim_name(0)}
        found |= {t.dim_name(a) for t in tensors for a in range(len(t.shape)) if _BATCH_NAME.match(t.dim_name(a))}
        return found

    @property
    def fixed_batch(self) -> bool:
        """No input has a dynamic batch: one call, one example (no splitting, no merging of requests)."""
        axes = [(t, self.batch_axis(t.name)) for t in self.inputs]
        batched = [(t, a) for t, a in axes if a is not None]
        return bool(batched) and all(a >= len(t.shape) or t.shape[a] != DYNAMIC for t, a in batched)

    @property
    def simple_batch(self) -> bool:
        """Every input is batched on a dynamic axis 0: requests and eval rows can be split and merged freely."""
        return not self.fixed_batch and all(self.batch_axis(t.name) == 0 for t in self.inputs)

    def describe_axes(self) -> str:
        """Where each input holds its examples, in words, for notes and errors."""
        if self.fixed_batch:
            return "fixed batch: one call is one example"
        return ", ".join(f"{t.name}: " + ("shared" if (a := self.batch_axis(t.name)) is None else f"axis {a}")
                         for t in self.inputs)

    def digest(self) -> str:
        """A stable sha256 of the signature, so clients can tell compatible servers apart."""
        plain = {"inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.inputs],
                 "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.outputs]}
        if self.stated_axes:
            plain["batch_axes"] = dict(self.stated_axes)  # type: ignore[assignment]
        text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def parse_batch_axes(values: Iterable[str], signature: Signature, option: str = "--batch-axis") -> dict[str, int | None]:
    """`INPUT=N` or `INPUT=none` (one per input), checked against the signature; raises ValueError with a message."""
    found: dict[str, int | None] = {}
    for value in values:
        name, sep, axis = str(value).partition("=")
        spec = next((t for t in signature.inputs if t.name == name), None)
        if not sep or spec is None:
            known = ", ".join(signature.input_names)
            raise ValueError(f"{option} '{value}': use INPUT=AXIS or INPUT=none, with INPUT one of: {known}.")
        if axis.strip().lower() == "none":
            found[name] = None
            continue
        try:
            index = int(axis)
        except ValueError:
            raise ValueError(f"{option} '{value}': the axis must be a number or none.") from None
        if not 0 <= index < max(len(spec.shape), 1) or not spec.shape:
            raise ValueError(f"{option} '{value}': input '{name}' has {len(spec.shape)} axes; "
                             f"give 0 to {len(spec.shape) - 1}, or none.")
        found[name] = index
    return found


def parse_dims(values: Iterable[str], signature: Signature, option: str = "--dim") -> dict[str, int]:
    """`NAME=SIZE` (repeatable): the size synthetic inputs give a dynamic dimension the graph calls NAME."""
    named: dict[str, list[str]] = {}
    batch_names: set[str] = set()
    for spec in signature.inputs:
        axis = signature.batch_axis(spec.name)
        for index, (dim, size) in enumerate(zip(spec.dims, spec.shape)):
            if dim and size == DYNAMIC:
                (batch_names.add(dim) if index == axis else named.setdefault(dim, []).append(spec.name))
    known = ", ".join(f"{d} ({', '.join(ins)})" for d, ins in named.items()) or "none"
    found: dict[str, int] = {}
    for value in values:
        name, sep, given = str(value).partition("=")
        if not sep or not name:
            raise ValueError(f"{option} '{value}': use NAME=SIZE, with NAME a dynamic dimension of the graph "
                             f"(here: {known}).")
        if name in batch_names and name not in named:
            raise ValueError(f"{option} '{value}': '{name}' is the batch axis; its sizes are the batches timed "
                             f"(1 and 8). Name another dimension (here: {known}).")
        if name not in named:
            raise ValueError(f"{option} '{value}': no input has a dynamic dimension named '{name}' "
                             f"(here: {known}).")
        size = int(given) if given.strip().isdigit() else 0
        if size < 1:
            raise ValueError(f"{option} '{value}': SIZE '{given}' must be a whole number of at least 1.")
        found[name] = size
    return found


def match_names(found: Sequence[str], canonical: Sequence[str]) -> dict[str, str]:
    """Map a runtime's own tensor names onto the signature's canonical names.

    Exact names win; `output_N` (what a Keras SavedModel export calls its outputs)
    maps to the N-th canonical name; anything left is matched by position.
    """
    if len(found) != len(canonical):
        raise ValueError(f"expected {len(canonical)} tensors {list(canonical)}, found {list(found)}")
    mapping: dict[str, str] = {}
    left = [n for n in canonical]
    for name in found:
        if name in left:
            mapping[name] = name
            left.remove(name)
    for name in found:
        if name in mapping:
            continue
        if name.startswith("output_") and name[7:].isdigit():
            index = int(name[7:])
            if index < len(canonical) and canonical[index] in left:
                mapping[name] = canonical[index]
                left.remove(canonical[index])
    rest = [n for n in found if n not in mapping]
    for name, target in zip(rest, left):
        mapping[name] = target
    return mapping
