"""KServe V2 / Open Inference Protocol over HTTP: health, metadata and inference (JSON and binary tensors)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import RequestError
from .. import tensors
from ..asgi import JSON_TYPE, Request, Response, dumps, json_response, read_json
from ..core import Core
from ..limits import parse_length
from ..model import ServedModel
from ..tensors import clip


async def model_of(core: Core, request: Request) -> ServedModel:
    params = request.params
    return await core.model_for(request.caller, params.get("name"), params.get("version"), params.get("label"))


async def live(core: Core, request: Request) -> Response:
    return json_response(200, {"live": True})


async def ready(core: Core, request: Request) -> Response:
    return json_response(200 if core.ready else 503, {"ready": core.ready})


async def server_metadata(core: Core, request: Request) -> Response:
    return json_response(200, core.server_metadata())


async def model_metadata(core: Core, request: Request) -> Response:
    model = await model_of(core, request)
    return json_response(200, {**model.metadata(), "versions": core.repository.versions(model.name)})


async def model_ready(core: Core, request: Request) -> Response:
    model = await model_of(core, request)
    return json_response(200, {"name": model.name, "version": model.version, "ready": core.ready})


async def infer(core: Core, request: Request) -> Response:
    model = await model_of(core, request)
    body: bytes | memoryview = request.body
    binary = None
    header_length = request.headers.get("inference-header-content-length")
    if header_length is not None:
        length = parse_length(header_length)
        if length is None or length > len(body):
            raise RequestError(f"Inference-Header-Content-Length {clip(header_length)} is not a length within the "
                               f"{len(body)}-byte body.")
        binary = memoryview(body)[length:]
        body = memoryview(body)[:length]
    payload = await read_json(body, "inference request")
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise RequestError("an inference request is a JSON object with an 'inputs' list.")
    if "id" in payload and (not isinstance(payload["id"], str) or len(payload["id"]) > 256):
        raise RequestError(f"'id' must be a string of at most 256 characters, got {clip(payload['id'])}.")
    for item in payload["inputs"]:  # refuse an oversized batch by its shape, before converting any data
        if isinstance(item, dict):
            model.check_declared(item.get("name"), item.get("shape"))
    wanted, binary_flags = requested_outputs(model, payload)
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for item in payload["inputs"]:
        name, array, offset = tensors.decode(item, binary, offset)
        if name in feeds:
            raise RequestError(f"input '{name}' appears twice.")
        feeds[name] = array
    outputs = await core.infer(model, feeds)
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


def requested_outputs(model: ServedModel, payload: dict[str, Any]) -> tuple[list[str], dict[str, bool]]:
    """The outputs to return, in order, and whether each travels as binary data."""
    params = payload.get("parameters", {})
    if not isinstance(params, dict):
        raise RequestError(f"'parameters' must be an object, got {clip(params)}.")
    default_binary = _flag(params, "binary_data_output", False)
    requested = payload.get("outputs", [])
    names = model.signature.output_names
    if not isinstance(requested, list):
        raise RequestError(f"'outputs' must be a list of objects with a 'name', got {clip(requested)}.")
    if not requested:
        return names, {n: default_binary for n in names}
    wanted, flags = [], {}
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in names:
            raise RequestError(f"unknown output {clip(name)}; this model has {', '.join(names)}.")
        item_params = item.get("parameters", {})
        if not isinstance(item_params, dict):
            raise RequestError(f"output {clip(name)}: 'parameters' must be an object.")
        flags[name] = _flag(item_params, "binary_data", default_binary)
        wanted.append(name)
    return wanted, flags


def _flag(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(f"parameter '{key}' must be true or false, got {clip(value)}.")
    return value
