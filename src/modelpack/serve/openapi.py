"""The server's OpenAPI 3.1 document, built from the served model's signature, and a docs page.

The docs page is plain HTML rendered here: no script, no CDN, so it works offline.
"""

from __future__ import annotations

import html
import json
from typing import Any

from .. import __version__
from .tensors import V2_TO_NUMPY, v2_datatype

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad input, naming the input and what was expected", 401: "Missing or invalid API key",
            404: "Unknown model or version", 413: "Body over --max-body-mb", 415: "Unsupported Content-Encoding",
            429: "Rate limited",
            503: "Queue full or not ready (Retry-After)", 504: "Timed out (--timeout-s)"}
    return {str(c): _json({"$ref": "#/components/schemas/Error"}, text[c]) for c in codes}


def spec(model: Any, auth: bool) -> dict[str, Any]:
    name = model.name if model else "model"
    inputs = [t.to_dict() for t in model.signature.inputs] if model else []
    tensor_in = {
        "type": "object", "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string", "enum": [t["name"] for t in inputs]} if inputs else {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": list(V2_TO_NUMPY)},
            "data": {"description": "Tensor values, nested or flat, row-major."},
            "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
        },
    }
    infer_request = {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
            "inputs": {"type": "array", "items": tensor_in},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {
                    "type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}},
        },
    }
    tensor_out = {"type": "object", "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                                                   "shape": {"type": "array", "items": {"type": "integer"}},
                                                   "data": {"type": "array"}}}
    infer_response = {"type": "object", "properties": {"model_name": {"type": "string"},
                                                       "model_version": {"type": "string"},
                                                       "id": {"type": "string"},
                                                       "outputs": {"type": "array", "items": tensor_out}}}
    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                  "example": name}
    version_param = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
                     "example": model.version if model else "1"}

    def op(summary: str, responses: dict[str, Any], body: dict[str, Any] | None = None,
           params: list[dict[str, Any]] | None = None, public: bool = False) -> dict[str, Any]:
        entry: dict[str, Any] = {"summary": summary, "responses": responses}
        if params:
            entry["parameters"] = params
        if body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        if public:
            entry["security"] = []
        return entry

    metadata = {"type": "object", "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"}, "inputs": {"type": "array"}, "outputs": {"type": "array"}}}
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": op("Liveness", {"200": _json({"type": "object"}, "Alive")}, public=True)},
        "/v2/health/ready": {"get": op("Readiness", {"200": _json({"type": "object"}, "Ready"),
                                                     "503": _json({"type": "object"}, "Not ready")}, public=True)},
        "/v2": {"get": op("Server metadata", {"200": _json({"type": "object"}, "Server metadata"), **_errors(401)})},
        "/metrics": {"get": op("Prometheus metrics", {"200": {"description": "Metrics in text format",
                                                               "content": {"text/plain": {"schema": {"type": "string"}}}},
                                                       **_errors(401)})},
    }
    for suffix, params in (("", [name_param]), ("/versions/{version}", [name_param, version_param])):
        base = f"/v2/models/{{name}}{suffix}"
        paths[base] = {"get": op("Model metadata (V2)", {"200": _json(metadata, "Metadata"), **_errors(401, 404)},
                                 params=params)}
        paths[f"{base}/ready"] = {"get": op("Model readiness (V2)", {"200": _json({"type": "object"}, "Ready"),
                                                                    **_errors(401, 404)}, params=params)}
        paths[f"{base}/infer"] = {"post": op(
            "Inference (KServe V2 / Open Inference Protocol; binary tensor extension supported)",
            {"200": _json(infer_response, "Outputs"), **_errors(400, 401, 404, 413, 415, 503, 504)},
            body=infer_request, params=params)}
        tfs = f"/v1/models/{{name}}{suffix}"
        paths[tfs] = {"get": op("Model status (TensorFlow Serving REST)", {"200": _json({"type": "object"}, "Status"),
                                                                           **_errors(401, 404)}, params=params)}
        paths[f"{tfs}/metadata"] = {"get": op("Model metadata (TensorFlow Serving REST): the signature_def",
                                              {"200": _json({"type": "object"}, "Metadata"), **_errors(401, 404)},
                                              params=params)}
        paths[f"{tfs}:predict"] = {"post": op(
            "Predict (TensorFlow Serving REST): 'instances' (rows) or 'inputs' (columns)",
            {"200": _json({"type": "object"}, "'predictions' or 'outputs'"), **_errors(400, 401, 404, 413, 415, 503, 504)},
            body={"type": "object", "properties": {"signature_name": {"type": "string"},
                                                   "instances": {"type": "array"}, "inputs": {}}},
            params=params)}
    paths["/predict"] = {"post": op(
        "Predict, the classic Flask-style route: {\"input_data\": [...]} -> {\"prediction\": [...]}",
        {"200": _json({"type": "object", "properties": {"prediction": {}}}, "Prediction"),
         **_errors(400, 401, 413, 415, 503, 504)},
        body={"type": "object", "required": ["input_data"], "properties": {"input_data": {}}})}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"modelpack serve: {name}", "version": __version__,
                 "description": "Inputs: " + ", ".join(f"{t['name']} {v2_datatype(t['dtype'])} {t['shape']}"
                                                        for t in inputs)},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR}},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


def docs_page(document: dict[str, Any]) -> bytes:
    rows = []
    for path, methods in document["paths"].items():
        for method, entry in methods.items():
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(entry['summary'])}</td></tr>")
    info = document["info"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(info['title'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}}td,th{{padding:.3rem .8rem;
text-align:left;border-bottom:1px solid #ddd}}code{{background:#f4f4f4;padding:0 .2rem}}</style></head><body>
<h1>{html.escape(info['title'])}</h1><p>{html.escape(info.get('description', ''))}</p>
<table><tr><th>method</th><th>path</th><th>what</th></tr>{''.join(rows)}</table>
<p>The full OpenAPI document: <a href="/openapi.json">/openapi.json</a>.</p>
<pre>{html.escape(json.dumps(document['components'], indent=2))}</pre></body></html>"""
    return page.encode()
