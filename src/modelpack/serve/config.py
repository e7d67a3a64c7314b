"""Everything a server needs to start, as one value the CLI builds and every worker process reads."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

ENV = "MODELPACK_SERVE_CONFIG"  # how `--workers N` hands the config to each worker process


@dataclass
class ServeConfig:
    package_dir: Path  # an extracted package directory
    runtime: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_batch_size: int = 32
    batch_timeout_ms: float = 0.0
    max_queue: int = 256
    timeout_s: float = 30.0
    max_body_mb: float = 16.0
    api_key: str | None = None
    api_keys_file: Path | None = None
    threads: int | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    access_log: bool = False
    graceful_timeout_s: float = 30.0
    register: str | None = None  # zk://HOST:PORT/PATH
    register_required: bool = False
    advertise_host: str | None = None

    def load_model(self) -> Any:
        from ..package import Package
        from .model import ServedModel

        pkg = Package.load(self.package_dir)
        return ServedModel.load(pkg, self.runtime, self.max_batch_size, self.threads)

    def to_env(self) -> str:
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()})

    @classmethod
    def from_env(cls) -> "ServeConfig":
        data = json.loads(os.environ[ENV])
        paths = {f.name for f in fields(cls) if "Path" in str(f.type)}
        return cls(**{k: (Path(v) if k in paths and v is not None else v) for k, v in data.items()})


def app_from_env() -> Any:
    """The factory each worker process calls (uvicorn --factory)."""
    from .app import build_app

    return build_app(ServeConfig.from_env())
