"""The model's signature: name, dtype and shape of every input and output.

Shapes use -1 for a dynamic dimension. Every artifact of a package answers to the
same canonical names; runtimes map their own tensor names onto these.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DYNAMIC = -1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]))

    @classmethod
    def make(cls, name: str, dtype: Any, shape: Iterable[int | None]) -> TensorSpec:
        dims = tuple(DYNAMIC if d is None or int(d) < 0 else int(d) for d in shape)
        return cls(name, np.dtype(dtype).name, dims)


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = field(default=())

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )

    def batch_axis(self, name: str) -> int | None:
        """The axis along which input `name` holds examples, or None for an input shared by all of them.

        Most inputs are batched on axis 0. Real models also have inputs whose first dimension is
        fixed and whose batch sits further in (a recurrent state shaped [2, batch, 128]), and scalars
        (a sample rate): those are read from the shape. An input with no dynamic dimension is
        shared, unless every input is static (a fixed-batch model), when axis 0 is still the batch.
        """
        spec = next(t for t in self.inputs if t.name == name)
        if not spec.shape:
            return None
        if spec.shape[0] == DYNAMIC:
            return 0
        if all(DYNAMIC not in t.shape for t in self.inputs if t.shape):
            return 0
        return spec.shape.index(DYNAMIC) if DYNAMIC in spec.shape else None

    @property
    def simple_batch(self) -> bool:
        """Every input is batched on axis 0: requests and eval rows can be split and merged freely."""
        return all(self.batch_axis(t.name) == 0 for t in self.inputs)

    def digest(self) -> str:
        """A stable sha256 of the signature, so clients can tell compatible servers apart."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


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
