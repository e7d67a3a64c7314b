"""Everything a server needs to start, as one value the CLI builds and every worker process reads."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..package import Package, open_any

if TYPE_CHECKING:
    from .app import App
    from .model import ServedModel

ENV = "MODELPACK_SERVE_CONFIG"  # how `--workers N` hands the config to each worker process


@dataclass
class ServeConfig:
    package_dir: Path  # an extracted package directory, or an encrypted .mpk (with `encrypted`)
    runtime: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None  # KServe V2 gRPC beside HTTP, on the same event loop and inference path
    workers: int = 1
    max_batch_size: int = 32
    batch_timeout_ms: float = 0.0
    max_queue: int = 256
    timeout_s: float = 30.0
    max_body_mb: float = 16.0
    max_inflight_mb: float = 256.0  # request bytes held at once, all connections together; beyond it, 503
    max_connections: int = 1000  # beyond it, uvicorn answers 503
    header_timeout_s: float = 10.0  # connect (or previous response) -> end of headers
    body_timeout_s: float = 30.0  # end of headers -> end of body
    write_timeout_s: float = 30.0  # an answer the client does not drain for this long closes the connection
    max_header_kb: float = 64.0  # an HTTP request head, or a gRPC call's header block, larger than this is refused
    max_streams: int = 100  # gRPC calls open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS)
    api_key: str | None = None
    api_keys_file: Path | None = None
    threads: int | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    access_log: bool = False
    log_json: bool = False  # the log as JSON lines
    quiet: bool = False  # log warnings and errors only
    graceful_timeout_s: float = 30.0
    register: str | None = None  # zk://HOST:PORT/PATH
    register_required: bool = False
    advertise_host: str | None = None
    encrypted: bool = False  # package_dir is an encrypted .mpk, decrypted into memory only
    key_file: Path | None = None  # its key (else MODELPACK_KEY)
    rate_limit: str | None = None  # e.g. "50/s": the token bucket of keys that set none
    repository: Path | None = None  # a model repository (directory or TOML file) instead of one package
    poll_s: float | None = None  # re-scan the repository this often for new versions
    require_signature: Path | None = None  # the public key new versions must be signed with (polling)
    oci_cache: Path | None = None  # where oci:// repository sources keep their pulls (else ~/.cache/modelpack/oci)
    otlp_endpoint: str | None = None  # OTLP/HTTP receiver for request traces (else OTEL_EXPORTER_OTLP_ENDPOINT)

    def package(self) -> Package:
        """The package's manifest as a Package; for an encrypted archive, without decrypting anything."""
        with open_any(self.package_dir, need="manifest") as pkg:
            return pkg

    def load_model(self) -> ServedModel:
        from .model import ServedModel

        with open_any(self.package_dir, key_file=self.key_file, need="memory") as pkg:
            entry = pkg.artifact(self.runtime)
            data = pkg.read(entry) if pkg.encrypted else None
            return ServedModel.load(pkg, entry["format"], self.max_batch_size, self.threads, model_bytes=data)

    def to_env(self) -> str:
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()})

    @classmethod
    def from_env(cls) -> ServeConfig:
        data = json.loads(os.environ[ENV])
        paths = {f.name for f in fields(cls) if "Path" in str(f.type)}
        values: dict[str, Any] = {k: (Path(v) if k in paths and v is not None else v) for k, v in data.items()}
        return cls(**values)


def app_from_env() -> App:
    """The factory each worker process calls (uvicorn --factory)."""
    from .app import build_app
    from .http1 import configure
    from .server import return_freed_memory

    return_freed_memory()
    config = ServeConfig.from_env()
    configure(config.header_timeout_s, config.body_timeout_s, config.write_timeout_s, config.max_header_kb)
    return build_app(config)
