"""`modelpack keygen` and `sign`: keys for signed and encrypted packages."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import UsageError
from . import render, want_json


@click.command()
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the keys.")
@click.option("--symmetric", is_flag=True, help="Also write model.key: a random AES-256 key for pack --encrypt.")
@click.option("--force", is_flag=True, help="Replace existing keys.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def keygen(ctx: click.Context, output: Path, symmetric: bool, force: bool, as_json: bool) -> None:
    """Write an Ed25519 key pair (private.pem, public.pem) for signing packages."""
    from ..package.encryption import new_key
    from ..package.signing import keygen as make_pair

    if as_json:
        want_json(ctx)
    private, public = make_pair(output, force)
    written = {"private": str(private), "public": str(public)}
    if not as_json:
        render.out.print(f"[bold green]keys:[/] {private} (keep it secret, mode 0600), {public} (share it)")
    if symmetric:
        key_path = output / "model.key"
        if key_path.exists() and not force:
            raise UsageError(f"'{key_path}' exists; pass --force to replace it.")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_key() + "\n")
        written["symmetric"] = str(key_path)
        if not as_json:
            render.out.print(f"[bold green]encryption key:[/] {key_path} (mode 0600; pass it with --key-file, "
                             f"or its contents in MODELPACK_KEY)")
    if as_json:
        render.print_json({"status": "ok", **written})


@click.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The Ed25519 private key (from modelpack keygen).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def sign(ctx: click.Context, package: Path, key_path: Path, as_json: bool) -> None:
    """Sign a package directory: a detached Ed25519 signature over its manifest (modelpack.sig)."""
    from ..package import is_package
    from ..package.signing import SIGNATURE_NAME
    from ..package.signing import sign as write_signature

    if as_json:
        want_json(ctx)
    if not package.is_dir():
        kind = "an archive" if is_package(package) else "not a package directory"
        raise UsageError(f"'{package}' is {kind}: sign the package directory, then pack it.")
    if not is_package(package):
        raise UsageError(f"'{package}' is not a modelpack package (no modelpack.json).")
    record = write_signature(package, key_path)
    if as_json:
        render.print_json({"status": "ok", "signature": str(package / SIGNATURE_NAME), "key": record["key"]})
        return
    render.out.print(f"[bold green]signed:[/] {package / SIGNATURE_NAME} (key {record['key']})")
