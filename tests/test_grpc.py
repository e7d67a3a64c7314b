"""KServe V2 gRPC (`serve --grpc-port`), over a real socket, with the unmodified tritonclient.grpc client."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from servers import Process, free_port
from tritonclient.utils import InferenceServerException

from modelpack.serve.protocols.grpc_v2 import messages

X = np.random.default_rng(5).standard_normal((3, 16)).astype("float32")
KEYS = "app:app-key-000001:infer\nviewer:viewer-key-0002:metadata\nops:ops-key-000003:admin\n"


def _start(package: Path, *args: str) -> tuple[Process, int]:
    port = free_port()
    return Process(package, "--grpc-port", str(port), *args), port


@pytest.fixture(scope="module")
def server(mlp_package: Path):
    proc, port = _start(mlp_package)
    yield proc, triton.InferenceServerClient(f"127.0.0.1:{port}"), port
    proc.stop()


def _expected(package: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(package / "model.onnx")).run(None, {"features": x})[0]


def _input(x: np.ndarray, name: str = "features", datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def test_tritonclient_health_metadata_and_infer(server, mlp_package: Path) -> None:
    proc, client, _ = server
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1") and not _ready_or_error(client, "mlp", "7")
    assert client.get_server_metadata().name == "modelpack"
    meta = client.get_model_metadata("mlp")
    assert meta.platform == "onnxruntime_onnx" and meta.versions == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("features", "FP32", [-1, 16])]
    result = client.infer("mlp", [_input(X)], outputs=[triton.InferRequestedOutput("logits")], request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("logits"), _expected(mlp_package, X), rtol=1e-5, atol=1e-6)
    assert result.get_response().id == "r-1" and result.get_response().model_version == "1"
    # the same batcher and metrics as HTTP
    assert proc.metric("modelpack_requests_total") >= 1
    assert 'route="grpc ModelInfer",status="200"' in _metrics(proc)


def _ready_or_error(client: triton.InferenceServerClient, name: str, version: str) -> bool:
    try:
        return bool(client.is_model_ready(name, version))
    except InferenceServerException:
        return False


def _metrics(proc: Process) -> str:
    import httpx

    return httpx.get(f"{proc.url}/metrics").text


def test_typed_contents_work_like_raw_contents(server, mlp_package: Path) -> None:
    """A client that sends typed `contents` (fp32_contents) instead of raw bytes gets the same answer."""
    _, _, port = server
    m = messages()
    request = m.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[3, 16])
    tensor.contents.fp32_contents.extend(X.ravel().tolist())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=lambda r: r.SerializeToString(),
                                   response_deserializer=m.ModelInferResponse.FromString)
        response = call(request, timeout=30)
    out = response.outputs[0]
    assert (out.name, out.datatype, list(out.shape)) == ("logits", "FP32", [3, 4])
    logits = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(3, 4)
    np.testing.assert_allclose(logits, _expected(mlp_package, X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("make", "code", "needle"), [
    (lambda: ("mlp", [_input(X[:, :15].copy())]), "INVALID_ARGUMENT", "features"),
    (lambda: ("mlp", [_input(X.astype("float64"), datatype="FP64")]), "INVALID_ARGUMENT", "FP32"),
    (lambda: ("mlp", [_input(X, name="nope")]), "INVALID_ARGUMENT", "nope"),
    (lambda: ("other", [_input(X)]), "NOT_FOUND", "other"),
    (lambda: ("mlp", [_input(np.zeros((40, 16), "float32"))]), "INVALID_ARGUMENT", "--max-batch-size"),
])
def test_errors_map_to_grpc_codes_and_the_server_keeps_serving(server, make, code: str, needle: str) -> None:
    _, client, _ = server
    name, inputs = make()
    with pytest.raises(InferenceServerException) as caught:
        client.infer(name, inputs)
    assert caught.value.status() == f"StatusCode.{code}" and needle in caught.value.message()
    assert client.is_server_ready() and client.infer("mlp", [_input(X)]).as_numpy("logits").shape == (3, 4)


def test_raw_contents_that_do_not_fit_the_shape_are_refused(server) -> None:
    _, _, port = server
    m = messages()
    request = m.ModelInferRequest(model_name="mlp", raw_input_contents=[b"\0" * 10])
    request.inputs.add(name="features", datatype="FP32", shape=[3, 16])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=lambda r: r.SerializeToString(),
                                   response_deserializer=m.ModelInferResponse.FromString)
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "192" in caught.value.details()


def test_api_keys_and_scopes_apply_to_grpc(mlp_package: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEYS)
    proc, port = _start(mlp_package, "--api-keys-file", str(keys))
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_server_ready()  # health is public, as on HTTP
        with pytest.raises(InferenceServerException) as caught:
            client.infer("mlp", [_input(X)])
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        app = {"authorization": "Bearer app-key-000001"}
        assert client.is_model_ready("mlp", headers=app)  # an infer key may ask whether its model is ready
        assert client.infer("mlp", [_input(X)], headers=app).as_numpy("logits").shape == (3, 4)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("mlp", [_input(X)], headers={"authorization": "Bearer viewer-key-0002"})
        assert caught.value.status() == "StatusCode.PERMISSION_DENIED" and "infer" in caught.value.message()
        with pytest.raises(InferenceServerException) as caught:
            client.infer("mlp", [_input(X)], headers={"authorization": "Bearer wrong-key-00000"})
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    finally:
        proc.stop()
