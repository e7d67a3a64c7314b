"""The `compress` stage: weight clustering (Keras, tfmot), ONNX graph optimization, and the archive codec."""

from __future__ import annotations

from typing import Any

import click

from ..errors import UsageError
from ..formats import ModelRef, Repr
from ..package.archive import COMPRESSION
from . import FINE_TUNING, Option, Stage, StageContext, StageResult


class CompressStage(Stage):
    name = "compress"
    help = ("Cluster Keras weights (--clusters), optimize an ONNX graph (--graph), "
            "and choose how the .mpk archive is compressed (--archive).")
    accepts = (Repr.KERAS, Repr.ONNX)
    options = (
        Option("clusters", click.IntRange(2, 256),
               help="Keras: share each layer's weights among N values (tfmot cluster_weights). "
                    "Default on Keras models: 16."),
        Option("centroid-init", click.Choice(["linear", "kmeans++", "density", "random"]), default="linear",
               help="How cluster centroids start. linear (Han et al., Deep Compression) kept accuracy best and "
                    "gives skewed cluster use that compresses better."),
        Option("graph", click.Choice(["basic", "extended"]),
               help="ONNX: onnxruntime offline graph optimization. basic (constant folding, redundant nodes) is "
                    "portable; extended adds fusions into onnxruntime contrib ops. Default on ONNX models: basic."),
        Option("archive", click.Choice(sorted(COMPRESSION)),
               help="How `modelpack pack` compresses this package's artifacts (recorded in the manifest)."),
        *FINE_TUNING,
    )

    def accepts_for(self, params: dict[str, Any]) -> tuple[Repr, ...]:
        if params.get("clusters"):
            return (Repr.KERAS,)
        if params.get("graph"):
            return (Repr.ONNX,)
        if params.get("archive"):
            return tuple(Repr)  # only the archive codec: works on whatever the pipeline holds
        return self.accepts

    def plan(self, params: dict[str, Any], rep: Repr) -> Repr:
        if params.get("clusters") and params.get("graph"):
            raise UsageError("stage 'compress': --clusters (Keras) and --graph (ONNX) work on different models; "
                             "use two compress stages with an export between them.")
        return rep

    def run(self, model: ModelRef, params: dict[str, Any], ctx: StageContext) -> StageResult:
        only_archive = params.get("archive") and not params.get("clusters") and not params.get("graph")
        if only_archive:
            result = StageResult(model=model)
        elif model.rep is Repr.KERAS:
            result = _cluster(model, params.get("clusters") or 16, params, ctx)
        elif model.rep is Repr.ONNX:
            result = _graph(model, params.get("graph") or "basic", ctx)
        else:  # pragma: no cover - planning prevents this
            raise UsageError(f"stage 'compress': nothing to do on a {model.rep} model.")
        if params.get("archive"):
            result.archive_compression = params["archive"]
            result.metrics["archive"] = params["archive"]
        return result


def _cluster(model: ModelRef, clusters: int, params: dict[str, Any], ctx: StageContext) -> StageResult:
    from ..frameworks import tfmot
    from .prune import save_tf_keras, training_from

    training = training_from(params, ctx)
    notes = []
    if training is None:
        notes.append("clustering without --train-data: centroids are not fine-tuned; expect an accuracy drop")
        ctx.note(notes[-1])
    tf_model = tfmot.load_tf_keras(model, ctx.safe, ctx.probe, ctx.note)
    clustered, unique, skipped = tfmot.cluster(tf_model, clusters, training, ctx.note, params["centroid_init"])
    if skipped:
        notes.append("not clustered (tfmot does not cluster these): " + ", ".join(skipped))
        ctx.note(notes[-1])
    metrics = {"clusters": clusters, "centroid_init": params["centroid_init"],
               "mode": "fine-tuned" if training else "one-shot",
               "unique_weights_per_layer": unique, "unclustered_layers": skipped}
    return StageResult(model=save_tf_keras(clustered, ctx, "clustered"), metrics=metrics, notes=notes)


def _graph(model: ModelRef, level: str, ctx: StageContext) -> StageResult:
    from ..frameworks import ort

    out = ctx.scratch(f"model.{level}.onnx")
    before, after = ort.optimize_graph(model.path, out, level)
    ort.check_loads(out, "compress", ctx.probe)
    ctx.note(f"graph optimization ({level}): {before} -> {after} nodes")
    return StageResult(model=ModelRef(Repr.ONNX, out),
                       metrics={"graph_level": level, "nodes_before": before, "nodes_after": after})
