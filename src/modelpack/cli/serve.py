"""`modelpack serve`: serve a package over HTTP (KServe V2, TF Serving REST, /predict)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import IntegrityError, UsageError
from . import render


def _click_type(kind: str, spec: Any) -> Any:
    if spec.choices:
        return click.Choice(list(spec.choices))
    if kind in ("int", "float") and (spec.low is not None or spec.high is not None):
        return (click.IntRange if kind == "int" else click.FloatRange)(spec.low, spec.high)
    if kind == "Path":
        return click.Path(file_okay=not spec.directory, dir_okay=spec.directory, path_type=Path)
    return {"int": int, "float": float}.get(kind, str)


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`serve`'s options, one per `ServeConfig` field made with `option(...)`, in the fields' order: the type and
    default come from the field, the rest from its `Cli` metadata. Nothing else lists them."""
    import dataclasses

    from ..serve.config import ServeConfig

    for item in reversed(dataclasses.fields(ServeConfig)):
        spec = item.metadata.get("cli")
        if spec is None:
            continue
        annotation = str(item.type)
        kind = next((k for k in ("bool", "tuple", "int", "float", "Path") if k in annotation), "str")
        flag = spec.flag or "--" + item.name.replace("_", "-")
        settings: dict[str, Any] = {"help": spec.help}
        if kind == "bool":
            settings["is_flag"] = True
        elif kind == "tuple":
            settings["multiple"] = True
        else:
            settings["type"] = _click_type(kind, spec)
            if item.default is not None:
                settings.update(default=item.default, show_default=True)
        if spec.metavar:
            settings["metavar"] = spec.metavar
        if spec.envvar:
            settings.update(envvar=spec.envvar, show_envvar=True)
        command = click.option(flag, item.name, **settings)(command)
    return command


@click.command()
@click.argument("package", type=click.Path(path_type=Path))
@config_options
@click.option("--get", "get_path", metavar="PATH",
              help="Make one GET request in-process, print the response and exit (a smoke test).")
def serve(package: Path, get_path: str | None, **options: Any) -> None:
    """Serve a package, or a model repository, over HTTP: KServe V2, TF Serving REST and /predict on one port
    (and V2 gRPC with --grpc-port).

    \b
    modelpack serve build/pkg --port 8000 --grpc-port 8001
    modelpack serve models/ --poll-s 5         # NAME/VERSION/ directories or .mpk files
    modelpack serve repository.toml            # [models.NAME] versions, policy, labels
    """
    from ..serve.preflight import preflight

    flags = {param.name: param.opts[0] for param in serve.params if param.name}
    with preflight(package, {**options, "quiet": render.out.quiet}, lambda field: flags.get(field, field)) as config:
        _serve(config, get_path)  # within the block: a .mpk is served from its extraction


def _serve(config: Any, get_path: str | None) -> None:
    if get_path is not None:
        _one_request(config, get_path)
        return
    from ..serve import server

    try:
        code = server.run(config)
    except KeyboardInterrupt:
        code = 0  # uvicorn re-raises SIGTERM/SIGINT after draining: a clean stop, not an error
    if code:
        raise IntegrityError("the server did not start; see the log above.")


def _one_request(config: Any, path: str) -> None:
    from ..serve.app import build_app

    app = build_app(config)

    async def call() -> tuple[int, bytes]:
        await app.startup()
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        key = config.api_key
        headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
        await app({"type": "http", "method": "GET", "path": path, "headers": headers, "query_string": b""},
                  receive, send)
        await app.shutdown()
        return sent[0]["status"], sent[1]["body"]

    status, body = asyncio.run(call())
    click.echo(body.decode(errors="replace"))
    if status >= 400:
        raise UsageError(f"GET {path} answered {status}.")
