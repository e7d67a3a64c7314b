"""The run's quality gates: what is refused before any work, and the check of each stage's output.

--max-accuracy-drop needs labels; --min-agreement (top-1 agreement with the source model, %) and --min-cosine
(mean cosine similarity of every float output to the source's) need eval data but no labels. A stage declares its
own up-front checks (`Stage.check_run`), as the benchmark stage does for its --fail-if.
"""

from __future__ import annotations

import re
from typing import Any

from ..data import Dataset
from ..errors import UsageError
from .spec import PipelineSpec, PlannedStage

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_identity(spec: PipelineSpec) -> None:
    """The package's name and version, and what a gate violation does, checked before anything loads."""
    if spec.name is not None and not NAME_RE.match(spec.name):
        raise UsageError(f"--name '{spec.name}': use letters, digits, '.', '_' or '-' (at most 128, no leading symbol).")
    if not VERSION_RE.match(spec.model_version):
        raise UsageError(f"--model-version '{spec.model_version}': use letters, digits, '.', '_' or '-', e.g. 1 or 2.0.1.")
    if spec.on_violation not in ("fail", "skip"):
        raise UsageError(f"--on-violation '{spec.on_violation}': use fail or skip.")


def check_gates(spec: PipelineSpec, planned: list[PlannedStage], eval_data: Dataset | None) -> None:
    """Refuse gates this run cannot measure, the run's and each stage's, before any stage runs."""
    labels = eval_data is not None and eval_data.labels is not None
    if spec.max_accuracy_drop is not None and not labels:
        raise UsageError("--max-accuracy-drop needs --eval-data with labels (array 'y') to measure accuracy; "
                         "without labels, gate on --min-agreement or --min-cosine against the source model.")
    if (spec.min_agreement is not None or spec.min_cosine is not None) and eval_data is None:
        raise UsageError("--min-agreement and --min-cosine compare outputs on real inputs: give --eval-data FILE.npz "
                         "(labels are not needed).")
    for step in planned:
        step.stage.check_run(step.params, labels=labels)


def violation(spec: PipelineSpec, stage: str, metrics: dict[str, Any]) -> str | None:
    """The reason a stage's output breaks a quality gate, or None.

    --max-accuracy-drop needs labels; --min-agreement (top-1 agreement with the source model, %) and
    --min-cosine (mean cosine similarity of every float output to the source's) need none.
    """
    drop = metrics.get("accuracy_drop")
    if spec.max_accuracy_drop is not None and drop is not None and drop > spec.max_accuracy_drop:
        source = metrics["accuracy"] + drop
        return (f"stage '{stage}' lost {drop:.2f} accuracy points ({source:.2f}% -> {metrics['accuracy']:.2f}%), "
                f"more than --max-accuracy-drop {spec.max_accuracy_drop:g}.")
    agree = metrics.get("top1_agreement")
    if spec.min_agreement is not None and agree is not None and agree < spec.min_agreement:
        return (f"stage '{stage}' agrees with the source model's top-1 on {agree:.2f}% of the eval examples, "
                f"below --min-agreement {spec.min_agreement:g}.")
    cosine = metrics.get("cosine")
    if spec.min_cosine is not None and cosine is not None and cosine < spec.min_cosine:
        worst = min(((n, m["cosine"]) for n, m in metrics.get("outputs", {}).items() if "cosine" in m),
                    key=lambda item: item[1], default=("?", cosine))
        return (f"stage '{stage}' output '{worst[0]}' has mean cosine similarity {cosine:.4f} to the source model's, "
                f"below --min-cosine {spec.min_cosine:g}.")
    return None
