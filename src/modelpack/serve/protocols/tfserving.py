"""TensorFlow Serving's REST API: model status, metadata (the signature_def) and predict (rows or columns)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import RequestError
from ..asgi import Request, Response, json_response, read_json
from ..core import Core
from ..model import ServedModel
from ..tensors import clip
from .v2 import model_of

DT = {"float32": "FLOAT", "float64": "DOUBLE", "float16": "HALF", "bool": "BOOL"}


async def status(core: Core, request: Request) -> Response:
    """GetModelStatus: the version asked for (by number or label), or every loaded version of the model."""
    model = await model_of(core, request)
    named = request.params.get("version") or request.params.get("label")
    versions = [model.version] if named else core.repository.versions(model.name)
    return json_response(200, {"model_version_status": [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}} for v in versions]})


async def metadata(core: Core, request: Request) -> Response:
    """TF Serving's GetModelMetadata: the serving_default signature_def, in its JSON form."""
    model = await model_of(core, request)

    def tensors(specs: Any) -> dict[str, Any]:
        return {t.name: {"dtype": "DT_" + DT.get(t.dtype, t.dtype.upper()),
                         "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in t.shape],
                                          "unknown_rank": False},
                         "name": t.name} for t in specs}

    signature = {"inputs": tensors(model.signature.inputs), "outputs": tensors(model.signature.outputs),
                 "method_name": "tensorflow/serving/predict"}
    return json_response(200, {"model_spec": {"name": model.name, "signature_name": "", "version": model.version},
                               "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}}})


async def predict(core: Core, request: Request) -> Response:
    model = await model_of(core, request)
    payload = await read_json(request.body)
    if not isinstance(payload, dict):
        raise RequestError("a predict request is a JSON object with 'instances' or 'inputs'.")
    signature_name = payload.get("signature_name", "serving_default")
    if signature_name != "serving_default":
        raise RequestError(f"unknown signature_name {clip(signature_name)}; this model has 'serving_default'.")
    if "instances" in payload and "inputs" in payload:
        raise RequestError("a predict request has either 'instances' (row format) or 'inputs' (columnar "
                           "format), not both.")
    if "instances" in payload:
        return await _rows(core, model, payload["instances"])
    if "inputs" in payload:
        return await _columns(core, model, payload["inputs"])
    raise RequestError("a predict request needs 'instances' (row format) or 'inputs' (columnar format).")


async def _rows(core: Core, model: ServedModel, instances: Any) -> Response:
    names = model.signature.input_names
    if not isinstance(instances, list) or not instances:
        raise RequestError("'instances' must be a non-empty list, one entry per example.")
    model.check_rows(instances)
    if all(isinstance(i, dict) for i in instances):
        feeds = {n: model.coerce(n, [_field(i, n) for i in instances]) for n in names}
    elif len(names) == 1:
        feeds = {names[0]: model.coerce(names[0], instances)}
    else:
        raise RequestError(f"this model takes several inputs ({', '.join(names)}): "
                           "each instance must be an object keyed by input name.")
    outputs = await core.infer(model, feeds)
    out_names = model.signature.output_names
    if len(out_names) == 1:
        return json_response(200, {"predictions": outputs[out_names[0]]})
    rows = len(next(iter(outputs.values())))
    return json_response(200, {"predictions": [{n: outputs[n][i] for n in out_names} for i in range(rows)]})


async def _columns(core: Core, model: ServedModel, inputs: Any) -> Response:
    outputs = await core.infer(model, model.coerce_inputs(inputs, "inputs"))
    return json_response(200, {"outputs": by_name(model, outputs)})


def by_name(model: ServedModel, outputs: dict[str, np.ndarray]) -> Any:
    """The one output, or an object of all of them by name."""
    out_names = model.signature.output_names
    return outputs[out_names[0]] if len(out_names) == 1 else {n: outputs[n] for n in out_names}


def _field(instance: dict[str, Any], name: str) -> Any:
    if name not in instance:
        raise RequestError(f"an instance has no input '{name}'.")
    return instance[name]
