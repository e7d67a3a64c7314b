"""Running the app under uvicorn: one process or --workers N, TLS, graceful drain on SIGTERM."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from .config import ENV, ServeConfig


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    logger = logging.getLogger("modelpack")
    if not logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "host": config.host, "port": config.port, "lifespan": "on", "access_log": config.access_log,
        "log_level": "info", "timeout_graceful_shutdown": config.graceful_timeout_s,
        "server_header": False,
    }
    if config.ssl_certfile:
        options["ssl_certfile"] = str(config.ssl_certfile)
    if config.ssl_keyfile:
        options["ssl_keyfile"] = str(config.ssl_keyfile)
    return options


def run(config: ServeConfig) -> int:
    """Serve until SIGTERM or Ctrl-C; in-flight requests finish first. Returns an exit code."""
    import uvicorn

    configure_logging()
    options = uvicorn_options(config)
    if config.workers > 1:
        # Each worker process builds its own app (and loads the model once) from the environment.
        os.environ[ENV] = config.to_env()
        uvicorn.run("modelpack.serve.config:app_from_env", factory=True, workers=config.workers, **options)
        return 0
    from .app import build_app

    server = uvicorn.Server(uvicorn.Config(build_app(config), **options))
    server.run()
    return 0 if server.started else 1
