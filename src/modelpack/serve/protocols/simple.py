"""The classic Flask-style route of the seed: `POST /predict {"input_data": [...]}` -> `{"prediction": [...]}`."""

from __future__ import annotations

from ...errors import RequestError
from ..asgi import Request, Response, json_response, read_json
from ..core import Core
from .tfserving import by_name


async def predict(core: Core, request: Request) -> Response:
    model = await core.model_for(request.caller, None, None)
    payload = await read_json(request.body)
    if not isinstance(payload, dict) or "input_data" not in payload:
        raise RequestError("expected a JSON object {\"input_data\": [...]}.")
    # Unknown keys are ignored here, as the seed's Flask route did.
    feeds = model.coerce_inputs(payload["input_data"], "input_data", reject_unknown=False)
    for spec in model.signature.inputs:  # one example without its batch dimension: add it
        if feeds[spec.name].ndim == len(spec.shape) - 1:
            feeds[spec.name] = feeds[spec.name][None, ...]
    outputs = await core.infer(model, feeds)
    return json_response(200, {"prediction": by_name(model, outputs)})
