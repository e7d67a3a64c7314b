"""Commands over packages and models: `inspect`, `verify`, `pack`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..archive import COMPRESSION
from ..package import is_package, open_package
from . import render, want_json


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--unsafe-load", is_flag=True, help="Allow Keras Lambda layers (runs code from the model file).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def inspect(ctx: click.Context, target: Path, unsafe_load: bool, as_json: bool) -> None:
    """Show a model's or package's signature, sizes, layers or ops, and lineage."""
    if as_json:
        want_json(ctx)
    if is_package(target):
        with open_package(target) as pkg:
            data = dict(pkg.manifest)
        if as_json:
            render.print_json(data)
            return
        render.out.print(f"[bold]{data['name']}[/] version {data['version']}  "
                         f"[dim](modelpack {data['created_by']['modelpack']}, {data['created_at']})[/]")
        render.out.print(render.signature_table(data["signature"]))
        render.out.print(render.artifacts_table(data["artifacts"]))
        render.out.print(render.lineage_table(data["lineage"]))
        return
    from ..formats import detect
    from ..inspection import load_native, signature_of, summary_of
    from ..package import digest

    ref = detect(target)
    native = load_native(ref, safe=not unsafe_load)
    info: dict[str, Any] = {
        "path": str(target), "format": ref.describe(), "size": digest(ref.path).size,
        "signature": signature_of(ref, native=native).to_dict(), "summary": summary_of(ref, native=native),
    }
    if as_json:
        render.print_json(info)
        return
    render.out.print(f"[bold]{target}[/]: {info['format']}, {render.human_size(info['size'])}")
    render.out.print(render.signature_table(info["signature"]))
    summary = info["summary"]
    counts = summary.get("layers") or summary.get("ops") or {}
    label = "layers" if "layers" in summary else "ops"
    render.out.print(render.table(f"{label.capitalize()} ({sum(counts.values())})", (label[:-1], "count"),
                                  [(k, str(v)) for k, v in counts.items()]))
    extra = {k: v for k, v in summary.items() if k not in ("layers", "ops")}
    if extra:
        render.out.print(", ".join(f"{k}: {v}" for k, v in extra.items()))


@click.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--no-load", is_flag=True, help="Check schema and checksums only; do not load the artifacts.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def verify(ctx: click.Context, package: Path, no_load: bool, as_json: bool) -> None:
    """Check a package: manifest schema, every artifact's checksum, and that each loads."""
    if as_json:
        want_json(ctx)
    with open_package(package) as pkg:
        report = pkg.verify(load=not no_load)
    if as_json:
        render.print_json({"status": "ok", "package": str(package), "artifacts": report})
        return
    render.out.print(render.table(None, ("artifact", "format", "size", "checksum", "loads"), [
        (r["path"], r["format"], render.human_size(r["size"]), r["checksum"], r.get("load", "skipped"))
        for r in report
    ]))
    render.out.print(f"[bold green]verified:[/] {package}")


@click.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The .mpk file to write.")
@click.option("--compression", type=click.Choice(sorted(COMPRESSION)),
              help="How the archive compresses the artifacts.  [default: what `compress --archive` recorded, "
                   "else deflate]")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def pack(ctx: click.Context, package: Path, output: Path, compression: str | None, force: bool,
         as_json: bool) -> None:
    """Write a package as one .mpk archive (zip), after checking its checksums."""
    from ..archive import pack as write_archive
    from ..atomic import check_output

    if as_json:
        want_json(ctx)
    check_output(output, force)
    with open_package(package) as pkg:
        pkg.check_checksums()
        raw = sum(a["size"] for a in pkg.artifacts)
        compression = compression or pkg.manifest.get("archive", {}).get("compression", "deflate")
        size = write_archive(pkg.root, output, compression=compression, force=force)
    result = {"status": "ok", "output": str(output), "raw_size": raw, "archive_size": size,
              "ratio": round(raw / size, 3) if size else None, "compression": compression}
    if as_json:
        render.print_json(result)
    else:
        render.out.print(f"[bold green]packed:[/] {output}  {render.human_size(raw)} raw -> "
                         f"{render.human_size(size)} ({compression}, {result['ratio']}x)")
