"""`modelpack serve`: serve a package over HTTP (KServe V2, TF Serving REST, /predict)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from ..errors import IntegrityError, UsageError
from ..package import open_any
from . import render


@click.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="HTTP port to bind.")
@click.option("--grpc-port", type=click.IntRange(1, 65535),
              help="Also serve KServe V2 gRPC (inference.GRPCInferenceService) on this port, with the same model, "
                   "batcher, keys (metadata 'authorization'), limits, TLS and metrics.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes on the port; each loads the model once.")
@click.option("--runtime", type=click.Choice(["onnx", "tflite", "savedmodel"]),
              help="Artifact to serve.  [default: the fastest in the package]")
@click.option("--max-batch-size", type=click.IntRange(1, 65536), default=32, show_default=True,
              help="Most rows per model call; larger requests get 400.")
@click.option("--batch-timeout-ms", type=click.FloatRange(0, 10000), default=0.0, show_default=True,
              help="How long a batch waits for more requests. 0: batch only what is already queued.")
@click.option("--max-queue", type=click.IntRange(1, 1_000_000), default=256, show_default=True,
              help="Requests that may wait; beyond it, 503 with Retry-After.")
@click.option("--timeout-s", type=click.FloatRange(0.001), default=30.0, show_default=True,
              help="Per-request limit; past it, 504.")
@click.option("--max-body-mb", type=click.FloatRange(0.001), default=16.0, show_default=True,
              help="Largest request body; past it, 413.")
@click.option("--max-inflight-mb", type=click.FloatRange(0.001), default=256.0, show_default=True,
              help="Request bytes held at once across all connections; past it, 503 with Retry-After.")
@click.option("--max-connections", type=click.IntRange(1), default=1000, show_default=True,
              help="Open connections (and HTTP requests) at once, on each port; past it, 503 (gRPC: GOAWAY).")
@click.option("--max-streams", type=click.IntRange(1, 10000), default=100, show_default=True,
              help="gRPC calls open at once on one connection; past it, the stream is refused (REFUSED_STREAM).")
@click.option("--header-timeout-s", type=click.FloatRange(0.001), default=10.0, show_default=True,
              help="Time a client has to send a request's headers (also how long a connection may idle).")
@click.option("--body-timeout-s", type=click.FloatRange(0.001), default=30.0, show_default=True,
              help="Time a client has to send a request's body after its headers; past it, 408 and close "
                   "(gRPC: DEADLINE_EXCEEDED).")
@click.option("--write-timeout-s", type=click.FloatRange(0.001), default=30.0, show_default=True,
              help="Time a client has to read an answer; past it, the connection is closed.")
@click.option("--max-header-kb", type=click.FloatRange(1, 1024), default=64.0, show_default=True,
              help="Largest request line and headers (gRPC: header block); past it, 431 and close.")
@click.option("--graceful-timeout-s", type=click.FloatRange(0), default=30.0, show_default=True,
              help="On SIGTERM, how long requests in flight may take to finish (queued batches run at once).")
@click.option("--api-key", envvar="MODELPACK_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on every route but health. Prefer the environment "
                   "variable: a command line is visible to other users.")
@click.option("--api-keys-file", type=click.Path(dir_okay=False, path_type=Path),
              help="A file of keys, one 'name:key' per line.")
@click.option("--threads", type=click.IntRange(1, 256), help="Intra-op threads of the runtime.")
@click.option("--ssl-certfile", type=click.Path(dir_okay=False, path_type=Path), help="Serve HTTPS with this cert.")
@click.option("--ssl-keyfile", type=click.Path(dir_okay=False, path_type=Path), help="The certificate's key.")
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option("--json", "log_json", is_flag=True,
              help="Log JSON lines on stderr (time, level, logger, message; access lines add method, path and "
                   "status), for log collectors. -q logs warnings and errors only.")
@click.option("--register", metavar="zk://HOST:PORT/PATH",
              help="Register in ZooKeeper once ready (an ephemeral entry, removed on stop or crash).")
@click.option("--register-required", is_flag=True,
              help="Exit if ZooKeeper is unreachable at startup.  [default: serve anyway and keep retrying]")
@click.option("--advertise-host", help="Host name other machines use to reach this server, in the registry.  "
              "[default: --host, or this machine's address when bound to all]")
@click.option("--require-signature", type=click.Path(dir_okay=False, path_type=Path), metavar="PUBLIC.pem",
              help="Refuse a package that is not signed by this Ed25519 public key, or was changed since.")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Key of an encrypted .mpk (else MODELPACK_KEY). It is decrypted into memory only.")
@click.option("--rate-limit", metavar="N/s|N/m",
              help="Per-key token bucket for keys that set none in the keys file; past it, 429 with Retry-After.")
@click.option("--poll-s", type=click.FloatRange(0.05), metavar="SECONDS",
              help="With a repository: re-scan it this often; a new version is verified, loaded and warmed up "
                   "before it gets traffic, and the one it replaces drains, then unloads.")
@click.option("--oci-cache", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="With a repository: where oci:// sources keep the versions they pull.  "
                   "[default: ~/.cache/modelpack/oci]")
@click.option("--otlp-endpoint", metavar="URL",
              help="Trace each inference request (spans decode, queue wait, batch, run, encode; an incoming "
                   "traceparent is the parent) to this OTLP/HTTP receiver, e.g. http://localhost:4318. Needs the "
                   "'otel' extra.  [default: $OTEL_EXPORTER_OTLP_ENDPOINT, else off]")
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
    from ..serve.config import ServeConfig
    from ..serve.sources import is_repository

    if bool(options["ssl_certfile"]) != bool(options["ssl_keyfile"]):
        raise UsageError("--ssl-certfile and --ssl-keyfile go together.")
    if options["register"]:
        from ..discovery import parse_zk

        parse_zk(options["register"])
        if options["port"] == 0 and options["workers"] > 1:
            raise UsageError("--register with --workers needs a fixed --port.")
    elif options["register_required"]:
        raise UsageError("--register-required goes with --register zk://HOST:PORT/PATH.")
    if options["otlp_endpoint"]:
        from ..serve.tracing import endpoint_from

        endpoint_from(options["otlp_endpoint"])  # a malformed URL is a usage error now, not a failed start
    require_signature = options.pop("require_signature")
    if is_repository(package):
        _serve(_repository_config(package, require_signature, options), get_path)
        return
    if options["poll_s"] is not None:
        raise UsageError("--poll-s goes with a model repository (a NAME/VERSION/ directory or a .toml file), "
                         f"and '{package}' is one package.")
    with open_any(package, key_file=options["key_file"], need="memory") as pkg:
        try:  # the same checks as `modelpack verify`, without loading: the server loads the one it serves
            pkg.verify(pubkey=require_signature, load=False, option="--require-signature")
        except IntegrityError as exc:
            raise IntegrityError(f"refusing to serve: {exc}") from exc
        pkg.artifact(options["runtime"])  # a missing runtime is a usage error now, not a failed worker later
        where = package if pkg.encrypted else pkg.root  # an encrypted .mpk is decrypted by each worker, in memory
        _serve(ServeConfig(package_dir=where, encrypted=pkg.encrypted, quiet=render.out.quiet,
                           require_signature=require_signature, **options), get_path)


def _repository_config(path: Path, require_signature: Path | None, options: dict[str, Any]) -> Any:
    """Read and check the whole repository before serving: every version the policies serve is verified."""
    from ..serve.config import ServeConfig
    from ..serve.sources import read_repository

    if options["register"] and options["workers"] > 1:
        raise UsageError("--register with a model repository needs --workers 1 (each worker process would "
                         "register its own versions).")
    spec = read_repository(path, options["oci_cache"])
    for source in spec.models.values():
        for version, location in source.wanted().items():
            with open_any(location, key_file=source.key_file or options["key_file"], need="memory") as pkg:
                try:
                    pkg.verify(pubkey=require_signature, load=False, option="--require-signature")
                except IntegrityError as exc:
                    raise IntegrityError(f"refusing to serve model {source.name} version {version}: {exc}") from exc
                pkg.artifact(options["runtime"])
    return ServeConfig(package_dir=path, repository=path, require_signature=require_signature,
                       quiet=render.out.quiet, **options)


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
