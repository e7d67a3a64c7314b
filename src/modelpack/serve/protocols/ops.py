"""The operational routes: Prometheus metrics (the OpenAPI document and /docs are `serve.routes`', which hands
the schema its table)."""

from __future__ import annotations

from ..asgi import Request, Response
from ..core import Core


async def metrics(core: Core, request: Request) -> Response:
    text = core.metrics.render()
    return 200, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")], text.encode()
