"""`modelpack predict`: run a package locally on a file of inputs."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ..errors import UsageError
from ..package import open_any
from . import render, want_json

RUNTIMES = ("onnx", "tflite", "savedmodel", "keras")


@click.command()
@click.argument("package", type=click.Path(path_type=Path), required=False)
@click.option("--input", "input_file", type=click.Path(path_type=Path), required=True,
              help="Inputs: .npy (one input), .npz, or .json (a list, or an object keyed by input name).")
@click.option("--discover", "registry", metavar="zk://HOST:PORT/PATH",
              help="Instead of a package: call a live server of --model found in ZooKeeper, over the V2 protocol, "
                   "trying the next instance when one fails.")
@click.option("--model", help="With --discover: the model to call.")
@click.option("--pick", type=click.Choice(["round-robin", "random"]), default="random", show_default=True,
              help="With --discover: the order in which instances are tried.")
@click.option("--api-key", envvar="MODELPACK_API_KEY", show_envvar=True, help="With --discover: the servers' key.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write outputs to .npy, .npz or .json.")
@click.option("--runtime", type=click.Choice(RUNTIMES), help="Artifact to run.  [default: the fastest in the package]")
@click.option("--json", "as_json", is_flag=True, help="Print outputs as JSON.")
@click.pass_context
def predict(ctx: click.Context, package: Path | None, input_file: Path, registry: str | None, model: str | None,
            pick: str, api_key: str | None, output: Path | None, runtime: str | None, as_json: bool) -> None:
    """Run a package (or a live server found in ZooKeeper) on a file of inputs; print or write the outputs."""
    from ..data import load_tensors
    from ..runtimes import OnnxRunner

    if as_json:
        want_json(ctx)
    if output is not None and output.suffix.lower() not in (".npy", ".npz", ".json"):
        raise UsageError(f"-o '{output}': use a .npy, .npz or .json file name.")
    if (package is None) == (registry is None):
        raise UsageError("give a PACKAGE, or --discover zk://HOST:PORT/PATH --model NAME (not both).")
    if registry is not None:
        if not model:
            raise UsageError("--discover needs --model NAME: the model to call.")
        results, source = _remote(registry, model, input_file, pick, api_key)
    else:
        assert package is not None  # checked above: a PACKAGE or --discover, exactly one
        with open_any(package) as pkg:
            feeds = load_tensors(input_file, pkg.signature)
            entry = pkg.artifact(runtime)
            runner = pkg.runner(entry=entry)
            results = runner.run(feeds)
        source = {"artifact": entry["path"]}
        if isinstance(runner, OnnxRunner) and runner.settings:  # applied from the manifest: say so
            source["session"] = runner.applied()
    if output is not None:
        _write(output, results)
    if as_json:
        render.print_json({"status": "ok", **source,
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


def _remote(registry: str, model: str, input_file: Path, pick: str,
            api_key: str | None) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    from ..data import load_tensors
    from ..discovery import Balancer, discover, fetch_signature, parse_zk
    from ..discovery import predict as call
    from ..errors import RegistryError
    from ..signature import Signature

    address = parse_zk(registry)
    instances = discover(address, model)
    if not instances:
        raise RegistryError(f"no live instance of model '{model}' under {registry}.")
    # The input file is read as any V2 client would: against the served signature, fetched once.
    signature = fetch_signature(instances, api_key)
    if signature is None:
        raise UsageError(f"--input '{input_file}': no instance of '{model}' answered a metadata request, so its "
                         "input names are unknown; are the servers up, and is --api-key right?")
    feeds = load_tensors(input_file, Signature.from_dict(signature))
    results, tried = call(address, model, feeds, api_key=api_key, balancer=Balancer(pick))
    render.err.print(f"[dim]served by {tried[-1]}" + (f" after {len(tried) - 1} failed" if len(tried) > 1 else "")
                     + "[/]")
    return results, {"instance": tried[-1], "tried": tried}


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
                np.savez(fh, **results)  # type: ignore[arg-type]  # numpy's stub types the first keyword only
        else:
            tmp.write_text(json.dumps({k: v.tolist() for k, v in results.items()}))
