"""Keras models: Keras 3 and tf_keras, `.keras` and legacy `.h5`."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..formats import ModelRef
from ..signature import Signature, TensorSpec
from . import tf as tfw

# Layer classes whose config carries Python code; safe_mode refuses to load them.
CODE_LAYERS = {"Lambda"}


def load(ref: ModelRef, *, safe: bool = True) -> Any:
    """Load a Keras model uncompiled; with `safe`, refuse configs that carry code."""
    if safe:
        _refuse_code_layers(ref)
    try:
        if ref.flavour == "keras3":
            keras = tfw.keras3()
            return keras.saving.load_model(str(ref.path), compile=False, safe_mode=safe)
        tf_keras = tfw.tf_keras()
        if ref.container == "keras":
            return tf_keras.models.load_model(str(ref.path), compile=False, safe_mode=safe)
        return tf_keras.models.load_model(str(ref.path), compile=False)
    except InputError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if "safe_mode" in str(exc) or "Lambda" in str(exc):
            raise InputError(
                f"input '{ref.path}': the model holds Python code (a Lambda layer) that safe mode will not "
                "deserialize. Rerun with --unsafe-load only if you trust this file."
            ) from exc
        raise InputError(f"input '{ref.path}': cannot load the {ref.describe()} ({reason}).") from exc


def _model_config(ref: ModelRef) -> dict[str, Any]:
    if ref.container == "h5":
        import h5py

        with h5py.File(ref.path, "r") as f:
            raw = f.attrs["model_config"]
        config: dict[str, Any] = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        return config
    with zipfile.ZipFile(ref.path) as zf:
        found: dict[str, Any] = json.loads(zf.read("config.json"))
        return found


def _class_names(config: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(config, dict):
        if isinstance(config.get("class_name"), str):
            found.add(config["class_name"])
        for value in config.values():
            found |= _class_names(value)
    elif isinstance(config, list):
        for value in config:
            found |= _class_names(value)
    return found


def _refuse_code_layers(ref: ModelRef) -> None:
    try:
        names = _class_names(_model_config(ref))
    except Exception as exc:
        raise InputError(f"input '{ref.path}': cannot read the Keras model config ({exc}).") from exc
    bad = sorted(names & CODE_LAYERS)
    if bad:
        raise InputError(
            f"input '{ref.path}': the model holds Python code ({', '.join(bad)} layer) that safe mode will not "
            "deserialize. Rerun with --unsafe-load only if you trust this file."
        )


def signature(model: Any) -> Signature:
    """The signature of a Keras model, named after its input layers and output layers."""
    try:
        tensors = list(model.inputs)
    except (AttributeError, ValueError) as exc:
        raise InputError("the Keras model has no defined input shape; build it with keras.Input(...) first") from exc
    names = list(getattr(model, "input_names", None) or [t.name for t in tensors])
    inputs = tuple(
        TensorSpec.make(name, _dtype(t), tuple(t.shape)) for name, t in zip(names, tensors)
    )
    outputs = tuple(
        TensorSpec.make(name, _dtype(t), tuple(t.shape)) for name, t in zip(_output_names(model), model.outputs)
    )
    return Signature(inputs, outputs)


def _output_names(model: Any) -> list[str]:
    """Output layer names; Keras 3 Sequential models have no `output_names`, so ask the tensors."""
    names = getattr(model, "output_names", None)
    if names:
        return list(names)
    found = []
    for tensor in model.outputs:
        history = getattr(tensor, "_keras_history", None)
        found.append(history[0].name if history else tensor.name)
    return found


def _dtype(tensor: Any) -> str:
    dtype = tensor.dtype
    return getattr(dtype, "name", None) or str(dtype)


def export_savedmodel(model: Any, flavour: str | None, out: Path) -> None:
    """Write a SavedModel with a `serving_default` signature."""
    if flavour == "keras3":
        model.export(str(out), format="tf_saved_model", verbose=False)
    else:
        model.export(str(out))


def save(model: Any, out: Path) -> None:
    model.save(str(out))


def summary(model: Any) -> dict[str, Any]:
    """Layer counts by class, and parameter count."""
    layers = Counter(type(layer).__name__ for layer in model.layers)
    return {"layers": dict(layers.most_common()), "parameters": int(model.count_params())}
