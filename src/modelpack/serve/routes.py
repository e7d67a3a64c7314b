"""The one route table: HTTP dispatch, the OpenAPI document and /docs are all generated from `ROUTES`.

A route names its path template, method, handler, who may call it (public, or the API-key scope it
needs), what its request body and answer are (names of schemas in `serve.openapi`), and which error
statuses it can answer. Adding a route here adds it everywhere; nothing else lists routes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

from ..errors import NotFound, RequestError
from .asgi import JSON_TYPE, Request, Response, dumps
from .core import Core
from .guard import ADMIN, INFER, MODEL_ADMIN, MODEL_METADATA, PUBLIC, SERVER_METADATA, Access
from .protocols import ops, repository, simple, tfserving, v2

Handler = Callable[[Core, Request], Awaitable[Response]]

AUTH_ERRORS = (401, 403, 429)  # a missing or bad key, a key without the scope, a key over its rate limit
MODEL_ERRORS = (404, 503)  # an unknown model or version; not ready yet
BODY_ERRORS = (400, 413, 415, 503, 504)  # bad input; too large; bad encoding; overloaded; timed out


@dataclass(frozen=True)
class Route:
    template: str  # e.g. /v2/models/{name}/infer; also the metrics label
    method: str
    handler: Handler = field(compare=False)
    summary: str
    protocol: str  # the OpenAPI tag: KServe V2, TensorFlow Serving, simple, operations
    access: Access = SERVER_METADATA  # who may call it: the guard's table, which gRPC's methods share
    body: str | None = None  # the request body's schema (a name in openapi.SCHEMAS), for POST routes
    answer: str = "Object"  # the 200 answer's schema name, or "text/plain" / "text/html"
    errors: tuple[int, ...] = ()

    @property
    def public(self) -> bool:
        """Reachable without an API key."""
        return self.access.scope is None

    @property
    def scope(self) -> str:
        """What an API key needs: infer, model, metadata or admin."""
        return self.access.scope or "none"

    @property
    def statuses(self) -> tuple[int, ...]:
        """Every error status this route can answer, 405 included (another method on its path), and 414 for a
        path parameter past MAX_PATH_CHARS."""
        codes = set(self.errors) | {405} | ({414} if "{" in self.template else set())
        if not self.public:
            codes |= set(AUTH_ERRORS)
        return tuple(sorted(codes))


def _model_routes() -> list[Route]:
    routes: list[Route] = []
    for suffix in ("", "/versions/{version}"):
        base, tfs = f"/v2/models/{{name}}{suffix}", f"/v1/models/{{name}}{suffix}"
        routes += [
            Route(base, "GET", v2.model_metadata, "Model metadata: name, versions, platform, input and output "
                  "tensors", "KServe V2", access=MODEL_METADATA, answer="ModelMetadata", errors=MODEL_ERRORS),
            Route(f"{base}/ready", "GET", v2.model_ready, "Model readiness", "KServe V2", access=MODEL_METADATA,
                  answer="ModelReady", errors=MODEL_ERRORS),
            Route(f"{base}/infer", "POST", v2.infer, "Inference (JSON tensors, or the binary tensor extension with "
                  "Inference-Header-Content-Length)", "KServe V2", access=INFER, body="InferRequest",
                  answer="InferResponse", errors=MODEL_ERRORS + BODY_ERRORS),
            Route(tfs, "GET", tfserving.status, "Model status", "TensorFlow Serving", access=MODEL_METADATA,
                  errors=MODEL_ERRORS),
            Route(f"{tfs}/metadata", "GET", tfserving.metadata, "Model metadata: the serving_default "
                  "signature_def", "TensorFlow Serving", access=MODEL_METADATA, errors=MODEL_ERRORS),
            Route(f"{tfs}:predict", "POST", tfserving.predict, "Predict: 'instances' (rows) or 'inputs' (columns)",
                  "TensorFlow Serving", access=INFER, body="PredictRequest", answer="PredictResponse",
                  errors=MODEL_ERRORS + BODY_ERRORS),
        ]
    return routes + _tfserving_routes("/v1/models/{name}/labels/{label}", " (the version a label points at)")


def _tfserving_routes(base: str, note: str) -> list[Route]:
    return [
        Route(base, "GET", tfserving.status, "Model status" + note, "TensorFlow Serving", access=MODEL_METADATA,
              errors=MODEL_ERRORS),
        Route(f"{base}/metadata", "GET", tfserving.metadata, "Model metadata: the serving_default signature_def"
              + note, "TensorFlow Serving", access=MODEL_METADATA, errors=MODEL_ERRORS),
        Route(f"{base}:predict", "POST", tfserving.predict, "Predict: 'instances' (rows) or 'inputs' (columns)"
              + note, "TensorFlow Serving", access=INFER, body="PredictRequest", answer="PredictResponse",
              errors=MODEL_ERRORS + BODY_ERRORS),
    ]


_documents: WeakKeyDictionary[Core, tuple[int, bytes]] = WeakKeyDictionary()  # by the repository's generation


async def _openapi(core: Core, request: Request) -> Response:
    generation = core.repository.generation
    cached = _documents.get(core)
    if cached is None or cached[0] != generation:
        from .openapi import spec

        cached = _documents[core] = (generation, dumps(spec(ROUTES, core.model, core.keys.enabled,
                                                             core.repository.describe())))
    return 200, JSON_TYPE, cached[1]


async def _docs(core: Core, request: Request) -> Response:
    from .openapi import docs_page

    base = ("https" if core.config.ssl_certfile else "http") + "://" + request.headers.get("host", "localhost")
    page = docs_page(ROUTES, core.model, core.keys.enabled, base, core.config.grpc_port, core.repository.describe())
    return 200, [(b"content-type", b"text/html; charset=utf-8")], page


ROUTES: list[Route] = [
    Route("/v2/health/live", "GET", v2.live, "Liveness", "KServe V2", access=PUBLIC, answer="Live"),
    Route("/v2/health/ready", "GET", v2.ready, "Readiness: 200 once the model is loaded and warm", "KServe V2",
          access=PUBLIC, answer="Ready", errors=(503,)),
    Route("/v2", "GET", v2.server_metadata, "Server metadata: name, version, protocol extensions", "KServe V2",
          answer="ServerMetadata"),
    *_model_routes(),
    Route("/predict", "POST", simple.predict, "Predict, the classic Flask-style route: "
          "{\"input_data\": [...]} -> {\"prediction\": [...]}", "simple", access=INFER, body="SimpleRequest",
          answer="SimpleResponse", errors=MODEL_ERRORS + BODY_ERRORS),
    Route("/metrics", "GET", ops.metrics, "Prometheus metrics", "operations", access=ADMIN, answer="text/plain"),
    Route("/openapi.json", "GET", _openapi, "This OpenAPI document", "operations", answer="Object"),
    Route("/docs", "GET", _docs, "The API's documentation page, with an example request per route",
          "operations", answer="text/html"),
    Route("/v2/repository/index", "POST", repository.index, "Model repository index: every version the "
          "repository offers, with its state (READY, UNAVAILABLE) and why", "model repository", access=ADMIN,
          body="RepositoryIndexRequest", answer="RepositoryIndex", errors=(400,)),
    Route("/v2/repository/models/{name}/unload", "POST", repository.unload, "Unload a model: every version "
          "leaves service and is freed once its requests finish", "model repository", access=MODEL_ADMIN,
          body="RepositoryRequest", errors=(400, 404)),
    Route("/v2/repository/models/{name}/load", "POST", repository.load, "Load (or reload) a model: read its "
          "source again and serve the versions its policy names, each verified and warmed up first",
          "model repository", access=MODEL_ADMIN, body="RepositoryRequest", errors=(400, 404)),
]


def _pattern(template: str) -> re.Pattern[str]:
    # TF Serving puts ':predict' right after the name, so its names and versions stop at ':' as well as '/'.
    param = "[^/:]+" if template.startswith("/v1/") else "[^/]+"
    regex = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m[1]}>{param})", re.escape(template).replace(r"\{", "{")
                   .replace(r"\}", "}"))
    return re.compile(f"^{regex}$")


_STATIC: dict[str, list[Route]] = {}
_DYNAMIC: list[tuple[re.Pattern[str], Route]] = []
for _route in ROUTES:
    if "{" in _route.template:
        _DYNAMIC.append((_pattern(_route.template), _route))
    else:
        _STATIC.setdefault(_route.template, []).append(_route)
_resolved: dict[tuple[str, str], tuple[Route, dict[str, str | None]]] = {}
# The cache is filled before a request's key is checked, so what a stranger can put in it is bounded:
# at most CACHED_PATHS paths of at most CACHED_PATH_CHARS characters (about 1 MB), never a long path.
CACHED_PATHS = 4096
CACHED_PATH_CHARS = 256
# Longer paths are refused before any pattern is tried: matching one costs time in proportion to its length
# for every dynamic route (a 60 KB model name took 2.5 ms, unauthenticated). No route needs more: model names are
# directory names (255 bytes at most on the file systems TF Serving and Triton read them from).
MAX_PATH_CHARS = 1024


def resolve(method: str, path: str) -> tuple[Route, dict[str, str | None]]:
    """The route for a request and its path parameters, or NotFound / 405; short paths are cached."""
    found = _resolved.get((method, path))
    if found is None:
        if len(path) > MAX_PATH_CHARS:
            raise RequestError(f"the path is {len(path):,} characters; paths are at most {MAX_PATH_CHARS:,} "
                               "(model names at most 255).", status=414)
        found = _resolve(method, path)
        if len(_resolved) < CACHED_PATHS and len(path) <= CACHED_PATH_CHARS:
            _resolved[(method, path)] = found
    return found


def _resolve(method: str, path: str) -> tuple[Route, dict[str, str | None]]:
    if len(path) > 1 and path.endswith("/"):  # the Open Inference Protocol writes some paths with one (GET /v2/)
        path = path[:-1]
    candidates: list[tuple[Route, dict[str, str]]] = [(route, {}) for route in _STATIC.get(path, [])]
    if not candidates:
        for pattern, route in _DYNAMIC:
            if m := pattern.match(path):
                candidates.append((route, dict(m.groupdict())))
    for route, params in candidates:
        if route.method == method or (method == "HEAD" and route.method == "GET"):
            return route, {"name": None, "version": None, **params}
    if candidates:
        allowed = ", ".join(sorted({route.method for route, _ in candidates}))
        raise RequestError(f"method {method} is not allowed on {path}; use {allowed}.", status=405,
                           headers={"Allow": allowed})
    raise NotFound(f"no route {path}; see /docs for the API.")
