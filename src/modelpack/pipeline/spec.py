"""The pipeline as data: the spec a command line or a pipeline file compiles to, and its plan.

`plan()` resolves every stage's parameters and the conversions between stages before any work, so an impossible
pipeline is refused up front; `describe_plan()` is what `optimize --dry-run` and the Python API show of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..evaluation import DEFAULT_EVAL_LIMIT
from ..formats import ModelRef, Repr, detect
from ..stages import Option, Params, Stage, registry
from . import convert


@dataclass
class StageSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


# The pipeline's top-level settings, declared once: `optimize` makes its global options from this list and a
# pipeline file's top-level keys are checked against it. Defaults live in PipelineSpec (these say None, so an
# option not given on the command line leaves a pipeline file's value alone).
SPEC_OPTIONS: tuple[Option, ...] = (
    Option("output", click.Path(path_type=Path), short="-o", help="Package directory to write."),
    Option("eval-data", click.Path(path_type=Path), help=".npz with arrays x (and labels y) for checks."),
    Option("atol", click.FloatRange(min=0), help="Max abs diff an export may show.  [default: 1e-4]"),
    Option("name", str, help="Package name.  [default: the input's file name]"),
    Option("model-version", str, help="Package version.  [default: 1]"),
    Option("max-accuracy-drop", click.FloatRange(min=0),
           help="Fail (or skip) a stage whose output loses more accuracy points than this."),
    Option("min-agreement", click.FloatRange(0, 100),
           help="Fail (or skip) a stage whose top-1 predictions agree with the source model's on fewer than this "
                "% of the eval examples. Needs no labels."),
    Option("min-cosine", click.FloatRange(-1, 1),
           help="Fail (or skip) a stage whose float outputs have a mean cosine similarity to the source model's "
                "below this (worst output). Needs no labels."),
    Option("on-violation", click.Choice(["fail", "skip"]),
           help="On a quality-gate violation: fail the run, or drop the stage and go on.  [default: fail]"),
    Option("eval-limit", click.IntRange(1), help="Eval examples used for fidelity, accuracy and the gates "
           "(the first N).  [default: 512]"),
    Option("unsafe-load", is_flag=True, help="Allow Keras Lambda layers (runs code from the model file)."),
    Option("objective", click.Choice(["latency", "size"]),
           help="What optimizing is for: latency (never slower than the float ONNX) or size (the smallest "
                "package that meets the fidelity targets and gates).  [default: latency]"),
    Option("batch-axis", str, multiple=True,
           help="INPUT=AXIS or INPUT=none: where an input holds its examples, when the graph's dimension names "
                "cannot say (repeat per input).  [default: from the graph]"),
    Option("dim", str, multiple=True,
           help="NAME=SIZE: without --eval-data, the size synthetic inputs give the dynamic dimension the graph "
                "calls NAME (repeatable).  [default: 128 for every dynamic non-batch dimension]"),
)
PATH_OPTIONS = ("input", "output", "eval_data")


@dataclass
class PipelineSpec:
    """Everything a run needs; the command line and a pipeline file both compile to this."""

    input: Path | None
    output: Path | None
    stages: list[StageSpec] = field(default_factory=list)
    eval_data: Path | None = None
    atol: float = 1e-4
    name: str | None = None
    model_version: str = "1"
    unsafe_load: bool = False
    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None
    on_violation: str = "fail"
    eval_limit: int = DEFAULT_EVAL_LIMIT
    force: bool = False
    batch_axis: tuple[str, ...] = ()
    objective: str = "latency"
    dim: tuple[str, ...] = ()


def override(spec: PipelineSpec, settings: Mapping[str, Any]) -> PipelineSpec:
    """The spec with every setting given (None and () are not given; a flag can only turn a setting on)."""
    for option in SPEC_OPTIONS:
        value = settings.get(option.key)
        if option.is_flag:
            setattr(spec, option.key, getattr(spec, option.key) or bool(value))
        elif value is not None and value != ():
            setattr(spec, option.key, tuple(value) if option.multiple else value)
    return spec


def convert_settings(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Settings given from Python, checked against SPEC_OPTIONS and converted by the command line's rules."""
    by_key = {o.key: o for o in SPEC_OPTIONS if o.key != "output"}
    unknown = sorted(set(values) - set(by_key))
    if unknown:
        raise UsageError(f"{where}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(by_key)}.")
    found: dict[str, Any] = {}
    for key, value in values.items():
        option = by_key[key]
        if value is None:
            continue
        try:
            if option.multiple:
                given = value if isinstance(value, (list, tuple)) else [value]
                found[key] = tuple(option.param_type.convert(v, None, None) for v in given)
            else:
                found[key] = option.param_type.convert(value, None, None)
        except click.BadParameter as exc:
            raise UsageError(f"{where}: {key}={value!r}: {exc.message}") from exc
    return found


@dataclass
class PlannedStage:
    stage: Stage[Any]
    params: Params
    input_rep: Repr
    output_rep: Repr


def plan(spec: PipelineSpec, source_rep: Repr) -> list[PlannedStage]:
    """Resolve every stage and its parameters, and check each can get the representation it needs."""
    planned: list[PlannedStage] = []
    rep = source_rep
    for index, stage_spec in enumerate(spec.stages, 1):
        stage = registry.get(stage_spec.name)
        params = stage.resolve(stage_spec.params)
        accepts = stage.accepts_for(params)
        target = next((r for r in ((rep,) if rep in accepts else ()) + accepts
                       if convert.route(rep, r) is not None), None)
        if target is None:
            accepted = ", ".join(str(r) for r in accepts)
            raise UsageError(
                f"stage {index} '{stage.name}' works on {accepted} models, but the pipeline holds a {rep} model "
                f"there and no conversion reaches those (modelpack converts keras -> savedmodel -> onnx or tflite)."
            )
        output_rep = stage.plan(params, target)
        planned.append(PlannedStage(stage, params, target, output_rep))
        rep = output_rep
    return planned


def planned_compression(planned: list[PlannedStage]) -> str:
    """The archive codec the package will use: the last one a stage picks from its parameters, else deflate.

    Known before any work, so the source model and every stage are measured with the same codec."""
    chosen = "deflate"
    for step in planned:
        chosen = step.stage.archive_compression(step.params) or chosen
    return chosen


def describe_plan(spec: PipelineSpec, source: ModelRef | None = None) -> dict[str, Any]:
    """The resolved pipeline as JSON data: each stage, its parameters and the conversions before it."""
    if spec.input is None:
        raise UsageError("no input model: give INPUT, or 'input' in the pipeline file.")
    source = source or detect(spec.input)
    rows = []
    held = source.rep
    for index, step in enumerate(plan(spec, source.rep), 1):
        chain = convert.route(held, step.input_rep) or [held]
        rows.append({"index": index, "stage": step.stage.name, "params": jsonable(step.params),
                     "converts": [str(r) for r in chain], "input_format": str(step.input_rep),
                     "output_format": str(step.output_rep)})
        held = step.output_rep
    return {"input": str(spec.input), "input_format": source.describe(), "output": str(spec.output),
            "eval_data": str(spec.eval_data) if spec.eval_data else None, "atol": spec.atol, "stages": rows}


def default_name(path: Path) -> str:
    stem = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "model"
    return name[:128]


def jsonable(value: Any) -> Any:
    """Parameters as JSON data (paths and click's values as strings), for the manifest and the plan."""
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
