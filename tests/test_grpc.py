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


def _start(package: Path, *args: str, scheme: str = "http") -> tuple[Process, int]:
    port = free_port()
    return Process(package, "--grpc-port", str(port), *args, scheme=scheme), port


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


def _kserve(port: int, *args: str) -> dict:
    """The kserve SDK's gRPC client, in its own process (see tests/kserve_grpc_client.py)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(Path(__file__).parent / "kserve_grpc_client.py"), str(port), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kserve_sdk_grpc_client(server, mlp_package: Path) -> None:
    _, _, port = server
    found = _kserve(port)
    assert found["ready"] and found["model_ready"] and found["id"] == "k-1"
    np.testing.assert_allclose(np.asarray(found["logits"], dtype="float32"), _expected(mlp_package, X), rtol=1e-5,
                               atol=1e-6)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 (gRPC checks the name) and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(2).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.slow  # seconds: left out of make test-fast
def test_grpc_over_tls_with_a_key(mlp_package: Path, tmp_path: Path) -> None:
    """--ssl-certfile covers gRPC too; tritonclient and the kserve SDK connect over TLS with an API key."""
    cert, key = _self_signed(tmp_path)
    proc, port = _start(mlp_package, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--api-key",
                        "tls-key-0000001", scheme="https")
    try:
        client = triton.InferenceServerClient(f"localhost:{port}", ssl=True, root_certificates=str(cert))
        auth = {"authorization": "Bearer tls-key-0000001"}
        result = client.infer("mlp", [_input(X)], headers=auth)
        np.testing.assert_allclose(result.as_numpy("logits"), _expected(mlp_package, X), rtol=1e-5, atol=1e-6)
        found = _kserve(port, "--tls", str(cert), "--key", "tls-key-0000001")
        assert found["ready"] and found["model_ready"] and np.asarray(found["logits"]).shape == (3, 4)
        assert "UNAUTHENTICATED" in _kserve(port, "--tls", str(cert))["error"]
        with pytest.raises(InferenceServerException) as caught:  # the key is still needed over TLS
            client.infer("mlp", [_input(X)])
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        plain = triton.InferenceServerClient(f"127.0.0.1:{port}")  # no TLS: the handshake fails, nothing served
        with pytest.raises(InferenceServerException) as caught:
            plain.is_server_live(client_timeout=10)
        assert caught.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
    finally:
        proc.stop()
