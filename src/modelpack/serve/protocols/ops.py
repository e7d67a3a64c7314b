"""The operational routes: Prometheus metrics, the OpenAPI document and the /docs page."""

from __future__ import annotations

from weakref import WeakKeyDictionary

from ..asgi import JSON_TYPE, Request, Response, dumps
from ..core import Core

_documents: WeakKeyDictionary[Core, tuple[int, bytes]] = WeakKeyDictionary()  # by the repository's generation


async def metrics(core: Core, request: Request) -> Response:
    text = core.metrics.render()
    return 200, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")], text.encode()


async def openapi(core: Core, request: Request) -> Response:
    generation = core.repository.generation
    cached = _documents.get(core)
    if cached is None or cached[0] != generation:
        from ..openapi import spec

        cached = _documents[core] = (generation, dumps(spec(core.model, core.keys.enabled,
                                                             core.repository.describe())))
    return 200, JSON_TYPE, cached[1]


async def docs(core: Core, request: Request) -> Response:
    from ..openapi import docs_page

    base = ("https" if core.config.ssl_certfile else "http") + "://" + request.headers.get("host", "localhost")
    page = docs_page(core.model, core.keys.enabled, base, core.config.grpc_port, core.repository.describe())
    return 200, [(b"content-type", b"text/html; charset=utf-8")], page
