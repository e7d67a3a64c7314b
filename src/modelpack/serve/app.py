"""The inference server as one ASGI application: KServe V2, TF Serving REST and /predict on one port.

`build_app(config)` makes it. Routing, authentication, metrics and the mapping of
errors to HTTP responses each happen in one visible place (`App.__call__`); the
protocol handlers only parse, validate, infer and encode. A client's mistake is a
4xx with `{"error": "..."}`; nothing a client sends produces a 500.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import __version__
from ..errors import InputError, NotFound, Overloaded, PayloadTooLarge, RequestError, reason
from . import tensors
from .auth import KeyRing
from .batcher import Batcher
from .config import ServeConfig
from .metrics import Metrics
from .model import ServedModel
from .tensors import clip

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

    def loads(data: bytes) -> Any:
        return orjson.loads(data)

    JSONError: tuple[type[Exception], ...] = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover - orjson is part of the serve extra
    import json

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, default=lambda o: o.tolist()).encode()

    def loads(data: bytes) -> Any:
        return json.loads(data)

    JSONError = (json.JSONDecodeError, UnicodeDecodeError)

log = logging.getLogger("modelpack.serve")

Headers = dict[str, str]
Response = tuple[int, list[tuple[bytes, bytes]], bytes]
# A model faster than this (batch 1, measured at warm-up) runs on the event loop: a thread hop costs more.
INLINE_BELOW_MS = 0.5
JSON_TYPE = [(b"content-type", b"application/json")]


@dataclass
class Request:
    method: str
    path: str
    headers: Headers
    params: dict[str, str | None]
    body: bytes = b""


class _Disconnected(Exception):
    pass


def json_response(status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None) -> Response:
    return status, JSON_TYPE + (extra or []), dumps(payload)


def parse_json(body: bytes, what: str = "request body") -> Any:
    if not body:
        raise RequestError(f"empty {what}; expected a JSON object.")
    try:
        return loads(body)
    except JSONError as exc:
        raise RequestError(f"malformed JSON in the {what}: {exc}.") from None


@dataclass(frozen=True)
class Route:
    name: str  # the template, used as the metrics label
    method: str
    handler: str
    public: bool = False  # reachable without an API key
    scope: str = "metadata"  # what an API key needs: infer, metadata or admin


STATIC: dict[str, list[Route]] = {
    "/v2/health/live": [Route("/v2/health/live", "GET", "live", public=True)],
    "/v2/health/ready": [Route("/v2/health/ready", "GET", "ready", public=True)],
    "/v2": [Route("/v2", "GET", "server_metadata")],
    "/metrics": [Route("/metrics", "GET", "metrics", scope="admin")],
    "/openapi.json": [Route("/openapi.json", "GET", "openapi")],
    "/docs": [Route("/docs", "GET", "docs")],
    "/predict": [Route("/predict", "POST", "simple_predict", scope="infer")],
}
V2_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer)?$")
TFS_MODEL = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                       r"(?:(?P<verb>:predict)|(?P<meta>/metadata))?$")


_resolved: dict[tuple[str, str], tuple[Route, dict[str, str | None]]] = {}


def resolve(method: str, path: str) -> tuple[Route, dict[str, str | None]]:
    """The route for a request, or NotFound / 405; cached per (method, path)."""
    found = _resolved.get((method, path))
    if found is None:
        found = _resolve(method, path)
        if len(_resolved) < 4096:
            _resolved[(method, path)] = found
    return found


def _resolve(method: str, path: str) -> tuple[Route, dict[str, str | None]]:
    candidates: list[Route] = STATIC.get(path, [])
    params: dict[str, str | None] = {}
    if not candidates and (m := V2_MODEL.match(path)):
        params = {"name": m["name"], "version": m["version"]}
        suffix = "/versions/{version}" if m["version"] else ""
        rest = m["rest"] or ""
        handler = {"": "model_metadata", "/ready": "model_ready", "/infer": "infer"}[rest]
        verb = "POST" if rest == "/infer" else "GET"
        candidates = [Route(f"/v2/models/{{name}}{suffix}{rest}", verb, handler,
                            scope="infer" if handler == "infer" else "model")]
    elif not candidates and (m := TFS_MODEL.match(path)):
        params = {"name": m["name"], "version": m["version"]}
        suffix = "/versions/{version}" if m["version"] else ""
        if m["verb"]:
            candidates = [Route(f"/v1/models/{{name}}{suffix}:predict", "POST", "tfs_predict", scope="infer")]
        elif m["meta"]:
            candidates = [Route(f"/v1/models/{{name}}{suffix}/metadata", "GET", "tfs_metadata", scope="model")]
        else:
            candidates = [Route(f"/v1/models/{{name}}{suffix}", "GET", "tfs_status", scope="model")]
    for route in candidates:
        if route.method == method or (method == "HEAD" and route.method == "GET"):
            return route, params
    if candidates:
        allowed = ", ".join(sorted({r.method for r in candidates}))
        raise RequestError(f"method {method} is not allowed on {path}; use {allowed}.", status=405,
                           headers={"Allow": allowed})
    raise NotFound(f"no route {path}; see /docs for the API.")


class App:
    """The ASGI application. `startup()` loads and warms the model; `shutdown()` drains the queue."""

    def __init__(self, config: ServeConfig, model: ServedModel | None = None) -> None:
        self.config = config
        self.model = model
        self.ready = False
        self.keys = KeyRing.build(config.api_key, config.api_keys_file, config.rate_limit)
        self.metrics: Metrics | None = None
        self.batcher: Batcher | None = None
        self._openapi: bytes | None = None
        self.max_body = int(config.max_body_mb * 1024 * 1024)
        self.max_inflight = int(config.max_inflight_mb * 1024 * 1024)
        self.inflight = 0  # request body bytes being read or held, all connections together
        self.grpc: Any = None  # the gRPC server (grpc.aio.Server), with --grpc-port

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def startup(self) -> None:
        if self.model is None:
            self.model = self.config.load_model()
        model = self.model
        self.metrics = Metrics(model.name, model.version)
        self.metrics.load_seconds = model.load_seconds
        single_ms = model.warm_up()
        self.batcher = Batcher(model.runner.run, max_batch_size=self.config.max_batch_size,
                               timeout_ms=self.config.batch_timeout_ms, max_queue=self.config.max_queue,
                               on_batch=self.metrics.batch.observe, inline=single_ms < INLINE_BELOW_MS,
                               mergeable=model.signature.simple_batch)
        self.batcher.start()
        self.metrics.queue_depth = lambda: self.batcher.depth if self.batcher else 0
        self.metrics.inflight_bytes = lambda: self.inflight
        self._watch_sighup()
        if self.config.grpc_port is not None:
            from . import grpc_v2

            self.grpc = await grpc_v2.start(self, self.config.host, self.config.grpc_port)
        self.ready = True
        log.info("model %s version %s ready (%s, loaded in %.2fs)", model.name, model.version, model.platform,
                 model.load_seconds)

    def _watch_sighup(self) -> None:
        """SIGHUP re-reads the keys file; requests in flight are not disturbed."""
        if self.config.api_keys_file is None:
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_keys)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), or no signals
            pass

    def reload_keys(self) -> None:
        try:
            count = self.keys.reload()
        except InputError as exc:
            log.error("keys file not reloaded, the previous keys stay in force: %s", exc)
            return
        log.info("reloaded %d API key(s) from %s", count, self.config.api_keys_file)

    async def shutdown(self) -> None:
        self.ready = False
        if self.grpc is not None:  # calls already running finish (within the graceful timeout), new ones are refused
            await self.grpc.stop(self.config.graceful_timeout_s)
        if self.batcher is not None:
            await self.batcher.stop()

    # -- ASGI ----------------------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        start = time.perf_counter()
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        route_name, key = "unmatched", None
        try:
            route, params = resolve(method, path)
            route_name = route.name
            if not route.public and self.keys.enabled:
                api_key = self.keys.check(headers.get("authorization"))
                key = api_key.name
                self.keys.authorize(api_key, route.scope, path)
                self.keys.throttle(api_key)
            request = Request(method, path, headers, params)
            held = 0
            try:
                if route.method == "POST":
                    request.body = await self._read_body(receive, headers)
                    held = len(request.body)
                    if "content-encoding" in headers:
                        request.body = self._decode_body(request.body, headers["content-encoding"])
                status, out_headers, body = await getattr(self, "route_" + route.handler)(request)
            finally:
                self.inflight -= held
        except RequestError as exc:
            status, out_headers, body = json_response(exc.status, {"error": _capped(str(exc))},
                                                      [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()])
        except InputError as exc:
            status, out_headers, body = json_response(400, {"error": _capped(str(exc))})
        except _Disconnected:
            return
        except Exception:  # a bug in the server or the model runtime, never the client's input
            log.exception("internal error on %s %s", method, path)
            status, out_headers, body = json_response(500, {"error": "internal server error; see the server log."})
        await send({"type": "http.response.start", "status": status,
                    "headers": out_headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        if self.metrics is not None:
            self.metrics.observe(route_name, status, time.perf_counter() - start, key)

    async def _lifespan(self, receive: Callable[[], Awaitable[dict[str, Any]]],
                        send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("startup failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive: Callable[[], Awaitable[dict[str, Any]]], headers: Headers) -> bytes:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise PayloadTooLarge(f"request body of {int(declared)} bytes is over the {self.config.max_body_mb:g} MB "
                                  "limit (--max-body-mb).")
        if declared is not None and declared.isdigit() and self.inflight + int(declared) > self.max_inflight:
            raise Overloaded(f"the server holds {self.config.max_inflight_mb:g} MB of requests already "
                             "(--max-inflight-mb); retry shortly.", headers={"Retry-After": "1"})
        chunks, size = [], 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                self.inflight += len(chunk)
                if size > self.max_body:
                    raise PayloadTooLarge(f"request body is over the {self.config.max_body_mb:g} MB limit "
                                          "(--max-body-mb).")
                if self.inflight > self.max_inflight:
                    raise Overloaded(f"the server holds {self.config.max_inflight_mb:g} MB of requests already "
                                     "(--max-inflight-mb); retry shortly.", headers={"Retry-After": "1"})
                chunks.append(chunk)
                if not message.get("more_body"):
                    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    size = 0  # from here the caller releases these bytes, once the request is answered
                    return body
        finally:
            self.inflight -= size  # a refused or abandoned body is released at once

    def _decode_body(self, body: bytes, encoding: str) -> bytes:
        """A gzip or deflate body (tritonclient's request_compression_algorithm), decompressed with a bound:
        one that would inflate past --max-body-mb (a gzip bomb) is refused before it is."""
        import zlib

        kind = encoding.strip().lower()
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "identity": None}.get(kind, -1)
        if wbits is None:
            return body
        if wbits == -1:
            raise RequestError(f"Content-Encoding {clip(encoding)} is not supported; use gzip, deflate or none.",
                               status=415)
        inflater = zlib.decompressobj(wbits)
        try:
            plain = inflater.decompress(body, self.max_body + 1)
        except zlib.error as exc:
            raise RequestError(f"the {kind} request body is corrupt ({exc}).") from None
        if len(plain) > self.max_body or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the {kind} request body inflates past the {self.config.max_body_mb:g} MB limit "
                                  "(--max-body-mb).")
        return plain

    # -- shared steps --------------------------------------------------------------------------------------

    def _model(self, request: Request) -> ServedModel:
        return self.model_for(request.params.get("name"), request.params.get("version"))

    def model_for(self, name: str | None, version: str | None) -> ServedModel:
        """The served model, if `name` (and `version`, when given) name it and it is ready; every protocol asks."""
        model = self.model
        if model is None or not self.ready:
            raise RequestError("the model is not ready yet.", status=503, headers={"Retry-After": "1"})
        if name is not None and name != model.name:
            raise NotFound(f"unknown model {clip(name)}; this server serves '{model.name}'.")
        model.check_version(version)
        return model

    async def infer(self, model: ServedModel, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate against the signature, batch, run: the inference path every protocol shares."""
        rows = model.validate(feeds)
        assert self.batcher is not None
        try:
            return await self.batcher.submit(feeds, rows, self.config.timeout_s)
        except (RequestError, asyncio.CancelledError):
            raise
        except Exception as exc:
            # The inputs matched the signature, so a runtime that refuses them (a dynamic dimension the graph
            # constrains, a value out of a model's range) is answering the client's input: a 400 with its reason.
            if _from_runtime(exc):
                raise RequestError(f"the model rejected the input: {_capped(reason(exc, 400), 400)}") from None
            raise

    # -- health, metadata, operations ----------------------------------------------------------------------

    async def route_live(self, request: Request) -> Response:
        return json_response(200, {"live": True})

    async def route_ready(self, request: Request) -> Response:
        return json_response(200 if self.ready else 503, {"ready": self.ready})

    async def route_server_metadata(self, request: Request) -> Response:
        return json_response(200, {"name": "modelpack", "version": __version__,
                                   "extensions": ["binary_tensor_data", "tfserving_rest", "simple_predict"]})

    async def route_model_metadata(self, request: Request) -> Response:
        return json_response(200, self._model(request).metadata())

    async def route_model_ready(self, request: Request) -> Response:
        model = self._model(request)
        return json_response(200, {"name": model.name, "version": model.version, "ready": self.ready})

    async def route_metrics(self, request: Request) -> Response:
        text = self.metrics.render() if self.metrics else ""
        return 200, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")], text.encode()

    async def route_openapi(self, request: Request) -> Response:
        if self._openapi is None:
            from .openapi import spec

            self._openapi = dumps(spec(self.model, self.keys.enabled))
        return 200, JSON_TYPE, self._openapi

    async def route_docs(self, request: Request) -> Response:
        from .openapi import docs_page, spec

        return 200, [(b"content-type", b"text/html; charset=utf-8")], docs_page(spec(self.model, self.keys.enabled))

    # -- KServe V2 inference -------------------------------------------------------------------------------

    async def route_infer(self, request: Request) -> Response:
        model = self._model(request)
        body, binary = request.body, None
        header_length = request.headers.get("inference-header-content-length")
        if header_length is not None:
            if not header_length.isdigit() or int(header_length) > len(body):
                raise RequestError(f"Inference-Header-Content-Length {header_length!r} is not a length within the "
                                   f"{len(body)}-byte body.")
            binary = memoryview(body)[int(header_length):]
            body = body[:int(header_length)]
        payload = parse_json(body, "inference request")
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
            raise RequestError("an inference request is a JSON object with an 'inputs' list.")
        if "id" in payload and (not isinstance(payload["id"], str) or len(payload["id"]) > 256):
            raise RequestError(f"'id' must be a string of at most 256 characters, got {clip(payload['id'])}.")
        feeds: dict[str, np.ndarray] = {}
        offset = 0
        for item in payload["inputs"]:
            name, array, offset = tensors.decode(item, binary, offset)
            if name in feeds:
                raise RequestError(f"input '{name}' appears twice.")
            feeds[name] = array
        wanted, binary_flags = self._requested_outputs(model, payload)
        outputs = await self.infer(model, feeds)
        parts, chunks = [], []
        for name in wanted:
            meta, raw = tensors.encode(name, outputs[name], binary_flags[name])
            parts.append(meta)
            if raw is not None:
                chunks.append(raw)
        response: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": parts}
        if "id" in payload:
            response["id"] = payload["id"]  # a string: checked before inference
        head = dumps(response)
        if not chunks:
            return 200, JSON_TYPE, head
        return 200, [(b"content-type", b"application/octet-stream"),
                     (b"inference-header-content-length", str(len(head)).encode())], head + b"".join(chunks)

    def _requested_outputs(self, model: ServedModel, payload: dict[str, Any]) -> tuple[list[str], dict[str, bool]]:
        params = payload.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(f"'parameters' must be an object, got {clip(params)}.")
        default_binary = _flag(params, "binary_data_output", False)
        requested = payload.get("outputs")
        names = model.signature.output_names
        if not requested:
            return names, {n: default_binary for n in names}
        if not isinstance(requested, list):
            raise RequestError("'outputs' must be a list of objects with a 'name'.")
        wanted, flags = [], {}
        for item in requested:
            name = item.get("name") if isinstance(item, dict) else None
            if name not in names:
                raise RequestError(f"unknown output {clip(name)}; this model has {', '.join(names)}.")
            item_params = item.get("parameters") or {}
            if not isinstance(item_params, dict):
                raise RequestError(f"output {clip(name)}: 'parameters' must be an object.")
            flags[name] = _flag(item_params, "binary_data", default_binary)
            wanted.append(name)
        return wanted, flags

    # -- TensorFlow Serving REST ---------------------------------------------------------------------------

    async def route_tfs_metadata(self, request: Request) -> Response:
        """TF Serving's GetModelMetadata: the serving_default signature_def, in its JSON form."""
        model = self._model(request)

        def tensors(specs: Any) -> dict[str, Any]:
            return {t.name: {"dtype": "DT_" + {"float32": "FLOAT", "float64": "DOUBLE", "float16": "HALF",
                                               "bool": "BOOL"}.get(t.dtype, t.dtype.upper()),
                             "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in t.shape],
                                              "unknown_rank": False},
                             "name": t.name} for t in specs}

        signature = {"inputs": tensors(model.signature.inputs), "outputs": tensors(model.signature.outputs),
                     "method_name": "tensorflow/serving/predict"}
        return json_response(200, {"model_spec": {"name": model.name, "signature_name": "", "version": model.version},
                                   "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}}})

    async def route_tfs_status(self, request: Request) -> Response:
        model = self._model(request)
        return json_response(200, {"model_version_status": [
            {"version": model.version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})

    async def route_tfs_predict(self, request: Request) -> Response:
        model = self._model(request)
        payload = parse_json(request.body)
        if not isinstance(payload, dict):
            raise RequestError("a predict request is a JSON object with 'instances' or 'inputs'.")
        signature_name = payload.get("signature_name", "serving_default")
        if signature_name != "serving_default":
            raise RequestError(f"unknown signature_name {clip(signature_name)}; this model has 'serving_default'.")
        if "instances" in payload and "inputs" in payload:
            raise RequestError("a predict request has either 'instances' (row format) or 'inputs' (columnar "
                               "format), not both.")
        names = model.signature.input_names
        if "instances" in payload:
            instances = payload["instances"]
            if not isinstance(instances, list) or not instances:
                raise RequestError("'instances' must be a non-empty list, one entry per example.")
            if all(isinstance(i, dict) for i in instances):
                feeds = {n: model.coerce(n, [_field(i, n) for i in instances]) for n in names}
            elif len(names) == 1:
                feeds = {names[0]: model.coerce(names[0], instances)}
            else:
                raise RequestError(f"this model takes several inputs ({', '.join(names)}): "
                                   "each instance must be an object keyed by input name.")
            outputs = await self.infer(model, feeds)
            out_names = model.signature.output_names
            if len(out_names) == 1:
                return json_response(200, {"predictions": outputs[out_names[0]]})
            rows = len(next(iter(outputs.values())))
            return json_response(200, {"predictions": [{n: outputs[n][i] for n in out_names} for i in range(rows)]})
        if "inputs" in payload:
            inputs = payload["inputs"]
            if isinstance(inputs, dict):
                feeds = {n: model.coerce(n, inputs[n]) if n in inputs else _missing(n, names) for n in names}
                extra = sorted(set(inputs) - set(names))
                if extra:
                    raise RequestError(f"unknown input '{extra[0]}'; this model takes {', '.join(names)}.")
            elif len(names) == 1:
                feeds = {names[0]: model.coerce(names[0], inputs)}
            else:
                raise RequestError(f"'inputs' must be an object keyed by input name ({', '.join(names)}).")
            outputs = await self.infer(model, feeds)
            out_names = model.signature.output_names
            result = outputs[out_names[0]] if len(out_names) == 1 else {n: outputs[n] for n in out_names}
            return json_response(200, {"outputs": result})
        raise RequestError("a predict request needs 'instances' (row format) or 'inputs' (columnar format).")

    # -- the classic Flask-style route ---------------------------------------------------------------------

    async def route_simple_predict(self, request: Request) -> Response:
        model = self._model(request)
        payload = parse_json(request.body)
        if not isinstance(payload, dict) or "input_data" not in payload:
            raise RequestError("expected a JSON object {\"input_data\": [...]}.")
        data = payload["input_data"]
        names = model.signature.input_names
        if isinstance(data, dict):
            feeds = {n: model.coerce(n, data[n]) if n in data else _missing(n, names) for n in names}
        elif len(names) == 1:
            feeds = {names[0]: model.coerce(names[0], data)}
        else:
            raise RequestError(f"'input_data' must be an object keyed by input name ({', '.join(names)}).")
        for spec in model.signature.inputs:  # one example without its batch dimension: add it
            if feeds[spec.name].ndim == len(spec.shape) - 1:
                feeds[spec.name] = feeds[spec.name][None, ...]
        outputs = await self.infer(model, feeds)
        out_names = model.signature.output_names
        result = outputs[out_names[0]] if len(out_names) == 1 else {n: outputs[n] for n in out_names}
        return json_response(200, {"prediction": result})


def _flag(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(f"parameter '{key}' must be true or false, got {clip(value)}.")
    return value


ERROR_CHARS = 1024  # an error body never repeats more of the client's request than this


def _capped(message: str, limit: int = ERROR_CHARS) -> str:
    return message if len(message) <= limit else message[:limit] + "…"


def _from_runtime(exc: BaseException) -> bool:
    """An exception raised by onnxruntime or the TFLite interpreter while running a request."""
    module = type(exc).__module__ or ""
    return module.startswith(("onnxruntime", "tensorflow", "ai_edge_litert")) or isinstance(exc, (ValueError,
                                                                                                  RuntimeError))


def _field(instance: dict[str, Any], name: str) -> Any:
    if name not in instance:
        raise RequestError(f"an instance has no input '{name}'.")
    return instance[name]


def _missing(name: str, names: list[str]) -> Any:
    raise RequestError(f"missing input '{name}'; this model takes {', '.join(names)}.")


def build_app(config: ServeConfig, model: ServedModel | None = None) -> App:
    """The server's ASGI app; call `startup()` (or run it under an ASGI server's lifespan) before use."""
    return App(config, model)
