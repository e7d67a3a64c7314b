"""The `compress` stage: weight clustering (Keras, tfmot), ONNX graph optimization, and the archive codec.

Why one stage and not three: all three answer the same user question, "how many bytes do I ship?", and are
judged by the same number, the package's compressed size, which this stage's lineage record reports before
and after. They compose rather than compete: clustering leaves each layer with a handful of distinct weight
values, which only pays off once an archive codec compresses them (deflate or lzma), and graph optimization
drops constants and nodes before either. The work itself lives apart: clustering in `frameworks/tfmot.py`,
graph optimization in `frameworks/ort.py`, the codec in `package/archive.py`; this module only chooses and
records. Each part is also usable alone (`--clusters`, `--graph`, `--archive`).
"""

from __future__ import annotations

import click

from ..errors import UsageError
from ..formats import ModelRef, Repr
from ..package.archive import COMPRESSION
from . import Stage, StageContext, StageResult, option
from .fine_tuning import FineTuning, FineTuningParams


class CompressParams(FineTuningParams):
    clusters: int | None = option(
        click.IntRange(2, 256),
        help="Keras: share each layer's weights among N values (tfmot cluster_weights). "
             "Default on Keras models: 16.")
    centroid_init: str = option(
        click.Choice(["linear", "kmeans++", "density", "random"]), default="linear",
        help="How cluster centroids start. linear (Han et al., Deep Compression) kept accuracy best and "
             "gives skewed cluster use that compresses better.")
    graph: str | None = option(
        click.Choice(["basic", "extended"]),
        help="ONNX: onnxruntime offline graph optimization. basic (constant folding, redundant nodes) is "
             "portable; extended adds fusions into onnxruntime contrib ops. Default on ONNX models: basic.")
    archive: str | None = option(
        click.Choice(sorted(COMPRESSION)),
        help="How `modelpack pack` compresses this package's artifacts (recorded in the manifest).")


class CompressStage(FineTuning, Stage[CompressParams]):
    params_type = CompressParams
    name = "compress"
    help = ("Cluster Keras weights (--clusters), optimize an ONNX graph (--graph), "
            "and choose how the .mpk archive is compressed (--archive).")
    accepts = (Repr.KERAS, Repr.ONNX)

    def accepts_for(self, params: CompressParams) -> tuple[Repr, ...]:
        if params.clusters:
            return (Repr.KERAS,)
        if params.graph:
            return (Repr.ONNX,)
        if params.archive:
            return tuple(Repr)  # only the archive codec: works on whatever the pipeline holds
        return self.accepts

    def archive_compression(self, params: CompressParams) -> str | None:
        return params.archive

    def plan(self, params: CompressParams, rep: Repr) -> Repr:
        if params.clusters and params.graph:
            raise UsageError("stage 'compress': --clusters (Keras) and --graph (ONNX) work on different models; "
                             "use two compress stages with an export between them.")
        return rep

    def run(self, model: ModelRef, params: CompressParams, ctx: StageContext) -> StageResult:
        only_archive = params.archive and not params.clusters and not params.graph
        if only_archive:
            result = StageResult(model=model)
        elif model.rep is Repr.KERAS:
            result = _cluster(model, params.clusters or 16, params, ctx)
        elif model.rep is Repr.ONNX:
            result = _graph(model, params.graph or "basic", ctx)
        else:  # pragma: no cover - planning prevents this
            raise UsageError(f"stage 'compress': nothing to do on a {model.rep} model.")
        if params.archive:
            result.archive_compression = params.archive
            result.metrics["archive"] = params.archive
        return result


def _cluster(model: ModelRef, clusters: int, params: CompressParams, ctx: StageContext) -> StageResult:
    from ..frameworks import tfmot
    from .fine_tuning import save_tf_keras, training_from

    training = training_from(params, ctx)
    notes = []
    if training is None:
        notes.append("clustering without --train-data: centroids are not fine-tuned; expect an accuracy drop")
        ctx.note(notes[-1])
    tf_model = tfmot.load_tf_keras(model, ctx.safe, ctx.probe, ctx.note)
    clustered, unique, skipped = tfmot.cluster(tf_model, clusters, training, ctx.note, params.centroid_init)
    if skipped:
        notes.append("not clustered (tfmot does not cluster these): " + ", ".join(skipped))
        ctx.note(notes[-1])
    metrics = {"clusters": clusters, "centroid_init": params.centroid_init,
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
