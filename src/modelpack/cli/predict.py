"""`modelpack predict`: run a package locally on a file of inputs."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ..errors import UsageError
from ..package import open_package
from . import render, want_json

RUNTIMES = ("onnx", "tflite", "savedmodel", "keras")


@click.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--input", "input_file", type=click.Path(path_type=Path), required=True,
              help="Inputs: .npy (one input), .npz, or .json (a list, or an object keyed by input name).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write outputs to .npy, .npz or .json.")
@click.option("--runtime", type=click.Choice(RUNTIMES), help="Artifact to run.  [default: the fastest in the package]")
@click.option("--json", "as_json", is_flag=True, help="Print outputs as JSON.")
@click.pass_context
def predict(ctx: click.Context, package: Path, input_file: Path, output: Path | None, runtime: str | None,
            as_json: bool) -> None:
    """Run a package on a file of inputs and print or write the outputs."""
    from ..data import load_tensors
    from ..runtimes import load_runner

    if as_json:
        want_json(ctx)
    if output is not None and output.suffix.lower() not in (".npy", ".npz", ".json"):
        raise UsageError(f"-o '{output}': use a .npy, .npz or .json file name.")
    with open_package(package) as pkg:
        feeds = load_tensors(input_file, pkg.signature)
        entry = pkg.artifact(runtime)
        runner = load_runner(pkg.model_ref(entry), pkg.signature)
        results = runner.run(feeds)
    if output is not None:
        _write(output, results)
    if as_json:
        render.print_json({"status": "ok", "artifact": entry["path"],
                           "outputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name, "data": v.tolist()}
                                       for k, v in results.items()}})
        return
    if output is not None:
        render.out.print(f"wrote {', '.join(results)} to {output}")
        return
    for name, value in results.items():
        render.out.print(f"[bold]{name}[/] {value.dtype.name}{list(value.shape)}")
        render.out.print(np.array2string(value, threshold=200, precision=5, suppress_small=True))
        if value.ndim == 2 and value.shape[1] > 1:
            render.out.print(f"argmax: {value.argmax(axis=1).tolist()}")


def _write(path: Path, results: dict[str, np.ndarray]) -> None:
    from ..atomic import atomic_file

    with atomic_file(path, force=True) as tmp:
        suffix = path.suffix.lower()
        if suffix == ".npy":
            if len(results) != 1:
                raise UsageError(f"-o '{path}': the model has {len(results)} outputs; use .npz or .json.")
            with tmp.open("wb") as fh:
                np.save(fh, next(iter(results.values())))
        elif suffix == ".npz":
            with tmp.open("wb") as fh:
                np.savez(fh, **results)
        else:
            tmp.write_text(json.dumps({k: v.tolist() for k, v in results.items()}))
