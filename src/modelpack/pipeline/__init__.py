"""The pipeline: a model through a chain of stages into one package.

`engine` compiles a PipelineSpec into planned stages and runs them (the run is each stage's StageContext);
`file` reads and writes the TOML pipeline file against the same option list as the command line;
`convert` walks the conversion routes between representations (keras -> savedmodel -> onnx or tflite);
`isolation` runs a pipeline in a child process, so a framework crash is a one-line error, not a dead shell.
"""

from __future__ import annotations

from .engine import (
    PATH_OPTIONS,
    SPEC_OPTIONS,
    PipelineSpec,
    PlannedStage,
    Reporter,
    RunResult,
    StageSpec,
    plan,
    run,
)

__all__ = ["PATH_OPTIONS", "SPEC_OPTIONS", "PipelineSpec", "PlannedStage", "Reporter", "RunResult", "StageSpec",
           "plan", "run"]
