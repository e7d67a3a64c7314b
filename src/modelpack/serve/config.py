"""Everything a server needs to start, as one value the CLI builds and every worker process reads.

Plain data: nothing here builds the app (`server.app_from_env` does, in each worker).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..package import Package, open_any

if TYPE_CHECKING:
    from .model import ServedModel

ENV = "MODELPACK_SERVE_CONFIG"  # how `--workers N` hands the config to each worker process


@dataclass(frozen=True)
class Cli:
    """How a field is a `modelpack serve` option: its help, and what click needs beyond the field's type and
    default (`cli/serve.py` builds the options from these; nothing else lists them)."""

    help: str
    flag: str | None = None  # default: --field-name
    low: float | None = None  # an int or float field's range
    high: float | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    envvar: str | None = None  # also read from this environment variable (and shown in --help)
    directory: bool = False  # a Path field that names a directory (else a file)


def option(default: Any, help: str, **cli: Any) -> Any:
    """A config field that is also a `modelpack serve` option (see `Cli`)."""
    return field(default=default, metadata={"cli": Cli(help, **cli)})


@dataclass
class ServeConfig:
    """The server's configuration. Fields made with `option(...)` are `modelpack serve`'s options, in this order;
    adding one here adds it to the command line, `create_app` and every worker process."""

    package_dir: Path  # an extracted package directory, or an encrypted .mpk
    host: str = option("127.0.0.1", "Address to bind.")
    port: int = option(8000, "HTTP port to bind.", low=0, high=65535)
    grpc_port: int | None = option(
        None, "Also serve KServe V2 gRPC (inference.GRPCInferenceService) on this port, with the same model, "
        "batcher, keys (metadata 'authorization'), limits, TLS and metrics.", low=1, high=65535)
    workers: int = option(1, "Server processes on the port; each loads the model once.", low=1, high=64)
    runtime: str | None = option(None, "Artifact to serve.  [default: the fastest in the package]",
                                 choices=("onnx", "tflite", "savedmodel"))
    max_batch_size: int = option(32, "Most rows per model call; larger requests get 400.", low=1, high=65536)
    batch_timeout_ms: float = option(0.0, "How long a batch waits for more requests. 0: batch only what is already "
                                     "queued.", low=0, high=10000)
    max_queue: int = option(256, "Requests that may wait; beyond it, 503 with Retry-After.", low=1, high=1_000_000)
    timeout_s: float = option(30.0, "Per-request limit; past it, 504.", low=0.001)
    max_body_mb: float = option(16.0, "Largest request body; past it, 413.", low=0.001)
    max_inflight_mb: float = option(256.0, "Request bytes held at once across all connections; past it, 503 with "
                                    "Retry-After.", low=0.001)
    max_connections: int = option(1000, "Open connections (and HTTP requests) at once, on each port; past it, 503 "
                                  "(gRPC: GOAWAY).", low=1)
    max_streams: int = option(100, "gRPC calls open at once on one connection; past it, the stream is refused "
                              "(REFUSED_STREAM).", low=1, high=10000)
    header_timeout_s: float = option(10.0, "Time a client has to send a request's headers (also how long a "
                                     "connection may idle).", low=0.001)
    body_timeout_s: float = option(30.0, "Time a client has to send a request's body after its headers; past it, "
                                   "408 and close (gRPC: DEADLINE_EXCEEDED).", low=0.001)
    write_timeout_s: float = option(30.0, "Time a client has to read an answer; past it, the connection is "
                                    "closed.", low=0.001)
    max_header_kb: float = option(64.0, "Largest request line and headers (gRPC: header block); past it, 431 and "
                                  "close.", low=1, high=1024)
    graceful_timeout_s: float = option(30.0, "On SIGTERM, how long requests in flight may take to finish (queued "
                                       "batches run at once).", low=0)
    api_key: str | None = option(None, "Require 'Authorization: Bearer KEY' on every route but health. Prefer the "
                                 "environment variable: a command line is visible to other users.",
                                 envvar="MODELPACK_API_KEY")
    api_keys_file: Path | None = option(None, "A file of keys, one 'name:key' per line.")
    threads: int | None = option(None, "Intra-op threads of the runtime.", low=1, high=256)
    ssl_certfile: Path | None = option(None, "Serve HTTPS with this cert.")
    ssl_keyfile: Path | None = option(None, "The certificate's key.")
    access_log: bool = option(False, "Log every request.")
    log_json: bool = option(False, "Log JSON lines on stderr (time, level, logger, message; access lines add "
                            "method, path and status), for log collectors. -q logs warnings and errors only.",
                            flag="--json")
    register: str | None = option(None, "Register in ZooKeeper once ready (an ephemeral entry, removed on stop or "
                                  "crash).", metavar="zk://HOST:PORT/PATH")
    register_required: bool = option(False, "Exit if ZooKeeper is unreachable at startup.  [default: serve anyway "
                                     "and keep retrying]")
    advertise_host: str | None = option(None, "Host name other machines use to reach this server, in the "
                                        "registry.  [default: --host, or this machine's address when bound to all]")
    require_signature: Path | None = option(None, "Refuse a package that is not signed by this Ed25519 public "
                                            "key, or was changed since.", metavar="PUBLIC.pem")
    key_file: Path | None = option(None, "Key of an encrypted .mpk (else MODELPACK_KEY). It is decrypted into "
                                   "memory only.")
    rate_limit: str | None = option(None, "Per-key token bucket for keys that set none in the keys file; past it, "
                                    "429 with Retry-After.", metavar="N/s|N/m")
    model_rate_limit: tuple[str, ...] = option(
        (), "A token bucket per model for its inferences, whoever calls (repeatable; *=N/s for every model without "
        "its own); past it, 429 with Retry-After (gRPC: RESOURCE_EXHAUSTED).", metavar="MODEL=N/s|N/m")
    poll_s: float | None = option(None, "With a repository: re-scan it this often; a new version is verified, "
                                  "loaded and warmed up before it gets traffic, and the one it replaces drains, "
                                  "then unloads.", low=0.05, metavar="SECONDS")
    quiet: bool = False  # log warnings and errors only (the command line's -q)
    repository: Path | None = None  # a model repository (directory or TOML file) instead of one package
    oci_cache: Path | None = option(None, "With a repository: where oci:// sources keep the versions they pull.  "
                                    "[default: ~/.cache/modelpack/oci]", metavar="DIR", directory=True)
    otlp_endpoint: str | None = option(
        None, "Trace each inference request (spans decode, queue wait, batch, run, encode; an incoming traceparent "
        "is the parent) to this OTLP/HTTP receiver, e.g. http://localhost:4318. Needs the 'otel' extra.  "
        "[default: $OTEL_EXPORTER_OTLP_ENDPOINT, else off]", metavar="URL")
    memory_budget_mb: float | None = option(
        None, "With a repository: load each model on its first request and unload the least recently used idle one "
        "when a load would go over this; a model that cannot fit gets 503. Split evenly between --workers.  "
        "[default: the repository file's memory_budget_mb, else load everything]", low=1, metavar="MB")

    def package(self) -> Package:
        """The package's manifest as a Package; for an encrypted archive, without decrypting anything."""
        with open_any(self.package_dir, need="manifest") as pkg:
            return pkg

    def load_model(self) -> ServedModel:
        from .model import ServedModel

        with open_any(self.package_dir, key_file=self.key_file, need="memory") as pkg:
            return ServedModel.load(pkg, pkg.artifact(self.runtime)["format"], self.max_batch_size, self.threads)

    def to_env(self) -> str:
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()})

    @classmethod
    def from_env(cls) -> ServeConfig:
        data = json.loads(os.environ[ENV])
        paths = {f.name for f in fields(cls) if "Path" in str(f.type)}
        values: dict[str, Any] = {k: (Path(v) if k in paths and v is not None else tuple(v) if isinstance(v, list)
                                      else v) for k, v in data.items()}
        return cls(**values)

