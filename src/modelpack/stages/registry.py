"""Finding stages: every stage, built-in or third-party, comes from the `modelpack.stages` entry points.

Entry points are listed lazily and each stage module is imported only when its
stage is used (stage modules import no framework at module level).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ..errors import UsageError
from . import Stage

GROUP = "modelpack.stages"


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def names() -> list[str]:
    return sorted(_entry_points())


def get(name: str) -> Stage[Any]:
    """Instantiate the stage registered as `name`; a UsageError lists the known ones."""
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(names()) or "none installed"
        raise UsageError(f"unknown stage '{name}'; available stages: {known}. See 'modelpack stages'.")
    try:
        obj = eps[name].load()
    except Exception as exc:
        raise UsageError(f"stage '{name}' ({eps[name].value}) failed to load: {exc}") from exc
    stage = obj() if isinstance(obj, type) else obj
    if not isinstance(stage, Stage):
        raise UsageError(f"stage '{name}' ({eps[name].value}) is not a modelpack.stages.Stage.")
    return stage


def origin(name: str) -> str:
    ep = _entry_points()[name]
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else ep.value


def defaults_of(lineage: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Default parameters of the stages in a lineage, so tables show only what the user changed (a plugin stage
    not installed here is left out)."""
    found = {}
    for name in {rec["name"] for rec in lineage["stages"]}:
        try:
            found[name] = get(name).defaults()
        except UsageError:
            continue
    return found
