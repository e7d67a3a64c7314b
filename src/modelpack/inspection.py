"""What a model is: its signature and a summary of its layers or ops, for any representation."""

from __future__ import annotations

from typing import Any

from .formats import ModelRef, Repr
from .signature import Signature


def load_native(ref: ModelRef, safe: bool = True) -> Any:
    """The framework's own object for `ref`: a Keras model, a loaded SavedModel, an ONNX proto, an interpreter."""
    if ref.rep is Repr.KERAS:
        from .frameworks import keras

        return keras.load(ref, safe=safe)
    if ref.rep is Repr.SAVEDMODEL:
        from .frameworks import savedmodel

        return savedmodel.load(ref.path)
    if ref.rep is Repr.ONNX:
        from .frameworks import onnx

        return onnx.load(ref.path)
    from .frameworks import tflite

    return tflite.interpreter(ref.path)


def _module(rep: Repr) -> Any:
    from .frameworks import keras, onnx, savedmodel, tflite

    return {Repr.KERAS: keras, Repr.SAVEDMODEL: savedmodel, Repr.ONNX: onnx, Repr.TFLITE: tflite}[rep]


def signature_of(ref: ModelRef, safe: bool = True, native: Any = None) -> Signature:
    found: Signature = _module(ref.rep).signature(native if native is not None else load_native(ref, safe))
    return found


def summary_of(ref: ModelRef, safe: bool = True, native: Any = None) -> dict[str, Any]:
    summary: dict[str, Any] = _module(ref.rep).summary(native if native is not None else load_native(ref, safe))
    return summary
