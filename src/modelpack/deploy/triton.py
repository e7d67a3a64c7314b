"""The `triton` target: a Triton model repository for the package's ONNX artifact."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..formats import Repr
from ..package import Package
from . import DeployOptions

# ONNX TensorProto element types -> Triton data types.
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
                11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}


def integer_version(pkg: Package, options: DeployOptions, target: str) -> str:
    version = options.model_version or pkg.version
    if not version.isdigit() or int(version) < 1:
        raise UsageError(f"{target} versions are positive integers and this package is version '{pkg.version}'; "
                         f"pass --model-version N.")
    return str(int(version))


def _tensors(values: Any, batched: bool) -> list[dict[str, Any]]:
    found = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if batched:
            dims = dims[1:]
        dtype = TRITON_TYPES.get(tensor.elem_type)
        if dtype is None:
            raise UsageError(f"tensor '{value.name}': ONNX element type {tensor.elem_type} has no Triton data type.")
        found.append({"name": value.name, "data_type": dtype, "dims": dims or [1]})
    return found


def config(name: str, model_path: Path, max_batch_size: int) -> str:
    """config.pbtxt in protobuf text format, from the ONNX graph's own tensor names, types and shapes."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    first_dims = [v.type.tensor_type.shape.dim[0] if v.type.tensor_type.shape.dim else None
                  for v in list(inputs) + list(graph.output)]
    batched = all(d is not None and not d.HasField("dim_value") for d in first_dims)
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size if batched else 0}"]
    for kind, tensors in (("input", _tensors(inputs, batched)), ("output", _tensors(graph.output, batched))):
        for t in tensors:
            lines += [f"{kind} {{", f'  name: "{t["name"]}"', f"  data_type: {t['data_type']}",
                      f"  dims: [ {', '.join(str(d) for d in t['dims'])} ]", "}"]
    if batched:
        lines += ["dynamic_batching {", "  max_queue_delay_microseconds: 100", "}"]
    lines += ["instance_group [", "  {", "    count: 1", "    kind: KIND_CPU", "  }", "]"]
    return "\n".join(lines) + "\n"


def write(pkg: Package, out: Path, options: DeployOptions, final: Path) -> list[str]:
    if Repr.ONNX not in pkg.formats():
        raise UsageError(f"{pkg.source}: Triton's onnxruntime backend needs an ONNX artifact; rebuild with "
                         f"'modelpack optimize ... export --format onnx'.")
    version = integer_version(pkg, options, "Triton")
    model = pkg.path_of(pkg.artifact(Repr.ONNX))
    (out / pkg.name / version).mkdir(parents=True)
    shutil.copyfile(model, out / pkg.name / version / "model.onnx")
    (out / pkg.name / "config.pbtxt").write_text(config(pkg.name, model, options.max_batch_size), encoding="utf-8")
    return [f"docker run --rm -p 8000:8000 -p 8001:8001 -v \"$(realpath {final}):/models\" "
            f"nvcr.io/nvidia/tritonserver:24.10-py3 tritonserver --model-repository=/models"]
