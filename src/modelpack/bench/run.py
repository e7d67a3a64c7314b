"""`modelpack benchmark` as a library call: pick the targets, measure, gate, record in the manifest."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data import Dataset, load_dataset
from ..errors import UsageError
from ..formats import ModelRef, detect
from ..package import is_package, open_any
from ..package import manifest as mf
from ..summary import float_export
from . import gates as gates_mod
from .measure import BenchmarkRecord, BenchSpec, benchmark
from .targets import model_targets, package_targets


@dataclass
class BenchRequest:
    path: Path
    spec: BenchSpec = field(default_factory=BenchSpec)
    baseline: Path | None = None
    formats: tuple[str, ...] = ()
    eval_data: Path | None = None
    fail_if: tuple[str, ...] = ()
    record: bool = True


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 or s > 65536 for s in sizes):
        raise UsageError(f"--batch-sizes '{text}': give positive integers separated by commas, e.g. 1,8,32.")
    return tuple(dict.fromkeys(sizes))


def run(request: BenchRequest, progress: Callable[[str], None] = lambda m: None) -> BenchmarkRecord:
    """Measure, evaluate the gates (result["gates"]), and record into a package directory's manifest."""
    gates = gates_mod.parse_all(request.fail_if)
    # No eval data at all: refuse an accuracy gate before anything is opened; labels are checked once loaded.
    gates_mod.check_measurable(gates, labels=request.eval_data is not None, memory=request.spec.memory)

    def eval_data(signature: Any) -> Dataset | None:
        data = load_dataset(request.eval_data, signature) if request.eval_data else None
        gates_mod.check_measurable(gates, labels=data is not None and data.labels is not None,
                                   memory=request.spec.memory)
        return data

    baseline = detect(request.baseline) if request.baseline is not None else None
    if is_package(request.path):
        with open_any(request.path) as pkg:
            targets, notes = package_targets(pkg, request.formats, baseline)
            spec = request.spec
            if spec.compression == "deflate":
                spec = replace(spec, compression=pkg.manifest.get("archive", {}).get("compression", "deflate"))
            result = benchmark(targets, pkg.signature, spec, eval_data(pkg.signature), progress)
            result["notes"] = notes
            found = float_export(pkg.manifest)
            if found:  # the package against its float export, as its quantize stage timed them
                result["float_export"] = found
            result["gates"] = gates_mod.evaluate(gates, result)
            result["recorded"] = False
            if request.record and request.path.is_dir():
                from ..package.signing import SIGNATURE_NAME

                if (request.path / SIGNATURE_NAME).is_file():
                    notes.append("the package is signed, so the results were not written into its manifest (that "
                                 "would void the signature); benchmark an unsigned copy to record them, then sign.")
                else:
                    _record(request.path, result)
                    result["recorded"] = True
        return result
    if request.formats:
        raise UsageError("--runtime picks artifacts of a package; a model file has one runtime.")
    model = detect(request.path)
    signature = _signature(model if baseline is None else baseline, request.spec.safe)
    result = benchmark(model_targets(model, baseline), signature, request.spec, eval_data(signature), progress)
    result["notes"], result["recorded"] = [], False
    result["gates"] = gates_mod.evaluate(gates, result)
    return result


def _signature(ref: ModelRef, safe: bool) -> Any:
    from ..inspection import signature_of

    return signature_of(ref, safe=safe)


def _record(package_dir: Path, result: BenchmarkRecord) -> None:
    """Store the result in the package's manifest, replacing the file atomically."""
    from ..atomic import atomic_file

    path = package_dir / mf.MANIFEST_NAME
    data = mf.read(path)
    data["benchmark"] = {k: v for k, v in result.items() if k != "recorded"}
    mf.validate(data, str(path))
    with atomic_file(path, force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
