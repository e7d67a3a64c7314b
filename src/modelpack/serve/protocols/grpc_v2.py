"""KServe V2 / Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), on `--grpc-port`.

The messages are built at first use from the protocol's field numbers, in a descriptor pool of their own: no
generated code to keep in step with protobuf, and no clash with a client library (tritonclient) that registers
the same names in the default pool. The server runs on the HTTP server's event loop and calls the same
inference path: the same model checks, dynamic batcher, limits, API keys, scopes, rate limits and metrics.

The wire is modelpack's own HTTP/2 transport (`serve.http2`), which checks a call's key before reading its
message and holds its bytes in the budget HTTP bodies share. Errors map to gRPC codes as the HTTP statuses they
stand for: 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND, 413 and 429
RESOURCE_EXHAUSTED, 415 UNIMPLEMENTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import InputError, RequestError
from ..guard import ADMIN, INFER, MODEL_ADMIN, MODEL_METADATA, PUBLIC, SERVER_METADATA, Access, Caller
from ..http2 import Call, Http2Server, Limits, Method, server_ssl_context
from ..lifecycle import LIFE, RequestLife
from ..repository import HELD, release_held
from ..tensors import MAX_DIM, MAX_RANK, V2_TO_NUMPY, clip, v2_datatype

# The fields of the proto's ModelIndex; our JSON index rows may carry more (memory_mb).
ROW_FIELDS = ("name", "version", "state", "reason")

if TYPE_CHECKING:
    from ..core import Core
    from ..model import ServedModel

log = logging.getLogger("modelpack.serve")
SERVICE = "inference.GRPCInferenceService"

# Field numbers of the KServe V2 gRPC protocol (grpc_predict_v2.proto), which Triton's service shares.
# (name, type, number, repeated); a type starting with "." is a message; "map:.Msg" a map<string, Msg>.
_PARAM_MAP = "map:.inference.InferParameter"
_REPO_PARAM_MAP = "map:.inference.ModelRepositoryParameter"
_MESSAGES: dict[str, list[tuple[str, str, int, bool]]] = {
    "ServerLiveRequest": [], "ServerLiveResponse": [("live", "bool", 1, False)],
    "ServerReadyRequest": [], "ServerReadyResponse": [("ready", "bool", 1, False)],
    "ModelReadyRequest": [("name", "string", 1, False), ("version", "string", 2, False)],
    "ModelReadyResponse": [("ready", "bool", 1, False)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", "string", 1, False), ("version", "string", 2, False),
                               ("extensions", "string", 3, True)],
    "ModelMetadataRequest": [("name", "string", 1, False), ("version", "string", 2, False)],
    "TensorMetadata": [("name", "string", 1, False), ("datatype", "string", 2, False), ("shape", "int64", 3, True)],
    "ModelMetadataResponse": [("name", "string", 1, False), ("versions", "string", 2, True),
                              ("platform", "string", 3, False),
                              ("inputs", ".inference.ModelMetadataResponse.TensorMetadata", 4, True),
                              ("outputs", ".inference.ModelMetadataResponse.TensorMetadata", 5, True)],
    "InferParameter": [("bool_param", "bool", 1, False), ("int64_param", "int64", 2, False),
                       ("string_param", "string", 3, False), ("double_param", "double", 4, False),
                       ("uint64_param", "uint64", 5, False)],
    "InferTensorContents": [("bool_contents", "bool", 1, True), ("int_contents", "int32", 2, True),
                            ("int64_contents", "int64", 3, True), ("uint_contents", "uint32", 4, True),
                            ("uint64_contents", "uint64", 5, True), ("fp32_contents", "float", 6, True),
                            ("fp64_contents", "double", 7, True), ("bytes_contents", "bytes", 8, True)],
    "InferInputTensor": [("name", "string", 1, False), ("datatype", "string", 2, False),
                         ("shape", "int64", 3, True), ("parameters", _PARAM_MAP, 4, False),
                         ("contents", ".inference.InferTensorContents", 5, False)],
    "InferRequestedOutputTensor": [("name", "string", 1, False), ("parameters", _PARAM_MAP, 2, False)],
    "ModelInferRequest": [("model_name", "string", 1, False), ("model_version", "string", 2, False),
                          ("id", "string", 3, False), ("parameters", _PARAM_MAP, 4, False),
                          ("inputs", ".inference.ModelInferRequest.InferInputTensor", 5, True),
                          ("outputs", ".inference.ModelInferRequest.InferRequestedOutputTensor", 6, True),
                          ("raw_input_contents", "bytes", 7, True)],
    "InferOutputTensor": [("name", "string", 1, False), ("datatype", "string", 2, False),
                          ("shape", "int64", 3, True), ("parameters", _PARAM_MAP, 4, False),
                          ("contents", ".inference.InferTensorContents", 5, False)],
    "ModelInferResponse": [("model_name", "string", 1, False), ("model_version", "string", 2, False),
                           ("id", "string", 3, False), ("parameters", _PARAM_MAP, 4, False),
                           ("outputs", ".inference.ModelInferResponse.InferOutputTensor", 5, True),
                           ("raw_output_contents", "bytes", 6, True)],
    # Triton's model repository extension (grpc_service.proto).
    "ModelRepositoryParameter": [("bool_param", "bool", 1, False), ("int64_param", "int64", 2, False),
                                 ("string_param", "string", 3, False), ("bytes_param", "bytes", 4, False)],
    "RepositoryIndexRequest": [("repository_name", "string", 1, False), ("ready", "bool", 2, False)],
    "ModelIndex": [("name", "string", 1, False), ("version", "string", 2, False), ("state", "string", 3, False),
                   ("reason", "string", 4, False)],
    "RepositoryIndexResponse": [("models", ".inference.RepositoryIndexResponse.ModelIndex", 1, True)],
    "RepositoryModelLoadRequest": [("repository_name", "string", 1, False), ("model_name", "string", 2, False),
                                   ("parameters", _REPO_PARAM_MAP, 3, False)],
    "RepositoryModelLoadResponse": [],
    "RepositoryModelUnloadRequest": [("repository_name", "string", 1, False), ("model_name", "string", 2, False),
                                     ("parameters", _REPO_PARAM_MAP, 3, False)],
    "RepositoryModelUnloadResponse": [],
}
_NESTED = {"TensorMetadata": "ModelMetadataResponse", "InferInputTensor": "ModelInferRequest",
           "InferRequestedOutputTensor": "ModelInferRequest", "InferOutputTensor": "ModelInferResponse",
           "ModelIndex": "RepositoryIndexResponse"}
_ONEOF = {"InferParameter": "parameter_choice", "ModelRepositoryParameter": "parameter_choice"}

# The typed field of InferTensorContents that holds each datatype.
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                  "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                  "FP64": "fp64_contents"}


@lru_cache(maxsize=1)
def messages() -> SimpleNamespace:
    """The protocol's message classes, by name (`messages().ModelInferRequest`)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    types = descriptor_pb2.FieldDescriptorProto
    scalar = {"bool": types.TYPE_BOOL, "string": types.TYPE_STRING, "int64": types.TYPE_INT64,
              "int32": types.TYPE_INT32, "uint32": types.TYPE_UINT32, "uint64": types.TYPE_UINT64,
              "float": types.TYPE_FLOAT, "double": types.TYPE_DOUBLE, "bytes": types.TYPE_BYTES}
    file = descriptor_pb2.FileDescriptorProto(name="modelpack/grpc_predict_v2.proto", package="inference",
                                              syntax="proto3")
    protos: dict[str, Any] = {name: file.message_type.add(name=name) for name in _MESSAGES if name not in _NESTED}
    for name, parent in _NESTED.items():
        protos[name] = protos[parent].nested_type.add(name=name)
    for name, fields in _MESSAGES.items():
        proto = protos[name]
        oneof = _ONEOF.get(name)
        if oneof:
            proto.oneof_decl.add(name=oneof)
        for field_name, kind, number, repeated in fields:
            field = proto.field.add(name=field_name, number=number,
                                    label=types.LABEL_REPEATED if repeated else types.LABEL_OPTIONAL)
            if oneof:
                field.oneof_index = 0
            if kind.startswith("map:"):
                entry = proto.nested_type.add(name=field_name.title().replace("_", "") + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, label=types.LABEL_OPTIONAL, type=types.TYPE_STRING)
                entry.field.add(name="value", number=2, label=types.LABEL_OPTIONAL, type=types.TYPE_MESSAGE,
                                type_name=kind[4:])
                field.label = types.LABEL_REPEATED
                field.type = types.TYPE_MESSAGE
                field.type_name = f".inference.{_path(name)}.{entry.name}"
            elif kind.startswith("."):
                field.type = types.TYPE_MESSAGE
                field.type_name = kind
            else:
                field.type = scalar[kind]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return SimpleNamespace(**{name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{_path(name)}"))
                              for name in _MESSAGES})


def _path(name: str) -> str:
    parent = _NESTED.get(name)
    return f"{parent}.{name}" if parent else name


_LITTLE = {v2: dtype.newbyteorder("<") for v2, dtype in V2_TO_NUMPY.items()}


def _array(tensor: Any, raw: bytes | None) -> np.ndarray:
    """One request input as an array: from its raw bytes, or from the typed contents of its datatype."""
    name = tensor.name
    datatype = tensor.datatype
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise RequestError(f"input {clip(name)}: datatype {clip(datatype)} is not one of "
                           f"{', '.join(V2_TO_NUMPY)}.")
    shape = tuple(tensor.shape)
    if len(shape) > MAX_RANK or any(d < 0 or d > MAX_DIM for d in shape):
        raise RequestError(f"input {clip(name)}: shape {clip(list(shape))} must have at most {MAX_RANK} "
                           f"dimensions, each from 0 to {MAX_DIM}.")
    count = 1
    for d in shape:
        count *= d
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise RequestError(f"input {clip(name)}: raw_input_contents holds {len(raw)} bytes; shape "
                               f"{list(shape)} of {datatype} needs {count * dtype.itemsize}.")
        return np.frombuffer(raw, dtype=_LITTLE[datatype]).astype(dtype, copy=False).reshape(shape)
    if datatype not in CONTENTS_FIELD:  # FP16
        raise RequestError(f"input {clip(name)}: {datatype} travels in raw_input_contents (the protocol has no "
                           "typed field for it).")
    values = getattr(tensor.contents, CONTENTS_FIELD[datatype])
    if len(values) != count:
        raise RequestError(f"input {clip(name)}: contents.{CONTENTS_FIELD[datatype]} holds {len(values)} values; "
                           f"shape {list(shape)} needs {count}.")
    array = np.asarray(values, dtype=np.float64 if datatype.startswith("FP") else None)
    if datatype != "BOOL" and not datatype.startswith("FP"):
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise RequestError(f"input {clip(name)}: a value is out of range for {datatype}.")
    return array.astype(dtype).reshape(shape)


class GrpcV2:
    """The service's methods over the inference core, and what the HTTP/2 transport asks of a service:
    the guard (keys, scopes, rate limits), the in-flight budget and the metrics, the same ones HTTP uses."""

    service_name = SERVICE

    def __init__(self, core: Core) -> None:
        self.core = core
        self.m = m = messages()
        self.guard = guard = core.guard
        self.budget = guard.budget
        self.max_message_bytes = int(core.config.max_body_mb * 1024 * 1024)
        self.max_message_mb = core.config.max_body_mb
        # The access rules of the HTTP routes they mirror, from the guard's one table.
        table: list[tuple[str, Access, Any, Callable[[Any, Call], Awaitable[Any]]]] = [
            ("ServerLive", PUBLIC, m.ServerLiveRequest, self.server_live),
            ("ServerReady", PUBLIC, m.ServerReadyRequest, self.server_ready),
            ("ModelReady", MODEL_METADATA, m.ModelReadyRequest, self.model_ready),
            ("ServerMetadata", SERVER_METADATA, m.ServerMetadataRequest, self.server_metadata),
            ("ModelMetadata", MODEL_METADATA, m.ModelMetadataRequest, self.model_metadata),
            ("ModelInfer", INFER, m.ModelInferRequest, self.model_infer),
            ("RepositoryIndex", ADMIN, m.RepositoryIndexRequest, self.repository_index),
            ("RepositoryModelLoad", MODEL_ADMIN, m.RepositoryModelLoadRequest, self.repository_load),
            ("RepositoryModelUnload", MODEL_ADMIN, m.RepositoryModelUnloadRequest, self.repository_unload),
        ]
        self.access = {name: access for name, access, _, _ in table}
        self.methods = {f"/{SERVICE}/{name}": Method(name, access.scope, request.FromString,
                                                     _serialized(fn, name, core))
                        for name, access, request, fn in table}

    def admit(self, authorization: str | None, scope: str, target: str) -> str | None:
        """The transport's check before a call's message is read: the guard's, with the method's access rule."""
        api_key = self.guard.admit(authorization, self.access[target.rpartition("/")[2]], target)
        return api_key.name if api_key else None

    def observe(self, route: str, status: int, seconds: float, key: str | None) -> None:
        self.guard.observe(route, status, seconds, key, USED.get() or self.guard.refused_labels())

    def _caller(self, call: Call, method: str) -> Caller:
        return Caller(self.guard.key_named(call.key), self.access[method])

    async def server_live(self, request: Any, call: Call) -> Any:
        return self.m.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, call: Call) -> Any:
        return self.m.ServerReadyResponse(ready=self.core.ready)

    async def server_metadata(self, request: Any, call: Call) -> Any:
        return self.m.ServerMetadataResponse(**self.core.server_metadata())

    async def _model(self, call: Call, method: str, name: str, version: str) -> ServedModel:
        return await self.core.model_for(self._caller(call, method), name, version or None)

    async def model_ready(self, request: Any, call: Call) -> Any:
        await self._model(call, "ModelReady", request.name, request.version)
        return self.m.ModelReadyResponse(ready=self.core.ready)

    async def model_metadata(self, request: Any, call: Call) -> Any:
        model = await self._model(call, "ModelMetadata", request.name, request.version)
        meta = {**model.metadata(), "versions": self.core.repository.versions(model.name)}
        tensor = self.m.TensorMetadata
        return self.m.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]])

    async def model_infer(self, request: Any, call: Call) -> Any:
        if len(request.id) > 256:  # echoed in the answer, so capped as on HTTP
            raise RequestError(f"'id' must be at most 256 characters, got {len(request.id)}.")
        model = await self._model(call, "ModelInfer", request.model_name, request.model_version)
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise RequestError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give "
                               "one per input, or none and typed contents.")
        feeds: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(request.inputs):
            if tensor.name in feeds:
                raise RequestError(f"input {clip(tensor.name)} appears twice.")
            model.check_declared(tensor.name, list(tensor.shape))
            feeds[tensor.name] = _array(tensor, raw[index] if raw else None)
        names = model.signature.output_names
        wanted = [o.name for o in request.outputs] or names
        for name in wanted:
            if name not in names:
                raise RequestError(f"unknown output {clip(name)}; this model has {', '.join(names)}.")
        outputs = await self.core.infer(model, feeds, eager=True, timeout_s=call.timeout_s)
        response = self.m.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        for name in wanted:
            array = outputs[name]
            if array.dtype.byteorder == ">":  # the protocol's raw contents are little-endian
                array = array.astype(array.dtype.newbyteorder("<"))
            response.outputs.add(name=name, datatype=v2_datatype(array.dtype),
                                 shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response


    async def repository_index(self, request: Any, call: Call) -> Any:
        rows = self.core.repository.index(ready_only=request.ready)
        return self.m.RepositoryIndexResponse(models=[self.m.ModelIndex(**{k: row[k] for k in ROW_FIELDS}) for row in rows])

    async def repository_load(self, request: Any, call: Call) -> Any:
        if "config" in request.parameters or any(k.startswith("file:") for k in request.parameters):
            raise RequestError("loading a model from a config or files in the request is not supported; put the "
                               "version in the repository and load it by name.")
        await self.core.load(self._caller(call, "RepositoryModelLoad"), request.model_name)
        return self.m.RepositoryModelLoadResponse()

    async def repository_unload(self, request: Any, call: Call) -> Any:
        await self.core.unload(self._caller(call, "RepositoryModelUnload"), request.model_name)
        return self.m.RepositoryModelUnloadResponse()


# The metric labels of the version a call used, read when the transport counts the call (in the call's task).
USED: contextvars.ContextVar[str | None] = contextvars.ContextVar("modelpack_grpc_used", default=None)


def _serialized(fn: Callable[[Any, Call], Awaitable[Any]], name: str,
                core: Core) -> Callable[[Any, Call], Awaitable[bytes]]:
    async def call(request: Any, info: Call) -> bytes:
        token = HELD.set([])  # the versions the call resolves, held until its answer is serialized
        USED.set(None)
        core.guard.start_call()
        tracer = core.tracer
        life, status = None, 200
        if tracer is not None:  # the batcher stamps the call's stages on it, for its spans
            life = RequestLife(time.perf_counter())
            life_token = LIFE.set(life)
        try:
            return bytes((await fn(request, info)).SerializeToString())
        except RequestError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:  # the client cancelled the call
            status = 499
            raise
        except Exception:
            status = 500
            raise
        finally:
            used = release_held(token)
            if used is not None:
                USED.set(used.labels)
            if life is not None:
                LIFE.reset(life_token)
                if tracer is not None and used is not None:  # after the answer is written (the next turn)
                    asyncio.get_running_loop().call_soon(
                        tracer.record, life, f"grpc {name}", info.traceparent, used.model.name, used.model.version,
                        status, time.perf_counter())

    return call


async def start(core: Core, host: str, port: int) -> Http2Server:
    """The gRPC server on `host:port`, on the running event loop; TLS when the HTTP server has it."""
    config = core.config
    limits = Limits(max_connections=config.max_connections, max_streams=config.max_streams,
                    header_timeout_s=config.header_timeout_s, body_timeout_s=config.body_timeout_s,
                    write_timeout_s=config.write_timeout_s, max_header_bytes=int(config.max_header_kb * 1024))
    context = None
    if config.ssl_certfile and config.ssl_keyfile:
        context = server_ssl_context(str(config.ssl_certfile), str(config.ssl_keyfile))
    server = Http2Server(GrpcV2(core), limits)
    try:
        await server.start(host, port, context)
    except OSError as exc:
        raise InputError(f"--grpc-port {port}: cannot bind {host}:{port} ({exc.strerror}).") from None
    log.info("KServe V2 gRPC on %s", server.address)
    return server
