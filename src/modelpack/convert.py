"""Converting a model between representations: Keras -> SavedModel -> ONNX or TFLite.

`route()` plans a conversion without doing any work, so an impossible pipeline is
refused before the first stage runs; `to()` walks the route, writing each step
into a scratch directory.
"""

from __future__ import annotations

import itertools
from collections import deque
from pathlib import Path
from typing import Any, Callable

from .errors import ModelpackError, StageFailed, reason
from .formats import ModelRef, Repr
from .signature import Signature

EDGES: dict[Repr, tuple[Repr, ...]] = {
    Repr.KERAS: (Repr.SAVEDMODEL,),
    Repr.SAVEDMODEL: (Repr.ONNX, Repr.TFLITE),
    Repr.ONNX: (),
    Repr.TFLITE: (),
}

DEFAULT_OPSET = 17
_counter = itertools.count()


def route(src: Repr, dst: Repr) -> list[Repr] | None:
    """The shortest chain of representations from src to dst (both included), or None."""
    queue: deque[list[Repr]] = deque([[src]])
    seen = {src}
    while queue:
        chain = queue.popleft()
        if chain[-1] is dst:
            return chain
        for nxt in EDGES[chain[-1]]:
            if nxt not in seen:
                seen.add(nxt)
                queue.append(chain + [nxt])
    return None


def reachable(src: Repr) -> set[Repr]:
    return {r for r in Repr if route(src, r) is not None}


def to(ref: ModelRef, dst: Repr, workdir: Path, signature: Signature, *, opset: int = DEFAULT_OPSET,
       safe: bool = True) -> ModelRef:
    """Convert `ref` to `dst`, writing intermediates under `workdir`."""
    chain = route(ref.rep, dst)
    if chain is None:
        raise StageFailed("convert", f"no conversion from {ref.rep} to {dst}")
    current = ref
    for step in chain[1:]:
        current = _STEPS[(current.rep, step)](current, workdir, signature, opset, safe)
    return current


def scratch(workdir: Path, name: str) -> Path:
    """A fresh path under workdir, so repeated conversions never collide."""
    return workdir / f"{next(_counter):03d}-{name}"


def keras_to_savedmodel(ref: ModelRef, workdir: Path, signature: Signature, opset: int, safe: bool) -> ModelRef:
    from .frameworks import keras

    out = scratch(workdir, "saved_model")
    model = keras.load(ref, safe=safe)
    try:
        keras.export_savedmodel(model, ref.flavour, out)
    except Exception as exc:
        raise StageFailed("convert", f"Keras -> SavedModel export failed: {exc}") from exc
    return ModelRef(Repr.SAVEDMODEL, out)


def savedmodel_to_onnx(ref: ModelRef, workdir: Path, signature: Signature, opset: int, safe: bool) -> ModelRef:
    from .frameworks import onnx as onnxw
    from .frameworks import tf as tfw
    from .signature import match_names

    tf = tfw.tensorflow()
    from tf2onnx import convert as tf2onnx_convert
    from tf2onnx import tf_loader

    out = scratch(workdir, "model.onnx")
    try:
        graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
            str(ref.path), None, None, None, ["serving_default"], None, False,
            return_initialized_tables=True, return_tensors_to_rename=True,
        )
        with tf.device("/cpu:0"):
            model, _ = tf2onnx_convert._convert_common(
                graph_def, name=str(ref.path), opset=opset, input_names=inputs, output_names=outputs,
                tensors_to_rename=renames, initialized_tables=tables,
            )
    except Exception as exc:
        raise StageFailed("convert", f"tf2onnx could not convert the SavedModel: {exc}") from exc
    mapping = match_names([i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}],
                          signature.input_names)
    mapping.update(match_names([o.name for o in model.graph.output], signature.output_names))
    onnxw.rename_io(model, {k: v for k, v in mapping.items() if k != v})
    import onnx

    onnx.save(model, str(out))
    return ModelRef(Repr.ONNX, out)


def savedmodel_to_tflite(ref: ModelRef, workdir: Path, signature: Signature, opset: int, safe: bool,
                         configure: Callable[[Any], None] | None = None, name: str = "model.tflite") -> ModelRef:
    """Convert with the TFLite converter; `configure` may set quantization options first."""
    from .frameworks import tf as tfw

    tf = tfw.tensorflow()
    out = scratch(workdir, name)
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(ref.path))
        if configure is not None:
            configure(converter)
        out.write_bytes(converter.convert())
    except ModelpackError:
        raise
    except Exception as exc:
        raise StageFailed("convert", f"the TFLite converter failed: {reason(exc)}") from exc
    return ModelRef(Repr.TFLITE, out)


_STEPS = {
    (Repr.KERAS, Repr.SAVEDMODEL): keras_to_savedmodel,
    (Repr.SAVEDMODEL, Repr.ONNX): savedmodel_to_onnx,
    (Repr.SAVEDMODEL, Repr.TFLITE): savedmodel_to_tflite,
}
