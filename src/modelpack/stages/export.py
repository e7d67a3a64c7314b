"""The `export` stage: write ONNX, TF SavedModel and TFLite artifacts, each checked for parity."""

from __future__ import annotations

import click

from ..errors import StageFailed, UsageError
from ..evaluation import compare
from ..formats import ModelRef, Repr
from ..pipeline.convert import DEFAULT_OPSET, route
from . import Params, Stage, StageContext, StageResult, option

FORMATS = ("onnx", "savedmodel", "tflite")


class ExportParams(Params):
    format: tuple[str, ...] = option(
        click.Choice(FORMATS), multiple=True,
        help="Format to write; repeat for several. The first one is what later stages work on. "
             "[default: onnx, or the input's own format when no conversion reaches onnx]")
    opset: int = option(click.IntRange(11, 21), default=DEFAULT_OPSET, help="ONNX opset for the onnx export.")


class ExportStage(Stage[ExportParams]):
    params_type = ExportParams
    name = "export"
    help = "Export the model to ONNX, TF SavedModel and/or TFLite, checking numerical parity of each."

    def accepts_for(self, params: ExportParams) -> tuple[Repr, ...]:
        return tuple(Repr)  # any model can be exported to the formats its conversions reach

    def plan(self, params: ExportParams, rep: Repr) -> Repr:
        formats = self.formats(params, rep)
        for fmt in formats:
            if route(rep, fmt) is None:
                reachable = [str(r) for r in Repr if route(rep, r) is not None]
                raise UsageError(
                    f"stage 'export': cannot make {fmt} from a {rep} model; from {rep} modelpack can write "
                    f"{', '.join(reachable)} (it converts keras -> savedmodel -> onnx or tflite)."
                )
        return formats[0]

    @staticmethod
    def formats(params: ExportParams, rep: Repr) -> list[Repr]:
        """The formats asked for; by default ONNX, or the model's own format when ONNX is out of reach."""
        if params.format:
            return [Repr(f) for f in dict.fromkeys(params.format)]
        return [Repr.ONNX if route(rep, Repr.ONNX) is not None else rep]

    def run(self, model: ModelRef, params: ExportParams, ctx: StageContext) -> StageResult:
        formats = self.formats(params, model.rep)
        reference = ctx.outputs(model)
        probe = (f"eval data ({len(ctx.eval_data)} examples)" if ctx.eval_data is not None
                 else "random inputs from the signature")
        result = StageResult(model=model)
        for rep in formats:
            if rep is model.rep:
                out = model
                if rep is Repr.ONNX:
                    _check_onnx(model)
            else:
                out = ctx.convert(model, rep, params.opset if rep is Repr.ONNX else None)
            metrics = compare(reference, ctx.outputs(out), ctx.eval_data)
            diff = metrics["max_abs_diff"]
            ctx.note(f"{rep}: max abs diff {diff:.3g} on {probe}")
            if diff > ctx.atol:
                raise StageFailed(
                    self.name,
                    f"the {rep} export differs from the source model by {diff:.3g} (max abs diff on {probe}), "
                    f"above --atol {ctx.atol:g}. Raise --atol if this difference is expected.",
                )
            result.metrics[str(rep)] = metrics
            result.artifact_metrics[rep] = {"parity": {**metrics, "atol": ctx.atol, "checked_on": probe}}
            result.artifacts.append(out)
        result.model = result.artifacts[0]
        return result


def _check_onnx(model: ModelRef) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(model.path), full_check=True)
    except Exception as exc:
        raise StageFailed("export", f"'{model.path}' is not a valid ONNX model: {exc}") from exc
