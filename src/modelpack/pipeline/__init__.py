"""The pipeline: a model through a chain of stages into one package.

Read in this order: `spec` (the PipelineSpec, its options and its plan), `context` (the run context every stage
sees), `gates` (what is refused up front and each stage's quality gates), `writer` (the package, and the
background work settled before it is written), `engine` (the loop over the stages);
`file` reads and writes the TOML pipeline file against the same option list as the command line;
`convert` walks the conversion routes between representations (keras -> savedmodel -> onnx or tflite);
`isolation` runs work in a child process: a forked pipeline (a framework crash is a one-line error, not a dead
shell) or a spawned conversion (its memory goes back when it ends).
"""

from __future__ import annotations

from .context import Reporter
from .engine import RunResult, run, run_isolated
from .spec import PATH_OPTIONS, SPEC_OPTIONS, PipelineSpec, PlannedStage, StageSpec, describe_plan, plan

__all__ = ["PATH_OPTIONS", "SPEC_OPTIONS", "PipelineSpec", "PlannedStage", "Reporter", "RunResult", "StageSpec",
           "describe_plan", "plan", "run", "run_isolated"]
