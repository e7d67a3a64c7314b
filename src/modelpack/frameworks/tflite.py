"""TFLite models: the interpreter, its signature runner, summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..signature import Signature, TensorSpec


def interpreter(path: Path | None = None, content: bytes | None = None, threads: int | None = None) -> Any:
    """A TFLite interpreter: LiteRT's when installed, else TensorFlow's bundled one."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import warnings

        from . import tf as tfw

        tf = tfw.tensorflow()
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        Interpreter = tf.lite.Interpreter
    from .tf import quiet_native_logs

    try:
        with quiet_native_logs():  # XNNPACK announces itself on fd 2
            it = Interpreter(model_path=str(path) if path else None, model_content=content, num_threads=threads)
            it.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"input '{path}': cannot load the TFLite model ({exc}).") from exc
    return it


def signature(it: Any) -> Signature:
    sigs = it.get_signature_list()
    if sigs:
        key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
        runner = it.get_signature_runner(key)
        ins = runner.get_input_details()
        outs = runner.get_output_details()
        return Signature(
            tuple(TensorSpec.make(n, d["dtype"], _shape(d)) for n, d in ins.items()),
            tuple(TensorSpec.make(n, d["dtype"], _shape(d)) for n, d in outs.items()),
        )
    return Signature(
        tuple(TensorSpec.make(d["name"], d["dtype"], _shape(d)) for d in it.get_input_details()),
        tuple(TensorSpec.make(d["name"], d["dtype"], _shape(d)) for d in it.get_output_details()),
    )


def _shape(detail: dict[str, Any]) -> list[int]:
    sig = detail.get("shape_signature")
    shape = sig if sig is not None and len(sig) else detail["shape"]
    return [int(d) for d in np.asarray(shape)]


def summary(it: Any) -> dict[str, Any]:
    ops: dict[str, int] = {}
    try:
        for op in it._get_ops_details():
            ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    except AttributeError:  # pragma: no cover - private API differs across versions
        pass
    tensor_types = {str(np.dtype(t["dtype"]).name) for t in it.get_tensor_details()}
    return {"ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])), "tensor_dtypes": sorted(tensor_types)}
