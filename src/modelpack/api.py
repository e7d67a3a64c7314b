"""modelpack from Python: the commands' work without the command line.

    import modelpack

    result = modelpack.optimize("model.keras", "build/pkg", stages=["export", ("quantize", {"method": "dynamic"})])
    with modelpack.open("build/pkg") as pkg:
        logits = pkg.predict({"x": batch})["logits"]
    numbers = modelpack.benchmark("build/pkg", batch_sizes=(1, 32), fail_if=["onnx.p99_ms@1 > 20"])
    app = modelpack.create_app("build/pkg", api_key="...")  # an ASGI app: mount it, or run it with uvicorn

The same errors as the command line (`modelpack.errors`): `UsageError` and `InputError` for a bad call or input,
`StageFailed` and `GateFailed` for work that ran and failed. These functions are re-exported lazily from
`modelpack`, so `import modelpack` stays light; TensorFlow loads only when a stage needs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GateFailed, UsageError

if TYPE_CHECKING:
    from .bench.measure import BenchmarkRecord
    from .package import Package
    from .pipeline.engine import RunResult
    from .serve.app import App

StageArg = str | tuple[str, Mapping[str, Any]]
PathArg = str | os.PathLike[str]


def optimize(input: PathArg, output: PathArg, stages: Sequence[StageArg], *, force: bool = False,
             **settings: Any) -> RunResult:
    """Run a pipeline of stages over a model into a package directory, as `modelpack optimize` does.

    Each stage is a name (`"export"`) or a name and its options, with the command line's option names in
    snake_case (`("prune", {"sparsity": 0.8, "train_data": "train.npz"})`). `settings` are `optimize`'s own
    options in snake_case (`eval_data`, `name`, `model_version`, `atol`, `max_accuracy_drop`, `min_agreement`,
    `min_cosine`, `on_violation`, `eval_limit`, `unsafe_load`, `objective`, `batch_axis`, `dim`: the list in
    `modelpack.pipeline.SPEC_OPTIONS`), checked as the command line checks them. Returns the output path and
    the package's manifest. Every stage's options are checked before any work starts; where it is safe, the
    pipeline runs in a forked child, so a crash inside a framework raises `StageFailed` instead of ending Python.
    """
    from .pipeline import PipelineSpec, StageSpec, run_isolated
    from .pipeline.spec import convert_settings, override
    from .stages import registry

    if isinstance(stages, (str, tuple)) or not stages:
        raise UsageError("stages: give a list of at least one stage, e.g. stages=['export'] or "
                         "[('quantize', {'method': 'dynamic'})].")
    specs = []
    for item in stages:
        stage_name, params = (item, {}) if isinstance(item, str) else item
        stage = registry.get(stage_name)
        params = {key.replace("-", "_"): value for key, value in dict(params).items()}
        stage.resolve(params)  # unknown options and bad values fail here, before anything runs
        specs.append(StageSpec(stage_name, params))
    spec = PipelineSpec(input=Path(input), output=Path(output), stages=specs, force=force)
    return run_isolated(override(spec, convert_settings(settings, "optimize")))


def benchmark(target: PathArg, *, baseline: PathArg | None = None, eval_data: PathArg | None = None,
              batch_sizes: Sequence[int] = (1,), runtimes: Sequence[str] = (), duration_s: float | None = None,
              iterations: int | None = None, threads: int | None = None, fail_if: Sequence[str] = (),
              record: bool = True, raise_on_gate: bool = True) -> BenchmarkRecord:
    """Measure a package or model as `modelpack benchmark` does, and return the numbers.

    `fail_if` takes the command line's gates (`"onnx.p99_ms@1 > 20"`, `"accuracy_drop > 1"`); a failed gate
    raises `GateFailed` unless `raise_on_gate=False`, and `result["gates"]` holds every check either way.
    """
    from .bench import gates
    from .bench.measure import BenchSpec
    from .bench.run import BenchRequest, parse_batch_sizes, run
    from .bench.targets import check_formats

    if duration_s is not None and iterations is not None:
        raise UsageError("duration_s and iterations both set: give one.")
    gates.parse_all(tuple(fail_if))
    spec = BenchSpec(batch_sizes=parse_batch_sizes(",".join(map(str, batch_sizes))), threads=threads,
                     duration_s=duration_s, iterations=iterations)
    request = BenchRequest(Path(target), spec, Path(baseline) if baseline is not None else None,
                           check_formats(tuple(runtimes)), Path(eval_data) if eval_data is not None else None,
                           tuple(fail_if), record)
    result = run(request)
    failed = gates.failures(result["gates"])
    if failed and raise_on_gate:
        raise GateFailed("; ".join(failed))
    return result


@contextmanager
def open(path: PathArg, *, key_file: PathArg | None = None) -> Iterator[Package]:
    """Open a package directory, `.mpk` or encrypted `.mpk` (key from `key_file`, else MODELPACK_KEY).

    The package gives its `manifest`, `name`, `version`, `signature` and `artifacts`; `verify(pubkey=...)`;
    and `predict(inputs)`, which runs the best artifact (an encrypted package in memory only). A `.mpk` is
    extracted to a temporary directory that is removed when the `with` block ends.
    """
    from .package import open_any

    with open_any(Path(path), key_file=Path(key_file) if key_file is not None else None, need="memory") as pkg:
        yield pkg


def create_app(package: PathArg, **options: Any) -> App:
    """An ASGI application serving a package (KServe V2, TF Serving REST and /predict), for embedding.

    `options` are `modelpack serve`'s, in snake_case (`api_key`, `max_batch_size`, `batch_timeout_ms`,
    `max_body_mb`, `rate_limit`, `require_signature`, ...). The model loads when the ASGI lifespan starts
    (uvicorn, hypercorn, Starlette's `Mount` and httpx's ASGITransport inside a lifespan all do that).
    """
    import dataclasses

    from .serve.app import build_app
    from .serve.config import ServeConfig
    from .serve.preflight import preflight

    known = {f.name for f in dataclasses.fields(ServeConfig)} - {"package_dir", "repository"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"create_app: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}.")
    if options.get("require_signature") is not None:
        options["require_signature"] = Path(options["require_signature"])
    with preflight(Path(package), options, str, archives=False) as config:  # a directory: nothing to clean up
        return build_app(config)
