"""`modelpack push` and `pull`: packages in OCI registries, as CNCF ModelPack artifacts."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from ..oci.unpack import PullLimits
from . import render, want_json

_LIMITS = PullLimits()

_CREDENTIALS = ("Credentials: MODELPACK_REGISTRY_USERNAME and MODELPACK_REGISTRY_PASSWORD, sent only to the hosts "
                "MODELPACK_REGISTRY_HOST names (HOST[:PORT], comma-separated: the registry, and its token service if "
                "that is elsewhere); else the docker config (docker login). Loopback registries (localhost, "
                "127.0.0.1) are spoken to over plain HTTP.")


@click.command(epilog=f"""\b
Examples:
  modelpack push build/digits oci://registry.example.com/models/digits:1.0
  modelpack push build/digits.mpk oci://localhost:5000/digits      # tag: the package's version

{_CREDENTIALS}""")
@click.argument("package", type=click.Path(path_type=Path))
@click.argument("reference")
@click.option("--plain-http", is_flag=True, help="Speak HTTP, not HTTPS, to the registry.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the pushed digest.")
@click.pass_context
def push(ctx: click.Context, package: Path, reference: str, plain_http: bool, as_json: bool, quiet: bool) -> None:
    """Push a package to an OCI registry as a CNCF ModelPack artifact (REFERENCE: oci://HOST[:PORT]/REPO[:TAG])."""
    from ..oci import push as push_package

    if as_json:
        want_json(ctx)
    result = push_package(package, reference, plain_http=plain_http)
    if as_json:
        render.print_json({"status": "ok", **asdict(result)})
    elif quiet:
        render.out.print(result.digest)
    else:
        render.out.print(f"[bold green]pushed:[/] {result.reference}@{result.digest}  ({result.layers} layers, "
                         f"{render.human_size(result.size)}; {render.human_size(result.uploaded)} sent)")


@click.command(epilog=f"""\b
Examples:
  modelpack pull oci://registry.example.com/models/digits:1.0 -o models/digits
  modelpack pull oci://localhost:5000/digits@sha256:... -o digits --pubkey keys/public.pem

{_CREDENTIALS}""")
@click.argument("reference")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Directory to write.")
@click.option("--pubkey", type=click.Path(dir_okay=False, path_type=Path),
              help="Also check the package's signature with this Ed25519 public key.")
@click.option("--plain-http", is_flag=True, help="Speak HTTP, not HTTPS, to the registry.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=_LIMITS.timeout_s,
              show_default=True, help="Give up when the whole pull takes longer than this.")
@click.option("--max-size-gb", type=click.FloatRange(min=0, min_open=True), default=_LIMITS.max_size / (1 << 30),
              show_default=True, help="Refuse an artifact that writes more than this many GiB.")
@click.option("--max-files", type=click.IntRange(min=1), default=_LIMITS.max_files, show_default=True,
              help="Refuse an artifact that writes more files and folders than this.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@click.pass_context
def pull(ctx: click.Context, reference: str, output: Path, pubkey: Path | None, plain_http: bool, force: bool,
         timeout_s: float, max_size_gb: float, max_files: int, as_json: bool, quiet: bool) -> None:
    """Pull a CNCF ModelPack artifact into a directory, checking every digest and the package inside."""
    from ..oci import PullLimits
    from ..oci import pull as pull_artifact

    if as_json:
        want_json(ctx)
    limits = PullLimits(timeout_s=timeout_s, max_size=int(max_size_gb * (1 << 30)), max_files=max_files)
    result = pull_artifact(reference, output, force=force, pubkey=pubkey, plain_http=plain_http, limits=limits)
    if as_json:
        render.print_json({"status": "ok", **asdict(result), "output": str(result.output)})
        return
    if quiet:
        return
    checked = ("modelpack package: checksums ok" + (f", signature ok (key {result.signature['key']})"
                                                    if result.signature else "")
               if result.package else "not a modelpack package (no modelpack.json): files written as pushed")
    if result.skipped:
        from rich.markup import escape

        checked += f"; {len(result.skipped)} unsigned documents left out: {escape(', '.join(result.skipped)[:200])}"
    render.out.print(f"[bold green]pulled:[/] {result.reference}@{result.digest} -> {output}  "
                     f"({len(result.files)} files; {checked})")
