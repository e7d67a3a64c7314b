"""The inference server as one ASGI application: KServe V2, TF Serving REST and /predict on one port.

`build_app(config)` makes it. `App.__call__` is the one place that routes (through `routes.resolve`),
checks API keys, reads the body within the limits, maps errors to HTTP answers and records metrics;
the protocol modules (`serve.protocols`) only decode, call the inference core and encode. A client's
mistake is a 4xx with `{"error": "..."}`; nothing a client sends produces a 500.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..errors import InputError, RequestError
from .asgi import (
    BodyReader,
    Disconnected,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    capped,
    error_response,
    json_response,
    lifespan,
    send_response,
)
from .config import ServeConfig
from .core import Core
from .guard import Caller
from .lifecycle import LIFE, RequestLife
from .metrics import Metrics
from .model import ServedModel
from .repository import HELD, release_held
from .routes import resolve

log = logging.getLogger("modelpack.serve")


class App:
    """The ASGI application over the inference core. `startup()` loads, warms and opens gRPC; `shutdown()` drains."""

    def __init__(self, config: ServeConfig, model: ServedModel | None = None) -> None:
        self.config = config
        self.core = Core(config, model)
        self.bodies = BodyReader(config.max_body_mb, self.core.budget)
        self.grpc: Any = None  # the gRPC server (serve.http2.Http2Server), with --grpc-port

    @property
    def model(self) -> ServedModel | None:
        return self.core.model

    @property
    def metrics(self) -> Metrics:
        return self.core.metrics

    async def startup(self) -> None:
        await self.core.startup()
        if self.config.grpc_port is not None:
            from .protocols import grpc_v2

            self.grpc = await grpc_v2.start(self.core, self.config.host, self.config.grpc_port)
        self.core.ready = True
        if self.config.repository is None:
            model = self.core.model
            assert model is not None
            log.info("model %s version %s ready (%s, loaded in %.2fs)", model.name, model.version,
                     model.platform, model.load_seconds)
        else:
            served = self.core.repository.all_loaded()
            log.info("repository %s ready: %d model(s), %d version(s)%s", self.config.repository,
                     len(self.core.repository.models), len(served),
                     f", polling every {self.config.poll_s:g}s" if self.config.poll_s else "")

    async def shutdown(self) -> None:
        self.core.ready = False
        if self.grpc is not None:  # calls already running finish (within the graceful timeout), new ones are refused
            await self.grpc.stop(self.config.graceful_timeout_s)
        await self.core.shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, self.startup, self.shutdown,
                           lambda exc: log.error("startup failed: %s", exc))
            return
        if scope["type"] != "http":
            return
        self.core.metrics.inflight_requests += 1
        try:
            await self._http(scope, receive, send)
        finally:
            self.core.metrics.inflight_requests -= 1

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        route_name, key = "unmatched", None
        guard = self.core.guard
        guard.start_call()
        token = HELD.set([])  # the versions this request resolves, held until it is answered
        life = scope["modelpack.life"] = RequestLife(start)  # the transport abandons it if the client hangs up
        life_token = LIFE.set(life)
        try:
            route, params = resolve(method, path)
            route_name = route.template
            api_key = guard.identify(headers.get("authorization"), route.access)
            key = api_key.name if api_key else None  # counted in the metrics even when refused below
            guard.permit(api_key, route.access, path)
            request = Request(method, path, headers, params, Caller(api_key, route.access))
            held = 0
            try:
                if route.method == "POST":
                    request.body = await self.bodies.read(receive, headers)
                    held = len(request.body)
                    if "content-encoding" in headers:
                        plain = self.bodies.decode(request.body, headers["content-encoding"])
                        if plain is not request.body:
                            request.body = plain
                            held += len(plain)
                response: Response = await route.handler(self.core, request)
            finally:
                self.bodies.release(held)
        except RequestError as exc:
            response = error_response(exc)
        except InputError as exc:
            response = json_response(400, {"error": capped(str(exc))})
        except Disconnected:
            release_held(token)
            LIFE.reset(life_token)
            return
        except Exception:  # a bug in the server or the model runtime, never the client's input
            log.exception("internal error on %s %s", method, capped(path, 200))
            response = json_response(500, {"error": "internal server error; see the server log."})
        tracer, done = self.core.tracer, time.perf_counter()
        try:
            await send_response(send, response, head_only=method == "HEAD")
        finally:
            used = release_held(token)
            LIFE.reset(life_token)
        guard.observe(route_name, response[0], time.perf_counter() - start, key,
                      used.labels if used else guard.refused_labels())
        if tracer is not None and used is not None:  # a request that reached a model is a trace
            tracer.record(life, f"{method} {route_name}", headers.get("traceparent"), used.model.name,
                          used.model.version, response[0], done)


def build_app(config: ServeConfig, model: ServedModel | None = None) -> App:
    """The server's ASGI app; call `startup()` (or run it under an ASGI server's lifespan) before use."""
    return App(config, model)
