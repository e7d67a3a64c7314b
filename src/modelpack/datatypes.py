"""Tensor datatypes by their Open Inference Protocol (KServe V2) names, and numpy's: one table for the server,
the registries and the OpenAPI document."""

from __future__ import annotations

from typing import Any

import numpy as np

V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
NUMPY_TO_V2: dict[str, str] = {dtype.name: v2 for v2, dtype in V2_TO_NUMPY.items()}
_V2_OF_DTYPE: dict[Any, str] = {dtype: v2 for v2, dtype in V2_TO_NUMPY.items()}


def v2_datatype(numpy_dtype: np.dtype | str) -> str:
    """The V2 datatype of a numpy dtype (or its name); BYTES for anything else."""
    # By dtype first: numpy's dtype.name is slow enough to show in a tiny model's serving profile.
    return _V2_OF_DTYPE.get(numpy_dtype) or NUMPY_TO_V2.get(np.dtype(numpy_dtype).name, "BYTES")
