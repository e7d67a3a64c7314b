"""tensorflow-model-optimization on Keras models: pruning, clustering, quantization-aware training.

tfmot accepts only tf_keras models, so Keras 3 models go through the bridge first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import StageFailed, UsageError, reason
from ..formats import ModelRef
from . import tf as tfw

Note = Callable[[str], None]


def tfmot() -> Any:
    tfw.tensorflow()
    import tensorflow_model_optimization as mot

    return mot


def load_tf_keras(ref: ModelRef, safe: bool, probe: dict[str, np.ndarray], note: Note) -> Any:
    """The model as tf_keras: loaded directly, or bridged from Keras 3 and checked."""
    from . import bridge, keras

    model = keras.load(ref, safe=safe)
    if ref.flavour != "keras3":
        return model
    rebuilt, notes = bridge.to_tf_keras(model)
    for line in notes:
        note(line)
    diff = bridge.check(model, rebuilt, list(probe.values()))
    note(f"bridged Keras 3 -> tf_keras (max abs diff {diff:.2g})")
    return rebuilt


@dataclass
class Training:
    """Fine-tuning settings shared by prune, cluster and QAT."""

    data: Dataset
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-3
    loss: str = "auto"

    @property
    def steps(self) -> int:
        return self.epochs * math.ceil(len(self.data) / self.batch_size)


def infer_loss(model: Any, data: Dataset, choice: str) -> Any:
    """A loss from the labels and the model's outputs, unless the user named one."""
    tf_keras = tfw.tf_keras()
    if choice != "auto":
        return choice
    if data.labels is None:
        raise UsageError(f"--train-data '{data.path}' has no labels 'y'; fine-tuning needs them.")
    labels = np.asarray(data.labels)
    sample = np.asarray(model({k: v[:64] for k, v in data.inputs.items()} if len(data.inputs) > 1
                              else next(iter(data.inputs.values()))[:64], training=False))
    probabilities = bool(np.all(sample >= 0) and np.allclose(sample.sum(axis=-1), 1.0, atol=1e-3))
    if labels.dtype.kind in "iu" and sample.ndim == 2 and labels.ndim == 1:
        return tf_keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    if labels.shape == sample.shape and sample.ndim == 2 and sample.shape[1] > 1:
        return tf_keras.losses.CategoricalCrossentropy(from_logits=not probabilities)
    return tf_keras.losses.MeanSquaredError()


def _epoch_logger(note: Note, what: str, epochs: int) -> Any:
    tf_keras = tfw.tf_keras()

    class EpochLog(tf_keras.callbacks.Callback):  # type: ignore[misc,name-defined]  # untyped framework class
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            parts = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items())
            note(f"{what} epoch {epoch + 1}/{epochs}: {parts}")

    return EpochLog()


SEED = 0  # fine-tuning is seeded, so the same pipeline gives the same package


def _fit(model: Any, training: Training, note: Note, what: str, callbacks: list[Any]) -> None:
    tf_keras = tfw.tf_keras()
    tf_keras.utils.set_random_seed(SEED)
    loss = infer_loss(model, training.data, training.loss)
    metrics = ["accuracy"] if "Categorical" in type(loss).__name__ else []
    model.compile(optimizer=tf_keras.optimizers.Adam(training.learning_rate), loss=loss, metrics=metrics)
    x = training.data.inputs
    model.fit(x if len(x) > 1 else next(iter(x.values())), training.data.labels, epochs=training.epochs,
              batch_size=training.batch_size, verbose=0, shuffle=True,
              callbacks=[*callbacks, _epoch_logger(note, what, training.epochs)])


@dataclass
class PruneReport:
    pruned: dict[str, float] = field(default_factory=dict)  # layer -> achieved sparsity
    dense: list[str] = field(default_factory=list)  # layers with weights that stayed dense
    overall: float = 0.0  # over the pruned kernels
    overall_all_weights: float = 0.0


def prune(model: Any, sparsity: float, structure: tuple[int, int] | None, training: Training | None,
          note: Note) -> tuple[Any, PruneReport]:
    """Magnitude pruning with prune_low_magnitude, then strip_pruning."""
    mot = tfmot()
    tf_keras = tfw.tf_keras()
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    sk = mot.sparsity.keras
    if training is not None:
        end = max(1, int(training.steps * 0.7))
        schedule = sk.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=end,
                                      frequency=max(1, end // 20))
    else:
        schedule = sk.ConstantSparsity(sparsity, begin_step=0, frequency=1)
    wrapped: list[str] = []
    dense: list[str] = []

    def clone(layer: Any) -> Any:
        has_weights = bool(layer.trainable_weights)
        if prune_registry.PruneRegistry.supports(layer) and _weight_names(prune_registry.PruneRegistry, layer):
            try:
                kwargs = {"sparsity_m_by_n": structure} if structure else {"pruning_schedule": schedule}
                out = sk.prune_low_magnitude(layer, **kwargs)
                wrapped.append(layer.name)
                return out
            except (ValueError, TypeError) as exc:
                note(f"layer {layer.name} stays dense: {reason(exc, 120)}")
        if has_weights:
            dense.append(f"{layer.name} ({type(layer).__name__})")
        return layer  # the original layer, trained weights and all, as tfmot itself does

    # clone_function receives the trained layers; wrapping them keeps their weights.
    pruned = tf_keras.models.clone_model(model, clone_function=clone)
    if not wrapped:
        raise StageFailed("prune", "no layer of this model can be pruned (tfmot prunes Dense, Conv, Embedding, ...).")
    if training is not None:
        _fit(pruned, training, note, "prune", [sk.UpdatePruningStep()])
    else:
        # One shot: set every wrapper's step and let tfmot compute and apply its masks once.
        for layer in pruned.layers:
            if hasattr(layer, "pruning_obj"):
                layer.pruning_step.assign(1)
                layer.pruning_obj.conditional_mask_update()
                layer.pruning_obj.weight_mask_op()
    stripped = sk.strip_pruning(pruned)
    report = PruneReport(dense=dense)
    zeros = total = 0
    for layer in stripped.layers:
        if layer.name in wrapped:
            kernels = [w.numpy() for w in layer.weights if _is_prunable_weight(w.name, layer)]
            z = sum(int((k == 0).sum()) for k in kernels)
            n = sum(k.size for k in kernels)
            report.pruned[layer.name] = round(z / n, 4) if n else 0.0
            zeros, total = zeros + z, total + n
    report.overall = round(zeros / total, 4) if total else 0.0
    all_weights = [w for w in stripped.get_weights()]
    report.overall_all_weights = round(sum(int((w == 0).sum()) for w in all_weights) /
                                       max(1, sum(w.size for w in all_weights)), 4)
    return stripped, report


def _weight_names(registry: Any, layer: Any) -> list[str]:
    try:
        return list(registry._weight_names(layer))
    except (ValueError, AttributeError):
        return []


def _is_prunable_weight(name: str, layer: Any) -> bool:
    short = name.split("/")[-1].split(":")[0]
    return short in ("kernel", "embeddings", "pointwise_kernel", "depthwise_kernel")


CENTROID_INIT = {"linear": "LINEAR", "kmeans++": "KMEANS_PLUS_PLUS", "density": "DENSITY_BASED",
                 "random": "RANDOM"}


def cluster(model: Any, clusters: int, training: Training | None, note: Note,
            init: str = "linear") -> tuple[Any, dict[str, int], list[str]]:
    """Weight clustering with cluster_weights, then strip_clustering.

    Returns the model, the unique values per clustered kernel, and the layers left unclustered
    (tfmot refuses some, e.g. DepthwiseConv2D, for their accuracy loss).
    """
    mot = tfmot()
    cl = mot.clustering.keras
    params = {"number_of_clusters": clusters,
              "cluster_centroids_init": getattr(cl.CentroidInitialization, CENTROID_INIT[init])}
    tf_keras = tfw.tf_keras()
    from tensorflow_model_optimization.python.core.clustering.keras import clustering_registry

    clustered_names: list[str] = []
    skipped: list[str] = []

    def clone(layer: Any) -> Any:
        registry = clustering_registry.ClusteringRegistry
        if layer.trainable_weights and registry.supports(layer) and _weight_names(registry, layer):
            try:
                out = cl.cluster_weights(layer, **params)
                clustered_names.append(layer.name)
                return out
            except (ValueError, TypeError) as exc:
                note(f"layer {layer.name} not clustered: {reason(exc, 120)}")
        if layer.trainable_weights:
            skipped.append(f"{layer.name} ({type(layer).__name__})")
        return layer

    # Centroids are initialised from the trained weights of the layers handed to clone().
    wrapped = tf_keras.models.clone_model(model, clone_function=clone)
    if training is not None:
        _fit(wrapped, training, note, "cluster", [])
    stripped = cl.strip_clustering(wrapped)
    unique = {}
    for layer in stripped.layers:
        if layer.name in clustered_names:
            kernel = next((w.numpy() for w in layer.weights if _is_prunable_weight(w.name, layer)), None)
            if kernel is not None:
                unique[layer.name] = int(np.unique(kernel).size)
    return stripped, unique, skipped


def quantize_aware(model: Any, training: Training, note: Note) -> Any:
    """Quantization-aware training with quantize_model, fine-tuned on the training data."""
    mot = tfmot()
    try:
        q_model = mot.quantization.keras.quantize_model(model)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise StageFailed("quantize", f"tfmot cannot make this model quantization-aware: "
                                      f"{reason(exc, 200)}") from exc
    _fit(q_model, training, note, "qat", [])
    return q_model
