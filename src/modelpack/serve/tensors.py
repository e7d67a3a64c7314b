"""KServe V2 / Open Inference Protocol tensors: JSON data (nested or flat) and the binary data extension."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import RequestError

V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
NUMPY_TO_V2: dict[str, str] = {dtype.name: v2 for v2, dtype in V2_TO_NUMPY.items()}


def v2_datatype(numpy_dtype: str) -> str:
    return NUMPY_TO_V2.get(np.dtype(numpy_dtype).name, "BYTES")


def _shape(tensor: dict[str, Any], name: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise RequestError(f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}.")
    return tuple(shape)


def decode(tensor: Any, binary: memoryview | None, offset: int) -> tuple[str, np.ndarray, int]:
    """One request input -> (name, array, new binary offset). Errors name the input and what was expected."""
    if not isinstance(tensor, dict):
        raise RequestError("each entry of 'inputs' must be an object with name, shape, datatype and data.")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError("an input has no 'name'.")
    shape = _shape(tensor, name)
    datatype = tensor.get("datatype")
    if datatype not in V2_TO_NUMPY:
        raise RequestError(f"input '{name}': unsupported datatype {datatype!r}; expected one of "
                           f"{', '.join(V2_TO_NUMPY)}.")
    dtype = V2_TO_NUMPY[datatype]
    count = math.prod(shape)
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if binary is None:
            raise RequestError(f"input '{name}': binary_data_size given but the request has no binary part "
                               "(set Inference-Header-Content-Length).")
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise RequestError(f"input '{name}': binary_data_size {size!r} runs past the end of the request body.")
        if size != count * dtype.itemsize:
            raise RequestError(f"input '{name}': {size} bytes of binary data for shape {list(shape)} {datatype}; "
                               f"expected {count * dtype.itemsize}.")
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
        return name, array, offset + size
    if "data" not in tensor:
        raise RequestError(f"input '{name}': missing 'data' (or parameters.binary_data_size for binary data).")
    try:
        array = np.asarray(tensor["data"], dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RequestError(f"input '{name}': data cannot be read as {datatype} ({exc}).") from None
    if array.size != count:
        raise RequestError(f"input '{name}': {array.size} elements of data for shape {list(shape)}; expected {count}.")
    return name, array.reshape(shape), offset


def encode(name: str, array: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """One output -> (JSON part, binary bytes or None)."""
    array = np.ascontiguousarray(array).reshape(array.shape)  # ascontiguousarray alone turns a scalar into [1]
    meta: dict[str, Any] = {"name": name, "datatype": v2_datatype(array.dtype.name), "shape": list(array.shape)}
    if binary:
        raw = array.tobytes()
        meta["parameters"] = {"binary_data_size": len(raw)}
        return meta, raw
    meta["data"] = array.ravel()
    return meta, None
