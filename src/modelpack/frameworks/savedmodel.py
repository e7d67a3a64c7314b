"""TF SavedModels: the `serving_default` signature, loading, summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..signature import Signature, TensorSpec
from . import tf as tfw

SERVING = "serving_default"


def load(path: Path) -> Any:
    tf = tfw.tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise InputError(f"input '{path}': cannot load the TF SavedModel ({reason}).") from exc
    if SERVING not in loaded.signatures:
        found = ", ".join(loaded.signatures) or "none"
        raise InputError(f"input '{path}': the SavedModel has no '{SERVING}' signature (found: {found}).")
    return loaded


def serving_fn(loaded: Any) -> Any:
    return loaded.signatures[SERVING]


def signature(loaded: Any) -> Signature:
    fn = serving_fn(loaded)
    ins = fn.structured_input_signature[1]
    outs = fn.structured_outputs
    inputs = tuple(TensorSpec.make(name, spec.dtype.name, spec.shape.as_list()) for name, spec in ins.items())
    outputs = tuple(TensorSpec.make(name, spec.dtype.name, spec.shape.as_list()) for name, spec in outs.items())
    return Signature(inputs, outputs)


def summary(loaded: Any) -> dict[str, Any]:
    fn = serving_fn(loaded)
    ops: dict[str, int] = {}
    for node in fn.graph.as_graph_def().node:
        ops[node.op] = ops.get(node.op, 0) + 1
    variables = sum(int(v.shape.num_elements() or 0) for v in getattr(loaded, "variables", []))
    return {"signatures": sorted(loaded.signatures), "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
            "parameters": variables}
