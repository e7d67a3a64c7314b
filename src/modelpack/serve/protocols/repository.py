"""Triton's model repository extension over HTTP: the index, and loading and unloading a model (admin scope).

`POST /v2/repository/index` lists every version the repository offers with its state (READY or UNAVAILABLE
and why); `POST /v2/repository/models/{name}/load` (re)reads the model's source and serves what its version
policy says; `.../unload` takes every version out of service, draining its requests first. The gRPC methods
(`RepositoryIndex`, `RepositoryModelLoad`, `RepositoryModelUnload`) are in `grpc_v2`.
"""

from __future__ import annotations

from typing import Any

from ...errors import RequestError
from ..asgi import Request, Response, json_response, read_json
from ..core import Core


async def _payload(request: Request) -> dict[str, Any]:
    if not request.body:  # tritonclient sends no body to the index
        return {}
    payload = await read_json(request.body, "repository request")
    if not isinstance(payload, dict):
        raise RequestError("a repository request body is a JSON object (or empty).")
    return payload


async def index(core: Core, request: Request) -> Response:
    ready = (await _payload(request)).get("ready", False)
    if not isinstance(ready, bool):
        raise RequestError("'ready' must be true or false.")
    return json_response(200, core.repository.index(ready_only=ready))


async def load(core: Core, request: Request) -> Response:
    payload = await _payload(request)
    parameters = payload.get("parameters", {})
    if not isinstance(parameters, dict):
        raise RequestError("'parameters' must be an object.")
    if "config" in parameters or any(str(k).startswith("file:") for k in parameters):
        raise RequestError("loading a model from a config or files in the request is not supported; put the "
                           "version in the repository and load it by name.", status=400)
    await core.load(request.caller, _name(request))
    return json_response(200, {})


async def unload(core: Core, request: Request) -> Response:
    await _payload(request)
    await core.unload(request.caller, _name(request))
    return json_response(200, {})


def _name(request: Request) -> str:
    name = request.params.get("name")
    assert name is not None  # the route's template has it
    return name
