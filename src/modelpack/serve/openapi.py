"""The OpenAPI 3.1 document and the /docs page, both generated from the route table and the model's signature.

The docs page is plain HTML rendered here: no script, no CDN, so it works offline. Each route shows a
curl line, and each POST route an example request with the model's real input names, datatypes and
shapes (dynamic dimensions as 1), which the server answers 200.
"""

from __future__ import annotations

import html
import json
import math
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import __version__
from .tensors import V2_TO_NUMPY, v2_datatype

if TYPE_CHECKING:
    from .routes import Route

STATUS_TEXT = {
    400: "Bad input, naming the input and what was expected", 401: "Missing or invalid API key",
    403: "The API key lacks the scope this route needs", 404: "Unknown model, version or route",
    405: "Method not allowed on this path (see the Allow header)", 413: "Body over --max-body-mb",
    414: "Path over 1,024 characters", 415: "Unsupported Content-Encoding", 429: "The API key is over its rate limit (Retry-After)",
    503: "Not ready, queue full or too many request bytes in flight (Retry-After)",
    504: "Timed out (--timeout-s)",
}
EXAMPLE_VALUES = 1024  # an example request spells out at most this many values per input


def schemas(model: Any) -> dict[str, Any]:
    """The named schemas routes refer to, with the model's input names where a schema can use them."""
    names = [t.name for t in model.signature.inputs] if model else []
    tensor_meta = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}}}
    tensor_in = {
        "type": "object", "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string", "enum": names} if names else {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": list(V2_TO_NUMPY)},
            "data": {"type": "array", "description": "Tensor values, nested or flat, row-major."},
            "parameters": {"type": "object"},
        },
        "description": "A JSON tensor. With the binary tensor extension (an Inference-Header-Content-Length "
                       "header, and parameters.binary_data_size instead of data) the values follow the JSON.",
    }
    tensor_out = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array"},
        "parameters": {"type": "object"}}}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Object": {"type": "object"},
        "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
            "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"}, "inputs": {"type": "array", "items": tensor_meta},
            "outputs": {"type": "array", "items": tensor_meta}}},
        "ModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"}, "ready": {"type": "boolean"}}},
        "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string", "maxLength": 256},
            "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
            "inputs": {"type": "array", "items": tensor_in},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {
                    "type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}}}},
        "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": tensor_out}}},
        "PredictRequest": {"type": "object", "properties": {
            "signature_name": {"type": "string"}, "instances": {"type": "array"}, "inputs": {}}},
        "PredictResponse": {"type": "object", "properties": {"predictions": {"type": "array"}, "outputs": {}}},
        "SimpleRequest": {"type": "object", "required": ["input_data"], "properties": {"input_data": {}}},
        "SimpleResponse": {"type": "object", "required": ["prediction"], "properties": {"prediction": {}}},
        "RepositoryIndexRequest": {"type": "object", "properties": {
            "ready": {"type": "boolean", "description": "Only the versions ready to serve."}}},
        "RepositoryRequest": {"type": "object", "properties": {"parameters": {"type": "object"}}},
        "RepositoryIndex": {"type": "array", "items": {
            "type": "object", "required": ["name", "version", "state"], "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]}, "reason": {"type": "string"}}}},
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(route: Route) -> dict[str, Any]:
    if route.answer.startswith("text/"):
        return {"description": route.summary, "content": {route.answer: {"schema": {"type": "string"}}}}
    content: dict[str, Any] = {"application/json": {"schema": _ref(route.answer)}}
    if route.answer == "InferResponse":  # binary outputs: the JSON header, then the tensors' bytes
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    return {"description": route.summary, "content": content}


def _example_shape(shape: list[int]) -> list[int]:
    return [1 if d < 0 else d for d in shape]


def example(route: Route, model: Any) -> Any:
    """A request body the served model accepts on `route`: zeros of its inputs' real names, types and shapes."""
    if route.body == "RepositoryIndexRequest":
        return {"ready": False}
    if route.body == "RepositoryRequest":
        return {}
    if route.body is None or model is None:
        return None
    inputs = model.signature.inputs
    shapes = {t.name: _example_shape(list(t.shape)) for t in inputs}

    def zeros(name: str, dtype: str) -> Any:
        count = math.prod(shapes[name])
        if count > EXAMPLE_VALUES:
            return f"{count} values"
        value: Any = False if dtype == "bool" else 0
        for dim in reversed(shapes[name]):
            value = [value] * dim
        return value

    if route.body == "InferRequest":
        return {"inputs": [{"name": t.name, "shape": shapes[t.name], "datatype": v2_datatype(t.dtype),
                            "data": zeros(t.name, t.dtype)} for t in inputs]}
    if route.body == "PredictRequest":
        return {"inputs": {t.name: zeros(t.name, t.dtype) for t in inputs}}
    if len(inputs) == 1:
        return {"input_data": zeros(inputs[0].name, inputs[0].dtype)}
    return {"input_data": {t.name: zeros(t.name, t.dtype) for t in inputs}}


def spec(routes: Sequence[Route], model: Any, auth: bool, models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The OpenAPI document of `routes` (the route table hands itself in, as Starlette's `get_schema(routes)`); its examples use `model`, and `models` (the
    repository's, as `Repository.describe` gives them) are listed in `x-models` and the description."""
    name = model.name if model else "model"
    version = model.version if model else "1"
    paths: dict[str, Any] = {}
    for route in routes:
        entry: dict[str, Any] = {"summary": route.summary, "tags": [route.protocol],
                                 "operationId": _operation_id(route)}
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"},
                   "example": {"name": name, "version": version, "label": "stable"}[p]}
                  for p in ("name", "version", "label") if f"{{{p}}}" in route.template]
        if params:
            entry["parameters"] = params
        if route.body is not None:
            content: dict[str, Any] = {"schema": _ref(route.body)}
            body_example = example(route, model)
            if body_example is not None:
                content["example"] = body_example
            # The repository API's bodies are optional: tritonclient sends none to the index.
            entry["requestBody"] = {"required": not route.body.startswith("Repository"),
                                    "content": {"application/json": content}}
        entry["responses"] = {"200": _answer(route), **{
            str(code): {"description": STATUS_TEXT[code], "content": {"application/json": {"schema": _ref("Error")}}}
            for code in route.statuses}}
        if route.public:
            entry["security"] = []
        paths.setdefault(route.template, {})[route.method.lower()] = entry
    inputs = model.signature.inputs if model else []
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": _title(model), "version": __version__,
                 "description": "Inputs: " + ", ".join(f"{t.name} {v2_datatype(t.dtype)} {list(t.shape)}"
                                                        for t in inputs)},
        "paths": paths,
        "components": {"schemas": schemas(model)},
    }
    if models:
        document["x-models"] = models
        document["info"]["description"] += "\n\nModels: " + "; ".join(
            f"{m['name']} (versions {', '.join(m['versions']) or 'none loaded'}"
            + (f"; labels {', '.join(f'{k}={v}' for k, v in m['labels'].items())}" if m["labels"] else "") + ")"
            for m in models)
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


def _operation_id(route: Route) -> str:
    handler = route.handler
    versioned = "_versioned" if "{version}" in route.template else "_labelled" if "{label}" in route.template else ""
    return f"{handler.__module__.rsplit('.', 1)[-1]}_{handler.__name__}{versioned}"


def curl(route: Route, model: Any, auth: bool, base: str) -> str:
    """The curl line that calls `route` on this server (with the example body for a POST)."""
    path = route.template.replace("{name}", model.name if model else "model").replace(
        "{version}", model.version if model else "1").replace("{label}", "stable")
    words = ["curl", "-s"]
    if route.method != "GET":
        words += ["-X", route.method]
    words.append(base + path)
    line = " ".join(shlex.quote(w) for w in words)
    if auth and not route.public:
        line += ' -H "Authorization: Bearer $MODELPACK_API_KEY"'
    body = example(route, model)
    if body is not None:
        line += " -H 'content-type: application/json' -d " + shlex.quote(json.dumps(body, separators=(",", ":")))
    return line


def _title(model: Any) -> str:
    return f"modelpack serve: {model.name if model else 'model'}"


def docs_page(routes: Sequence[Route], model: Any, auth: bool, base: str, grpc_port: int | None = None,
              models: list[dict[str, Any]] | None = None) -> bytes:
    title = _title(model)
    esc = html.escape
    sections = []
    for protocol in dict.fromkeys(route.protocol for route in routes):
        rows = []
        for route in (r for r in routes if r.protocol == protocol):
            access = "public" if route.public else f"key scope: {route.scope}"
            rows.append(f"<h3><code>{route.method} {esc(route.template)}</code></h3><p>{esc(route.summary)} "
                        f"<small>({access}; errors {', '.join(map(str, route.statuses))})</small></p>"
                        f"<pre>{esc(curl(route, model, auth, base))}</pre>")
        sections.append(f"<h2>{esc(protocol)}</h2>{''.join(rows)}")
    tensors = ""
    if model is not None:
        tensors = "<table><tr><th></th><th>name</th><th>datatype</th><th>shape</th></tr>" + "".join(
            f"<tr><td>{kind}</td><td><code>{esc(t.name)}</code></td><td>{v2_datatype(t.dtype)}</td>"
            f"<td>{list(t.shape)}</td></tr>"
            for kind, specs in (("input", model.signature.inputs), ("output", model.signature.outputs))
            for t in specs) + "</table><p>-1 marks a dynamic dimension.</p>"
    if models and (len(models) > 1 or any(m["labels"] or len(m["versions"]) > 1 for m in models)):
        tensors = "<h2>Models</h2><table><tr><th>model</th><th>versions</th><th>labels</th><th>default</th>" \
            "<th>inputs</th></tr>" + "".join(
                f"<tr><td><code>{esc(m['name'])}</code></td><td>{esc(', '.join(m['versions']))}</td>"
                f"<td>{esc(', '.join(f'{k}={v}' for k, v in m['labels'].items()))}</td>"
                f"<td>{esc(str(m['default_version']))}</td><td>" + esc(", ".join(
                    f"{t['name']} {t['datatype']} {t['shape']}" for t in m.get("inputs", []))) + "</td></tr>"
                for m in models) + "</table>" + tensors
    grpc = (f"<p>KServe V2 gRPC (<code>inference.GRPCInferenceService</code>) is on port {grpc_port}.</p>"
            if grpc_port else "")
    keys = ("<p>This server needs an API key: send <code>Authorization: Bearer KEY</code>.</p>" if auth else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}}td,th{{padding:.3rem .8rem;
text-align:left;border-bottom:1px solid #ddd}}code,pre{{background:#f4f4f4;padding:0 .2rem}}
pre{{padding:.5rem;white-space:pre-wrap;word-break:break-all}}</style></head><body>
<h1>{esc(title)}</h1>{tensors}{keys}{grpc}{''.join(sections)}
<p>The OpenAPI document: <a href="/openapi.json">/openapi.json</a>.</p></body></html>"""
    return page.encode()
