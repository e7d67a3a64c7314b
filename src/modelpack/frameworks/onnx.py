"""ONNX models: signature, renaming to canonical tensor names, op summary.

Needs only the core dependencies (onnx, numpy): no TensorFlow here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..signature import Signature, TensorSpec


def load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def _spec(value_info: Any) -> TensorSpec:
    from onnx import helper

    ttype = value_info.type.tensor_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
    dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
    names = [d.dim_param if not d.HasField("dim_value") else "" for d in ttype.shape.dim]
    return TensorSpec.make(value_info.name, dtype, dims, names)


def signature(model: Any) -> Signature:
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_spec(v) for v in model.graph.output)
    return Signature(inputs, outputs)


def rename_io(model: Any, mapping: dict[str, str], batch_dim: str = "batch") -> None:
    """Rename graph inputs/outputs in place, and name dynamic leading dims `batch_dim`."""
    graph = model.graph
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name in mapping:
            value.name = mapping[value.name]
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = batch_dim


def summary(model: Any) -> dict[str, Any]:
    ops = Counter(node.op_type for node in model.graph.node)
    params = int(sum(int(np.prod(t.dims)) if t.dims else 1 for t in model.graph.initializer))
    return {
        "ops": dict(ops.most_common()),
        "nodes": len(model.graph.node),
        "parameters": params,
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
    }
