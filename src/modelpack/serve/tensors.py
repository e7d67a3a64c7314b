"""KServe V2 / Open Inference Protocol tensors: JSON data (nested or flat) and the binary data extension."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# The datatype table lives below the server (discovery uses it too); re-exported for the protocols.
from ..datatypes import NUMPY_TO_V2 as NUMPY_TO_V2
from ..datatypes import V2_TO_NUMPY as V2_TO_NUMPY
from ..datatypes import v2_datatype as v2_datatype
from ..errors import RequestError

MAX_RANK = 32  # numpy allows 64 dimensions; no model input has more than a handful
MAX_DIM = 2**31 - 1
ECHO = 64  # characters of a client's value an error message repeats


def clip(value: Any, limit: int = ECHO) -> str:
    """A client's value as an error message may repeat it: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _shape(tensor: dict[str, Any], name: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM
                                              for d in shape):
        raise RequestError(f"input '{name}': 'shape' must be a list of integers from 0 to {MAX_DIM}, "
                           f"got {clip(shape)}.")
    if len(shape) > MAX_RANK:
        raise RequestError(f"input '{name}': 'shape' has {len(shape)} dimensions; at most {MAX_RANK} are accepted.")
    return tuple(shape)


def decode(tensor: Any, binary: memoryview | None, offset: int) -> tuple[str, np.ndarray, int]:
    """One request input -> (name, array, new binary offset). Errors name the input and what was expected."""
    if not isinstance(tensor, dict):
        raise RequestError("each entry of 'inputs' must be an object with name, shape, datatype and data.")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError("an input has no 'name' (a non-empty string).")
    if len(name) > 256:
        raise RequestError(f"an input name is {len(name)} characters long; input names are short strings.")
    shape = _shape(tensor, name)
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        raise RequestError(f"input '{name}': unsupported datatype {clip(datatype)}; expected one of "
                           f"{', '.join(V2_TO_NUMPY)}.")
    dtype = V2_TO_NUMPY[datatype]
    count = math.prod(shape)
    params = tensor.get("parameters", {})
    if not isinstance(params, dict):
        raise RequestError(f"input '{name}': 'parameters' must be an object, got {clip(params)}.")
    size = params.get("binary_data_size")
    if size is not None:
        if binary is None:
            raise RequestError(f"input '{name}': binary_data_size given but the request has no binary part "
                               "(set Inference-Header-Content-Length).")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise RequestError(f"input '{name}': binary_data_size {clip(size)} is not a byte count within the "
                               "request body.")
        if size != count * dtype.itemsize:
            raise RequestError(f"input '{name}': {size} bytes of binary data for shape {list(shape)} {datatype}; "
                               f"expected {count * dtype.itemsize}.")
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
        return name, array, offset + size
    if "data" not in tensor:
        raise RequestError(f"input '{name}': missing 'data' (or parameters.binary_data_size for binary data).")
    array = json_array(tensor["data"], dtype, f"input '{name}'", datatype)
    if array.size != count:
        raise RequestError(f"input '{name}': {array.size} elements of data for shape {list(shape)}; expected {count}.")
    return name, array.reshape(shape), offset


def json_array(data: Any, dtype: np.dtype, where: str, datatype: str | None = None) -> np.ndarray:
    """JSON values as an array of `dtype`: numbers (and booleans for BOOL) only, in range.

    numpy alone would read null as NaN, "1.5" as 1.5 and 1e39 as inf for FP32; a client sending those
    has made a mistake, and gets told so."""
    label = datatype or dtype.name
    try:
        raw = np.asarray(data)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise RequestError(f"{where}: data is not a rectangular array of numbers ({clip(str(exc))}).") from None
    if dtype.kind in "iu" and raw.dtype.kind in "fO":
        # Integers beyond int64 (UINT64 data) make numpy fall back to float or object: read them exactly.
        exact = np.asarray(data, dtype=object)
        if exact.size and all(type(v) is int for v in exact.ravel()):
            info = np.iinfo(dtype)
            if min(exact.ravel()) < info.min or max(exact.ravel()) > info.max:
                raise RequestError(f"{where}: a value is out of range for {label}.")
            return np.asarray(exact.astype(dtype))
    if raw.dtype.kind not in "biuf":
        kind = {"O": "nulls, nested objects or ragged lists", "U": "strings", "S": "strings"}.get(raw.dtype.kind,
                                                                                                raw.dtype.name)
        raise RequestError(f"{where}: data holds {kind}; {label} data must be numbers"
                           f"{' or booleans' if dtype.kind == 'b' else ''}.")
    if raw.dtype.kind == "b" and dtype.kind != "b":
        raise RequestError(f"{where}: data holds booleans; {label} data must be numbers.")
    if raw.dtype.kind == "f" and dtype.kind in "iub":
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise RequestError(f"{where}: data holds fractional or non-finite numbers; {label} data must be integers.")
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = raw.astype(dtype)
    except (FloatingPointError, OverflowError, ValueError):
        raise RequestError(f"{where}: a value is out of range for {label}.") from None
    if dtype.kind in "iu" and raw.size and (raw.min() < np.iinfo(dtype).min or raw.max() > np.iinfo(dtype).max):
        raise RequestError(f"{where}: a value is out of range for {label}.")
    if dtype.kind == "f" and raw.dtype.kind in "iuf" and raw.size and not np.all(np.isfinite(array)):
        raise RequestError(f"{where}: a value is out of range for {label} (it would become inf).")
    return array


def encode(name: str, array: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """One output -> (JSON part, binary bytes or None)."""
    array = np.ascontiguousarray(array).reshape(array.shape)  # ascontiguousarray alone turns a scalar into [1]
    meta: dict[str, Any] = {"name": name, "datatype": v2_datatype(array.dtype), "shape": list(array.shape)}
    if binary:
        raw = array.tobytes()
        meta["parameters"] = {"binary_data_size": len(raw)}
        return meta, raw
    meta["data"] = array.ravel()
    return meta, None
