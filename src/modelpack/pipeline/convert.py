"""Converting a model between representations: Keras -> SavedModel -> ONNX or TFLite.

`route()` plans a conversion without doing any work, so an impossible pipeline is
refused before the first stage runs; `to()` walks the route, writing each step
into a scratch directory.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelpackError, StageFailed, reason
from ..formats import ModelRef, Repr
from ..signature import Signature

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


def to(ref: ModelRef, dst: Repr, workdir: Path, signature: Signature, *, opset: int = DEFAULT_OPSET,
       safe: bool = True, in_child: bool = False) -> ModelRef:
    """Convert `ref` to `dst`, writing intermediates under `workdir` (see `hops`)."""
    chain = route(ref.rep, dst)
    if chain is None:
        raise StageFailed("convert", f"no conversion from {ref.rep} to {dst}")
    walked = hops(ref, chain[1:], workdir, signature, opset=opset, safe=safe, in_child=in_child)
    return walked[-1] if walked else ref


def hops(ref: ModelRef, steps: list[Repr], workdir: Path, signature: Signature, *, opset: int = DEFAULT_OPSET,
         safe: bool = True, in_child: bool = False) -> list[ModelRef]:
    """Walk `steps` (each an edge of EDGES) from `ref`; the model after each step, under `workdir`.

    With `in_child`, the whole walk runs in one fresh process (`isolation.call_spawned`): the memory the framework
    takes is returned when it ends, and TensorFlow is imported once for all the steps."""
    outs = [scratch(workdir, _STEPS[(a, b)][1]) for a, b in zip([ref.rep, *steps], steps)]
    if not steps or not in_child:
        return _walk(ref, steps, outs, signature, opset, safe)
    from . import isolation

    names = " -> ".join(str(r) for r in [ref.rep, *steps])
    walked: list[ModelRef] = isolation.call_spawned(f"the {names} conversion", "convert", _walk, ref, steps,
                                                    outs, signature, opset, safe)
    return walked


def _walk(ref: ModelRef, steps: list[Repr], outs: list[Path], signature: Signature, opset: int,
          safe: bool) -> list[ModelRef]:
    walked = []
    for step, out in zip(steps, outs):
        ref = _STEPS[(ref.rep, step)][0](ref, out, signature, opset, safe)
        walked.append(ref)
    return walked


def scratch(workdir: Path, name: str) -> Path:
    """A fresh path under workdir, so repeated conversions never collide."""
    return workdir / f"{next(_counter):03d}-{name}"


def keras_to_savedmodel(ref: ModelRef, out: Path, signature: Signature, opset: int, safe: bool) -> ModelRef:
    from ..frameworks import keras

    model = keras.load(ref, safe=safe)
    try:
        keras.export_savedmodel(model, ref.flavour, out)
    except Exception as exc:
        raise StageFailed("convert", f"Keras -> SavedModel export failed: {exc}") from exc
    return ModelRef(Repr.SAVEDMODEL, out)


def savedmodel_to_onnx(ref: ModelRef, out: Path, signature: Signature, opset: int, safe: bool) -> ModelRef:
    from ..frameworks import onnx as onnxw
    from ..frameworks import tf2onnx as lean
    from ..signature import match_names

    try:
        model = lean.convert_savedmodel(ref.path, opset)
    except Exception as exc:
        raise StageFailed("convert", f"tf2onnx could not convert the SavedModel: {reason(exc)}") from exc
    mapping = match_names([i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}],
                          signature.input_names)
    mapping.update(match_names([o.name for o in model.graph.output], signature.output_names))
    onnxw.rename_io(model, {k: v for k, v in mapping.items() if k != v})
    import onnx

    onnx.save(model, str(out))
    del model
    _fold(out)
    return ModelRef(Repr.ONNX, out)


def _fold(path: Path) -> None:
    """Constant folding and batch-norm fusion by onnxruntime's basic (standard ONNX only) optimizer, in place;
    tf2onnx's lean path leaves them to it. A model it cannot optimize stays as converted: parity decides."""
    from ..frameworks import ort

    folded = path.with_name(path.name + ".folded")
    try:
        ort.optimize_graph(path, folded, "basic")
        folded.replace(path)
    except Exception:
        folded.unlink(missing_ok=True)


def savedmodel_to_tflite(ref: ModelRef, out: Path, signature: Signature, opset: int, safe: bool,
                         configure: Callable[[Any], None] | None = None) -> ModelRef:
    """Convert with the TFLite converter; `configure` may set quantization options first."""
    from ..frameworks import tf as tfw

    tf = tfw.tensorflow()
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


_STEPS: dict[tuple[Repr, Repr], tuple[Callable[..., ModelRef], str]] = {
    (Repr.KERAS, Repr.SAVEDMODEL): (keras_to_savedmodel, "saved_model"),
    (Repr.SAVEDMODEL, Repr.ONNX): (savedmodel_to_onnx, "model.onnx"),
    (Repr.SAVEDMODEL, Repr.TFLITE): (savedmodel_to_tflite, "model.tflite"),
}
