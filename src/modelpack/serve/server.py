"""Running the app under uvicorn: one process or --workers N, TLS, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import ENV, ServeConfig
from .logs import log_config

if TYPE_CHECKING:
    from .app import App


def uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "host": config.host, "port": config.port, "lifespan": "on", "access_log": config.access_log,
        "log_config": log_config(config.log_json, config.quiet), "log_level": "warning" if config.quiet else "info",
        "timeout_graceful_shutdown": config.graceful_timeout_s,
        "server_header": False, "limit_concurrency": config.max_connections,
        "ws": "none",  # no WebSocket: an upgrade request is answered as plain HTTP (see http1)
    }
    from .http1 import configure

    # Header, body and write deadlines and a head limit for hostile clients (uvicorn has only keep-alive).
    options["http"] = configure(config.header_timeout_s, config.body_timeout_s, config.write_timeout_s,
                                config.max_header_kb)
    if config.ssl_certfile:
        options["ssl_certfile"] = str(config.ssl_certfile)
    if config.ssl_keyfile:
        options["ssl_keyfile"] = str(config.ssl_keyfile)
    return options


def return_freed_memory() -> None:
    """Make glibc give large freed buffers back to the system, so RSS falls back after a burst of big requests.

    glibc serves an allocation over its mmap threshold (128 KB) with its own mapping, unmapped when freed; but
    each such free raises the threshold to the freed size (up to 32 MB), after which a 15 MB body comes from the
    heap, and the heap keeps it. A 15 MB message once then left RSS about 10% higher for good. Setting the
    threshold explicitly turns that adjustment off. Elsewhere (musl, macOS) this does nothing.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold = -3
    mallopt(m_mmap_threshold, 128 * 1024)


def app_from_env() -> App:
    """The factory each worker process calls (uvicorn --factory), from the config `run` put in the environment."""
    from .app import build_app
    from .http1 import configure

    return_freed_memory()
    config = ServeConfig.from_env()
    configure(config.header_timeout_s, config.body_timeout_s, config.write_timeout_s, config.max_header_kb)
    return build_app(config)


def run(config: ServeConfig) -> int:
    """Serve until SIGTERM or Ctrl-C; in-flight requests finish first. Returns an exit code.

    With `register`, the ZooKeeper session is opened before serving (so --register-required
    fails fast), the entry is created once the server answers ready, and removed at the end.
    """
    import uvicorn

    return_freed_memory()
    options = uvicorn_options(config)
    logging.config.dictConfig(options["log_config"])  # now, for what is logged before uvicorn starts
    if config.host in ("0.0.0.0", "::") and not (config.api_key or config.api_keys_file):
        logging.getLogger("modelpack.serve").warning(
            "binding %s without an API key: anyone who can reach this port can use the model. Set "
            "MODELPACK_API_KEY or --api-keys-file.", config.host)
    registration = _registration(config)
    try:
        if config.workers > 1:
            # Each worker process builds its own app (and loads the model once) from the environment.
            os.environ[ENV] = config.to_env()
            if registration is not None:
                _register_when(registration, config, lambda: _answers_ready(config) and config.port)
            uvicorn.run("modelpack.serve.server:app_from_env", factory=True, workers=config.workers, **options)
            return 0
        from .app import build_app

        app = build_app(config)
        server = _draining_server(uvicorn.Config(app, **options), app)
        if registration is not None:
            _register_when(registration, config, lambda: server.started and _bound_port(server),
                           app if config.repository is not None else None)
        server.run()
        return 0 if server.started else 1
    finally:
        if registration is not None:
            registration.close()


def _draining_server(config: Any, app: Any) -> Any:
    """A uvicorn server that tells the app about SIGTERM (the class is made here: uvicorn is imported lazily)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """On SIGTERM or Ctrl-C, tell the app before uvicorn starts waiting for connections to finish."""

        def __init__(self, config: Any, app: Any) -> None:
            super().__init__(config)
            self._app = app

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            try:  # a signal handler may interrupt the loop anywhere: hand the work to the loop itself
                asyncio.get_running_loop().call_soon_threadsafe(self._app.core.begin_drain)
            except RuntimeError:  # no loop running yet (still starting): nothing is queued
                pass

    return DrainingServer(config, app)


def _registration(config: ServeConfig) -> Any:
    if not config.register:
        return None
    from ..discovery import Registration, parse_zk

    registration = Registration(parse_zk(config.register), config.register_required,
                                note=logging.getLogger("modelpack").warning)
    registration.connect()
    return registration


def _register_when(registration: Any, config: ServeConfig, ready: Callable[[], Any], app: Any = None) -> None:
    """Register from a helper thread as soon as `ready()` returns the bound port.

    A repository (`app` given) registers one entry per model and version, and the thread then keeps ZooKeeper
    in step with what the repository serves: the repository hands each change to it (latest first)."""
    from ..discovery import advertised_host, instance_record

    host = config.advertise_host or advertised_host(config.host)
    scheme = "https" if config.ssl_certfile else "http"

    def wait_then_register() -> None:
        while True:
            port = ready()
            if port:
                break
            time.sleep(0.05)
        if app is None:
            pkg = config.package()
            registration.register(instance_record(
                host=host, port=int(port), model=pkg.name, version=pkg.version, signature=pkg.manifest["signature"],
                scheme=scheme, grpc_port=config.grpc_port))
            return
        changes: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        repository = app.core.repository
        repository.loop.call_soon_threadsafe(repository.watch, changes.put)
        while True:
            served = changes.get()
            while not changes.empty():  # only the latest state matters
                served = changes.get()
            records = []
            for version in served:
                record = instance_record(host=host, port=int(port), model=version.name, version=version.version,
                                         signature=version.signature, scheme=scheme, grpc_port=config.grpc_port)
                record.update(default=version.default, labels=list(version.labels))
                records.append(record)
            registration.sync(records)

    threading.Thread(target=wait_then_register, name="modelpack-register", daemon=True).start()


def _bound_port(server: Any) -> int | None:
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    return None


def _answers_ready(config: ServeConfig) -> bool:
    import http.client
    import ssl

    host = "127.0.0.1" if config.host in ("0.0.0.0", "", "::") else config.host
    try:
        if config.ssl_certfile:
            conn: Any = http.client.HTTPSConnection(host, config.port, timeout=2,
                                                    context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection(host, config.port, timeout=2)
        conn.request("GET", "/v2/health/ready")
        ok = bool(conn.getresponse().status == 200)
        conn.close()
        return ok
    except OSError:
        return False
