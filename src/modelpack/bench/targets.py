"""What a benchmark measures: a package's artifacts beside its original model, or one model file."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..formats import ModelRef, Repr, detect
from ..package import Package, digest
from .measure import Target


def find_original(pkg: Package) -> tuple[ModelRef | None, str]:
    """The model the package was built from, if it is still where the lineage says (and unchanged)."""
    source = pkg.manifest["lineage"]["source"]
    recorded = Path(source["path"])
    candidates = [recorded] if recorded.is_absolute() else [Path.cwd() / recorded, pkg.source.parent / recorded]
    for path in candidates:
        if path.exists():
            if digest(path).sha256 != source["sha256"]:
                return None, f"the original model '{path}' changed since the package was built"
            return detect(path), ""
    return None, f"the original model '{recorded}' was not found"


def package_targets(pkg: Package, formats: tuple[str, ...] = (), baseline: ModelRef | None = None,
                    include_original: bool = True) -> tuple[list[Target], list[str]]:
    """The original model (the baseline when found) and each artifact, in package order."""
    notes: list[str] = []
    entries = pkg.artifacts
    if formats:
        have = {a["format"] for a in entries}
        missing = [f for f in formats if f not in have]
        if missing:
            raise UsageError(f"--runtime {', '.join(missing)}: {pkg.source} has no such artifact "
                             f"(it has: {', '.join(sorted(have))}).")
        entries = [a for a in entries if a["format"] in formats]
    targets: list[Target] = []
    if baseline is not None:
        targets.append(Target("baseline", baseline, baseline=True))
    elif include_original:
        original, why = find_original(pkg)
        if original is not None:
            targets.append(Target("original", original, baseline=True,
                                  display=pkg.manifest["lineage"]["source"]["path"]))
        else:
            notes.append(f"{why}; ratios are against the first artifact. Pass --baseline MODEL to choose.")
    for entry in entries:
        targets.append(Target(entry["format"], pkg.model_ref(entry), display=entry["path"]))
    if not any(t.baseline for t in targets):
        targets[0].baseline = True
    return targets, notes


def model_targets(model: ModelRef, baseline: ModelRef | None = None) -> list[Target]:
    if baseline is None:
        return [Target(model.rep.value, model, baseline=True)]
    return [Target("baseline", baseline, baseline=True), Target(model.rep.value, model)]


def check_formats(values: tuple[str, ...]) -> tuple[str, ...]:
    valid = {r.value for r in Repr}
    bad = [v for v in values if v not in valid]
    if bad:
        raise UsageError(f"--runtime {', '.join(bad)}: use {', '.join(sorted(valid))}.")
    return values
