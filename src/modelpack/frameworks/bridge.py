"""Bridge a Keras 3 model to tf_keras (Keras 2), so tfmot can prune, cluster and quantize it.

tfmot works only with tf_keras, and a Keras 3 file does not load there. The bridge
rebuilds the architecture layer by layer from the Keras 3 config, calling the
tf_keras layer of the same class on the mapped tensors, then copies the weights
and checks that both models answer alike.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import UsageError
from . import tf as tfw

# Config keys that only Keras 3 writes, or that need not survive: weights are copied.
DROP = {"dtype", "quantization_config", "synchronized"}
DROP_SUFFIXES = ("_initializer", "_constraint")
# How tf_keras names an argument it does not know, in its two phrasings.
UNKNOWN_ARG = re.compile(r"(?:not understood:', '|unexpected keyword argument ')(\w+)'")


def to_tf_keras(model: Any) -> tuple[Any, list[str]]:
    """A tf_keras copy of a Keras 3 model, and notes on config keys that were dropped."""
    tf_keras = tfw.tf_keras()
    config = model.get_config()
    notes: list[str] = []
    if "layers" not in config:
        raise UsageError(f"cannot bridge Keras 3 model '{model.name}': only Sequential and functional models are supported.")
    if "input_layers" in config:
        rebuilt = _functional(tf_keras, model, config, notes)
    else:
        rebuilt = _sequential(tf_keras, model, config, notes)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            rebuilt.get_layer(layer.name).set_weights(weights)
    return rebuilt, notes


def check(original: Any, rebuilt: Any, inputs: list[np.ndarray], atol: float = 1e-5) -> float:
    """Max abs diff between the two models on `inputs`; raise when above atol."""
    a = original(inputs[0] if len(inputs) == 1 else inputs, training=False)
    b = rebuilt(inputs[0] if len(inputs) == 1 else inputs, training=False)
    a = a if isinstance(a, (list, tuple)) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))
    if diff > atol:
        raise UsageError(f"the Keras 3 -> tf_keras bridge changed the model's outputs (max abs diff {diff:.3g}); "
                         "this architecture is not supported by the bridge.")
    return diff


def _layer(tf_keras: Any, entry: dict[str, Any], notes: list[str]) -> Any:
    class_name = entry["class_name"]
    cls = getattr(tf_keras.layers, class_name, None)
    if cls is None:
        raise UsageError(f"cannot bridge layer '{entry['config'].get('name')}' ({class_name}) to tf_keras: "
                         "no tf_keras layer of that class.")
    config = {k: v for k, v in entry["config"].items() if k not in DROP and not k.endswith(DROP_SUFFIXES)}
    for key, value in list(config.items()):
        if isinstance(value, dict) and value.get("class_name") and "config" in value:
            # Nested objects (regularizers, activations as objects) in Keras 3 form.
            config[key] = {"class_name": value["class_name"], "config": value.get("config", {})}
    dropped = []
    while True:
        try:
            layer = cls.from_config(config)
            break
        except TypeError as exc:  # an argument tf_keras does not know: drop it and say so
            found = UNKNOWN_ARG.search(str(exc))
            bad = found.group(1) if found else None
            if bad not in config:
                raise UsageError(f"cannot bridge layer '{config.get('name')}' ({class_name}) to tf_keras: {exc}") from exc
            config.pop(bad)
            dropped.append(bad)
    if dropped:
        notes.append(f"layer {config.get('name')}: dropped Keras 3-only config {sorted(str(d) for d in dropped)}")
    return layer


def _sequential(tf_keras: Any, model: Any, config: dict[str, Any], notes: list[str]) -> Any:
    layers = []
    for entry in config["layers"]:
        if entry["class_name"] == "InputLayer":
            cfg = entry["config"]
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            layers.append(tf_keras.layers.InputLayer(input_shape=tuple(shape[1:]), dtype=_dtype(cfg),
                                                     name=cfg.get("name")))
        else:
            layers.append(_layer(tf_keras, entry, notes))
    seq = tf_keras.Sequential(layers, name=config.get("name"))
    if not seq.built:
        seq.build((None, *tuple(model.inputs[0].shape[1:])))
    return seq


def _dtype(cfg: dict[str, Any]) -> str:
    dtype = cfg.get("dtype", "float32")
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name", "float32")
    return str(dtype)


def _history(arg: Any) -> list[tuple[str, int, int]]:
    """The (layer, node, tensor) references inside a Keras 3 call argument."""
    if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
        layer, node, index = arg["config"]["keras_history"]
        return [(layer, node, index)]
    if isinstance(arg, (list, tuple)):
        return [ref for item in arg for ref in _history(item)]
    return []


def _map_args(arg: Any, tensors: dict[tuple[str, int, int], Any]) -> Any:
    if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
        return tensors[tuple(arg["config"]["keras_history"])]
    if isinstance(arg, list):
        return [_map_args(a, tensors) for a in arg]
    return arg


def _functional(tf_keras: Any, model: Any, config: dict[str, Any], notes: list[str]) -> Any:
    tensors: dict[tuple[str, int, int], Any] = {}
    for entry in config["layers"]:
        name = entry["config"]["name"] if "name" not in entry else entry["name"]
        if entry["class_name"] == "InputLayer":
            cfg = entry["config"]
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            tensors[(name, 0, 0)] = tf_keras.Input(shape=tuple(shape[1:]), dtype=_dtype(cfg), name=name)
            continue
        if entry["class_name"] in ("Functional", "Sequential", "Model"):
            raise UsageError(f"cannot bridge nested model '{name}' to tf_keras; flatten it into one functional model.")
        layer = _layer(tf_keras, entry, notes)
        for node_index, node in enumerate(entry.get("inbound_nodes", [])):
            args = node.get("args", [])
            kwargs = {k: v for k, v in node.get("kwargs", {}).items() if v is not None and not _history(v)}
            mapped = _map_args(list(args), tensors)
            call_arg = mapped[0] if len(mapped) == 1 else mapped
            out = layer(call_arg, **kwargs)
            outs = out if isinstance(out, (list, tuple)) else [out]
            for tensor_index, tensor in enumerate(outs):
                tensors[(name, node_index, tensor_index)] = tensor

    def refs(spec: Any) -> list[Any]:
        if spec and isinstance(spec[0], str):
            return [tensors[(spec[0], spec[1], spec[2])]]
        return [tensors[(s[0], s[1], s[2])] for s in spec]

    inputs = refs(config["input_layers"])
    outputs = refs(config["output_layers"])
    return tf_keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                          name=config.get("name"))
