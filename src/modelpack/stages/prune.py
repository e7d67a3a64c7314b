"""The `prune` stage: magnitude pruning of Keras models (tfmot) and ONNX weight initializers."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from ..errors import UsageError
from ..formats import ModelRef, Repr
from . import Stage, StageContext, StageResult, option
from .fine_tuning import FineTuning, FineTuningParams, save_tf_keras, training_from

ONNX_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")


def parse_structure(value: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4): keep at most N non-zero weights in every group of M."""
    if not value:
        return None
    try:
        n, m = (int(part) for part in value.split(":"))
    except ValueError:
        raise UsageError(f"stage 'prune': --structure '{value}': expected N:M, e.g. 2:4.") from None
    if not 0 < n < m:
        raise UsageError(f"stage 'prune': --structure '{value}': need 0 < N < M, e.g. 2:4.")
    return n, m


class PruneParams(FineTuningParams):
    sparsity: float = option(
        click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
        help="Fraction of prunable weights set to zero.")
    structure: str | None = option(
        str,
        help="N:M structured sparsity, e.g. 2:4 (N non-zero in every M); "
             "overrides --sparsity.")
    scope: str = option(
        click.Choice(["layer", "global"]), default="layer",
        help="ONNX: one threshold per layer, or one across all layers.")


class PruneStage(FineTuning, Stage[PruneParams]):
    params_type = PruneParams
    name = "prune"
    help = "Magnitude-prune weights to a target sparsity (Keras via tfmot; ONNX initializers)."
    accepts = (Repr.KERAS, Repr.ONNX)

    def plan(self, params: PruneParams, rep: Repr) -> Repr:
        parse_structure(params.structure)
        return rep

    def run(self, model: ModelRef, params: PruneParams, ctx: StageContext) -> StageResult:
        structure = parse_structure(params.structure)
        if model.rep is Repr.ONNX:
            return _prune_onnx(model, params, structure, ctx)
        return _prune_keras(model, params, structure, ctx)


def _prune_keras(model: ModelRef, params: PruneParams, structure: tuple[int, int] | None,
                 ctx: StageContext) -> StageResult:
    from ..frameworks import tfmot

    training = training_from(params, ctx)
    target = 1 - structure[0] / structure[1] if structure else params.sparsity
    notes = []
    if training is None:
        notes.append("one-shot pruning: no --train-data, so no fine-tuning; expect an accuracy drop")
        ctx.note(notes[-1])
    tf_model = tfmot.load_tf_keras(model, ctx.safe, ctx.probe, ctx.note)
    pruned, report = tfmot.prune(tf_model, target, structure, training, ctx.note)
    if report.dense:
        notes.append("stayed dense (not prunable by tfmot): " + ", ".join(report.dense))
        ctx.note(notes[-1])
    metrics = {
        "mode": "fine-tuned" if training else "one-shot",
        "target_sparsity": round(target, 4),
        "sparsity": report.overall,
        "sparsity_all_weights": report.overall_all_weights,
        "layer_sparsity": report.pruned,
        "dense_layers": report.dense,
    }
    return StageResult(model=save_tf_keras(pruned, ctx, "pruned"), metrics=metrics, notes=notes)


def _prune_onnx(model: ModelRef, params: PruneParams, structure: tuple[int, int] | None,
                ctx: StageContext) -> StageResult:
    import onnx
    from onnx import numpy_helper

    notes = []
    if params.train_data:
        notes.append("ONNX models are pruned in one shot: --train-data is not used (no training for ONNX)")
    else:
        notes.append("one-shot pruning of ONNX weight initializers")
    ctx.note(notes[-1])
    proto = onnx.load(str(model.path))
    inits = {init.name: init for init in proto.graph.initializer}
    # Some exporters (PaddlePaddle's, for one) keep weights in Constant nodes rather than initializers.
    for node in proto.graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            value = next((a.t for a in node.attribute if a.name == "value" and a.t.dims), None)
            if value is not None:
                value.name = node.output[0]
                inits.setdefault(node.output[0], value)
    targets: dict[str, int] = {}  # initializer -> axis to group along for N:M
    for node in proto.graph.node:
        if (node.op_type in ONNX_WEIGHT_OPS and len(node.input) > 1 and node.input[1] in inits
                and numpy_helper.to_array(inits[node.input[1]]).dtype.kind == "f"):
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            targets[node.input[1]] = 1 if (node.op_type == "Gemm" and trans_b) or node.op_type == "Conv" else 0
    if not targets:
        raise UsageError("stage 'prune': this ONNX model has no MatMul, Gemm or Conv weights (initializers or "
                         "Constant nodes) to prune.")
    arrays = {name: numpy_helper.to_array(inits[name]).astype(np.float32, copy=True) for name in targets}
    dense: list[str] = []
    if structure:
        for name, axis in targets.items():
            if not _n_of_m(arrays[name], axis, *structure):
                dense.append(name)
    elif params.scope == "global":
        flat = np.concatenate([np.abs(a).ravel() for a in arrays.values()])
        k = int(round(flat.size * params.sparsity))
        threshold = np.partition(flat, k - 1)[k - 1] if k else -1.0
        for a in arrays.values():
            a[np.abs(a) <= threshold] = 0.0
    else:
        for a in arrays.values():
            k = int(round(a.size * params.sparsity))
            if k:
                order = np.argsort(np.abs(a), axis=None, kind="stable")[:k]
                a.ravel()[order] = 0.0
    layer_sparsity = {}
    for name, a in arrays.items():
        original = inits[name]
        original.CopyFrom(numpy_helper.from_array(a.astype(numpy_helper.to_array(original).dtype), name))
        layer_sparsity[name] = round(float((a == 0).mean()), 4)
    out = ctx.scratch("pruned.onnx")
    onnx.save(proto, str(out))
    zeros = sum(int((a == 0).sum()) for a in arrays.values())
    total = sum(a.size for a in arrays.values())
    if dense:
        notes.append(f"stayed dense (size not a multiple of {structure[1] if structure else ''}): {', '.join(dense)}")
    metrics = {
        "mode": "one-shot",
        "scope": params.scope if not structure else f"{structure[0]}:{structure[1]}",
        "target_sparsity": round(1 - structure[0] / structure[1], 4) if structure else params.sparsity,
        "sparsity": round(zeros / total, 4),
        "layer_sparsity": layer_sparsity,
        "dense_layers": dense,
    }
    return StageResult(model=ModelRef(Repr.ONNX, Path(out)), metrics=metrics, notes=notes)


def _n_of_m(weights: np.ndarray, axis: int, n: int, m: int) -> bool:
    """Keep the n largest of every m consecutive weights along the reduction axis, in place."""
    moved = np.moveaxis(weights, axis, -1) if weights.ndim == 2 else weights.reshape(weights.shape[0], -1)
    if moved.shape[-1] % m:
        return False
    groups = moved.reshape(-1, m)
    drop = np.argsort(np.abs(groups), axis=1, kind="stable")[:, : m - n]
    np.put_along_axis(groups, drop, 0.0, axis=1)
    restored = groups.reshape(moved.shape)
    if weights.ndim == 2:
        weights[...] = np.moveaxis(restored, -1, axis)
    else:
        weights[...] = restored.reshape(weights.shape)
    return True
