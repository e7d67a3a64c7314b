"""Commands over packages and models: `inspect`, `verify`, `pack`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..package import is_package, open_any
from ..package.archive import COMPRESSION
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
    data: dict[str, Any] | None = None
    if is_package(target):
        with open_any(target, need="manifest") as pkg:
            data = dict(pkg.manifest)
    if data is not None:
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
    from ..package import model_size

    ref = detect(target)
    native = load_native(ref, safe=not unsafe_load)
    info: dict[str, Any] = {
        "path": str(target), "format": ref.describe(), "size": model_size(ref.path),
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
@click.option("--pubkey", type=click.Path(dir_okay=False, path_type=Path),
              help="Check the package's signature against this Ed25519 public key first.")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Key of an encrypted .mpk (else MODELPACK_KEY); it is decrypted in memory only.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def verify(ctx: click.Context, package: Path, no_load: bool, pubkey: Path | None, key_file: Path | None,
           as_json: bool) -> None:
    """Check a package: its signature (with --pubkey), manifest schema, every checksum, and that each loads."""
    from ..package import verify as check_package

    if as_json:
        want_json(ctx)
    result = check_package(package, pubkey=pubkey, key_file=key_file, load=not no_load)
    report = result["artifacts"]
    if as_json:
        render.print_json({"status": "ok", "package": str(package), **result})
        return
    if result["signature"]:
        render.out.print(f"[bold green]signature:[/] valid, key {result['signature']['key']}")
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
@click.option("--encrypt", is_flag=True,
              help="Encrypt the artifacts with AES-256-GCM; the manifest stays readable. Key: MODELPACK_KEY or "
                   "--key-file.")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="With --encrypt: a file holding the 32-byte key (from modelpack keygen --symmetric).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def pack(ctx: click.Context, package: Path, output: Path, compression: str | None, encrypt: bool,
         key_file: Path | None, force: bool, as_json: bool) -> None:
    """Write a package as one .mpk archive (zip), after checking its checksums; optionally encrypted."""
    from ..atomic import check_output
    from ..errors import UsageError
    from ..package.archive import pack as write_archive

    if as_json:
        want_json(ctx)
    if key_file is not None and not encrypt:
        raise UsageError("--key-file goes with --encrypt.")
    check_output(output, force)
    key = None
    if encrypt:
        from ..package.encryption import load_key

        key = load_key(key_file)
    with open_any(package) as pkg:
        pkg.check_checksums()
        raw = sum(a["size"] for a in pkg.artifacts)
        compression = compression or pkg.manifest.get("archive", {}).get("compression", "deflate")
        if key is not None:
            from ..package.encryption import pack as write_encrypted

            size = write_encrypted(pkg.root, output, key, compression=compression, force=force)
        else:
            size = write_archive(pkg.root, output, compression=compression, force=force)
    result = {"status": "ok", "output": str(output), "raw_size": raw, "archive_size": size,
              "ratio": round(raw / size, 3) if size else None, "compression": compression, "encrypted": encrypt}
    if as_json:
        render.print_json(result)
    else:
        render.out.print(f"[bold green]packed:[/] {output}  {render.human_size(raw)} raw -> "
                         f"{render.human_size(size)} ({compression}{', AES-256-GCM' if encrypt else ''}, "
                         f"{render.smaller(raw, size)})")
