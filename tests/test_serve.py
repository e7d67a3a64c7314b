"""`modelpack serve`: every endpoint in-process and over a real socket, batching, overload, auth, bad input."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import EXAMPLE, run_cli, wait_until
from servers import InProcess, Process

X = np.load(EXAMPLE / "eval.npz")["x"]
Y = np.load(EXAMPLE / "eval.npz")["y"]
KEY = "s3cret-key-for-tests"


def v2_json(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}


@pytest.fixture(scope="module")
def inproc(digits_package: Path):
    server = InProcess(digits_package, max_batch_size=32)
    yield server
    server.close()


@pytest.fixture(scope="module")
def socket_server(digits_package: Path):
    server = Process(digits_package)
    yield server
    server.stop()


class SocketClient:
    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.client = httpx.Client(base_url=url, headers=headers, timeout=30)

    def get(self, path: str, **kw):
        return self.client.get(path, **kw)

    def post(self, path: str, **kw):
        return self.client.post(path, **kw)


@pytest.fixture(params=["in-process", "socket"])
def client(request, inproc, socket_server):
    return inproc if request.param == "in-process" else SocketClient(socket_server.url)


@pytest.fixture(scope="module")
def reference(digits_package: Path):
    """The served artifact run directly on onnxruntime: what every response must match."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(digits_package / "model.onnx"))
    return lambda x: session.run(None, {"image": x})[0]


# --- every endpoint, both ways ----------------------------------------------------------------------------


def test_health_and_metadata(client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["extensions"][0] == "binary_tensor_data"
    for path in ("/v2/models/model", "/v2/models/model/versions/1"):
        meta = client.get(path).json()
        assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
        assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get("/v2/models/model/ready").json()["ready"] is True
    assert client.get("/v2/models/model/versions/1/ready").status_code == 200
    status = client.get("/v1/models/model").json()["model_version_status"][0]
    assert status["state"] == "AVAILABLE" and status["version"] == "1"
    assert client.get("/v1/models/model/versions/1").status_code == 200


def test_v2_infer_json_nested_and_flat(client, reference) -> None:
    x = X[:5]
    nested = client.post("/v2/models/model/infer", json={**v2_json(x), "id": "r1"}).json()
    assert nested["id"] == "r1" and nested["model_name"] == "model" and nested["model_version"] == "1"
    out = nested["outputs"][0]
    assert out["name"] == "probs" and out["shape"] == [5, 10] and out["datatype"] == "FP32"
    probs = np.array(out["data"], np.float32).reshape(5, 10)
    np.testing.assert_allclose(probs, reference(x), atol=1e-6)
    flat = v2_json(x)
    flat["inputs"][0]["data"] = x.ravel().tolist()
    again = client.post("/v2/models/model/versions/1/infer", json=flat).json()
    assert again["outputs"][0]["data"] == out["data"]


def test_tfserving_row_and_columnar(client, reference) -> None:
    x = X[:3]
    rows = client.post("/v1/models/model:predict", json={"instances": x.tolist()}).json()
    np.testing.assert_allclose(np.array(rows["predictions"]), reference(x), atol=1e-6)
    cols = client.post("/v1/models/model/versions/1:predict", json={"inputs": {"image": x.tolist()}}).json()
    np.testing.assert_allclose(np.array(cols["outputs"]), reference(x), atol=1e-6)
    named = client.post("/v1/models/model:predict", json={"signature_name": "serving_default",
                                                           "instances": [{"image": r} for r in x.tolist()]}).json()
    assert np.array(named["predictions"]).shape == (3, 10)


def test_simple_predict_route_like_the_flask_example(client) -> None:
    batch = client.post("/predict", json={"input_data": X[:4].tolist()}).json()
    assert np.array(batch["prediction"]).argmax(axis=1).tolist() == Y[:4].tolist()
    single = client.post("/predict", json={"input_data": X[0].tolist()}).json()  # no batch dimension
    assert np.array(single["prediction"]).shape == (1, 10)


def test_operations_routes(client) -> None:
    client.post("/v2/models/model/infer", json=v2_json(X[:2]))
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in ("modelpack_requests_total", "modelpack_request_duration_seconds_bucket", "modelpack_batch_size_bucket",
                 "modelpack_queue_depth", "modelpack_model_load_seconds"):
        assert name in text
    assert 'route="/v2/models/{name}/infer",status="200"' in text
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1") and "/v2/models/{name}/infer" in spec["paths"]
    docs = client.get("/docs")
    assert docs.headers["content-type"].startswith("text/html") and "/v2/models/{name}/infer" in docs.text


# --- tritonclient, a real V2 client -----------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient(socket_server, reference, binary: bool) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(socket_server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("model")
    assert client.get_model_metadata("model")["inputs"][0]["shape"] == [-1, 8, 8, 1]
    x = X[:6]
    inp = triton.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("probs", binary_data=binary)
    result = client.infer("model", [inp], outputs=[out])
    np.testing.assert_allclose(result.as_numpy("probs"), reference(x), atol=1e-6)
    default = client.infer("model", [inp])  # no outputs named: all outputs, binary
    np.testing.assert_allclose(default.as_numpy("probs"), reference(x), atol=1e-6)


# --- bad input: a 4xx naming the problem, and the server keeps serving -------------------------------------


BAD = [
    ("POST", "/v2/models/nope/infer", {"json": v2_json(X[:1])}, 404, "unknown model 'nope'"),
    ("POST", "/v2/models/model/versions/9/infer", {"json": v2_json(X[:1])}, 404, "no version '9'"),
    ("GET", "/v2/models/nope", {}, 404, "unknown model"),
    ("GET", "/nowhere", {}, 404, "no route"),
    ("GET", "/v2/models/model/infer", {}, 405, "use POST"),
    ("POST", "/v2/models/model/infer", {"content": b"{not json"}, 400, "malformed JSON"),
    ("POST", "/v2/models/model/infer", {"content": b""}, 400, "empty"),
    ("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "pixels", "shape": [1, 8, 8, 1],
                                                             "datatype": "FP32", "data": [0] * 64}]}},
     400, "unknown input 'pixels'"),
    ("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "image", "shape": [1, 8, 8, 1],
                                                             "datatype": "INT64", "data": [0] * 64}]}},
     400, "datatype INT64, expected FP32"),
    ("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "image", "shape": [1, 64],
                                                             "datatype": "FP32", "data": [0] * 64}]}},
     400, "shape [1, 64], expected [-1, 8, 8, 1]"),
    ("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "image", "shape": [1, 8, 8, 1],
                                                             "datatype": "FP32", "data": [0] * 63}]}},
     400, "63 elements"),
    ("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "image", "shape": [1, 8, 8, 1],
                                                             "datatype": "FP32"}]}}, 400, "missing 'data'"),
    ("POST", "/v2/models/model/infer", {"json": {"inputs": []}}, 400, "missing input 'image'"),
    ("POST", "/v2/models/model/infer", {"json": {"nothing": 1}}, 400, "'inputs' list"),
    ("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "image", "shape": [1, 8, 8, 1],
                                                             "datatype": "FP32", "data": ["a"] * 64}]}},
     400, "data holds strings"),
    ("POST", "/v2/models/model/infer", {"json": v2_json(np.zeros((40, 8, 8, 1), np.float32))}, 400,
     "exceeds the server's --max-batch-size 32"),
    ("POST", "/v2/models/model/infer", {"json": {**v2_json(X[:1]), "outputs": [{"name": "logits"}]}}, 400,
     "unknown output 'logits'"),
    ("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32",
                                                             "parameters": {"binary_data_size": 256}}]}},
     400, "no binary part"),
    ("POST", "/v1/models/model:predict", {"json": {"neither": []}}, 400, "'instances'"),
    ("POST", "/v1/models/model:predict", {"json": {"instances": [[1, 2, 3]]}}, 400, "shape [1, 3]"),
    ("POST", "/v1/models/model:predict", {"json": {"signature_name": "other", "instances": [[1]]}}, 400,
     "unknown signature_name"),
    ("POST", "/predict", {"json": {"data": []}}, 400, "input_data"),
    ("POST", "/predict", {"json": {"input_data": [[[["x"]]]]}}, 400, "data holds strings"),
    # Found by a hostile-client pass and schemathesis: each of these was a 500 or a silent misreading.
    *[("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "image", "shape": [1, 8, 8, 1],
                                                               "datatype": bad, "data": [0] * 64}]}},
       400, "unsupported datatype") for bad in ({}, [], ["FP32"])],
    ("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "image", "shape": [1] * 65, "datatype": "FP32",
                                                             "data": [0]}]}}, 400, "65 dimensions"),
    ("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "image", "shape": [0, 4611686018427387904],
                                                             "datatype": "FP32", "data": []}]}}, 400, "integers from 0"),
    ("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "image", "shape": [1, 8, 8, 1],
                                                             "datatype": "FP32", "data": [None] * 64}]}},
     400, "data holds nulls"),
    ("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "image", "shape": [1, 8, 8, 1],
                                                             "datatype": "FP32", "data": ["1.5"] * 64}]}},
     400, "data holds strings"),
    ("POST", "/v2/models/model/infer", {"json": {"inputs": [{"name": "image", "shape": [1, 8, 8, 1],
                                                             "datatype": "FP32", "data": [1e39] * 64}]}},
     400, "out of range for FP32"),
    ("POST", "/v2/models/model/infer", {"json": {**v2_json(X[:1]), "parameters": {"binary_data_output": "no"}}},
     400, "must be true or false"),
    ("POST", "/v2/models/model/infer", {"json": {**v2_json(X[:1]), "id": 7}}, 400, "'id' must be a string"),
    ("POST", "/v1/models/model:predict", {"json": {"instances": [[0]], "inputs": [[0]]}}, 400, "not both"),
]


@pytest.mark.parametrize("method,path,kwargs,status,words", BAD, ids=[f"{b[3]}-{b[4][:24]}" for b in BAD])
def test_bad_requests_get_a_clear_4xx(client, method, path, kwargs, status, words) -> None:
    response = client.post(path, **kwargs) if method == "POST" else client.get(path, **kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    # ... and the server keeps serving.
    assert client.post("/v2/models/model/infer", json=v2_json(X[:1])).status_code == 200


def test_binary_size_mismatch(socket_server) -> None:
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 100}}]}).encode()
    body = header + b"\0" * 100
    response = httpx.post(f"{socket_server.url}/v2/models/model/infer", content=body,
                          headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and "expected 256" in response.json()["error"]
    response = httpx.post(f"{socket_server.url}/v2/models/model/infer", content=body,
                          headers={"Inference-Header-Content-Length": "99999"})
    assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]


def test_body_over_the_limit_is_413(digits_package: Path) -> None:
    server = InProcess(digits_package, max_body_mb=0.01)
    try:
        response = server.post("/v2/models/model/infer", json=v2_json(X[:32]))
        assert response.status_code == 413 and "--max-body-mb" in response.json()["error"]
        assert server.post("/v2/models/model/infer", json=v2_json(X[:1])).status_code == 200
    finally:
        server.close()


# --- batching, overload, timeouts -------------------------------------------------------------------------


def test_dynamic_batching_gives_unbatched_results(digits_package: Path, reference) -> None:
    server = InProcess(digits_package, max_batch_size=16, batch_timeout_ms=20)
    try:
        sizes = [1, 2, 3, 1, 4, 1, 2, 1] * 6
        starts = np.cumsum([0] + sizes[:-1]) % 300
        requests = [("POST", "/v2/models/model/infer", {"json": v2_json(X[s:s + n])}) for s, n in zip(starts, sizes)]
        responses = server.gather(requests)
        for (s, n), response in zip(zip(starts, sizes), responses):
            assert response.status_code == 200
            probs = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(n, 10)
            np.testing.assert_allclose(probs, reference(X[s:s + n]), atol=1e-5)
        batch = server.app.metrics.batch
        assert batch.n < len(sizes), "no requests were merged"
        assert batch.total == sum(sizes)
    finally:
        server.close()


def test_overload_gets_503_with_retry_after(digits_package: Path) -> None:
    server = InProcess(digits_package, max_queue=2, batch_timeout_ms=300)
    try:
        responses = server.gather([("POST", "/v2/models/model/infer", {"json": v2_json(X[:1])})] * 10)
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}
        rejected = next(r for r in responses if r.status_code == 503)
        assert rejected.headers["retry-after"] == "1" and "capacity" in rejected.json()["error"]
        assert server.post("/v2/models/model/infer", json=v2_json(X[:1])).status_code == 200
    finally:
        server.close()


def test_request_timeout_gets_504(digits_package: Path) -> None:
    server = InProcess(digits_package, timeout_s=0.02, batch_timeout_ms=500)
    try:
        response = server.post("/v2/models/model/infer", json=v2_json(X[:1]))
        assert response.status_code == 504 and "--timeout-s" in response.json()["error"]
    finally:
        server.close()


# --- auth, binding, TLS -----------------------------------------------------------------------------------


def test_api_key_required_except_on_health(digits_package: Path) -> None:
    server = Process(digits_package, env={"MODELPACK_API_KEY": KEY})
    try:
        url = server.url
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        for path in ("/v2", "/metrics", "/openapi.json", "/v2/models/model"):
            response = httpx.get(url + path)
            assert response.status_code == 401 and "API key" in response.json()["error"]
            assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.post(f"{url}/v2/models/model/infer", json=v2_json(X[:1]),
                           headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "invalid API key" in wrong.json()["error"]
        ok = httpx.post(f"{url}/v2/models/model/infer", json=v2_json(X[:1]), headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
    finally:
        server.stop()


def test_keys_file(digits_package: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nalice:alice-key-123\nbob:bob-key-4567\n")
    server = InProcess(digits_package, api_keys_file=keys)
    try:
        assert server.get("/v2", headers={"Authorization": "Bearer bob-key-4567"}).status_code == 200
        assert server.get("/v2", headers={"Authorization": "Bearer alice-key-12"}).status_code == 401
        server.get("/v2", headers={"Authorization": "Bearer alice-key-123"})
        metrics = server.get("/metrics", headers={"Authorization": "Bearer alice-key-123"}).text
        assert 'key="alice"' in metrics and 'key="bob"' in metrics
    finally:
        server.close()


def test_binding_all_interfaces_without_a_key_warns(digits_package: Path) -> None:
    server = Process(digits_package, "--host", "0.0.0.0", wait=False)
    server.url = f"http://127.0.0.1:{server.port}"
    server.wait_ready()
    _, err = server.stop()
    assert "WARNING" in err and "binding 0.0.0.0 without an API key" in err


def test_json_log_lines_and_quiet(digits_package: Path) -> None:
    server = Process(digits_package, "--json", "--access-log")
    try:
        assert httpx.post(f"{server.url}/v2/models/model/infer", json=v2_json(X[:1])).status_code == 200
        assert httpx.get(f"{server.url}/v2/models/nope").status_code == 404
        wait_until(lambda: server.logged('"status": 404'), 30, "the access line of the 404")
    finally:
        _, err = server.stop()
    entries = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any(e["logger"] == "modelpack.serve" and "ready" in e["message"] for e in entries)
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert {(e["method"], e["path"], e["status"]) for e in access} >= {
        ("POST", "/v2/models/model/infer", 200), ("GET", "/v2/models/nope", 404)}
    # -q (anywhere on the line) keeps warnings and errors only.
    quiet = Process(digits_package, "-q", "--host", "0.0.0.0", wait=False)
    quiet.url = f"http://127.0.0.1:{quiet.port}"
    quiet.wait_ready()
    _, err = quiet.stop()
    assert "binding 0.0.0.0 without an API key" in err
    assert "INFO" not in err and "ready" not in err, err


def test_tls(digits_package: Path, tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    server = Process(digits_package, "--ssl-certfile", str(tmp_path / "cert.pem"), "--ssl-keyfile",
                     str(tmp_path / "key.pem"), scheme="https")
    try:
        response = httpx.post(f"{server.url}/v2/models/model/infer", json=v2_json(X[:1]), verify=False)
        assert response.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/v2/health/live", timeout=2).raise_for_status()
    finally:
        server.stop()


# --- startup, lightness, workers, soak, shutdown ----------------------------------------------------------


def test_tampered_package_is_refused(digits_package: Path, tmp_path: Path) -> None:
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(digits_package, pkg)
    data = bytearray((pkg / "model.onnx").read_bytes())
    data[100] ^= 1
    (pkg / "model.onnx").write_bytes(bytes(data))
    result = run_cli("serve", pkg, "--get", "/v2/health/ready")
    assert result.exit_code == 1 and "refusing to serve" in result.output and "model.onnx" in result.output


def test_serving_onnx_does_not_import_tensorflow(digits_package: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from modelpack.serve.app import build_app\n"
        "from modelpack.serve.config import ServeConfig\n"
        f"app = build_app(ServeConfig(package_dir=Path({str(digits_package)!r})))\n"
        "asyncio.run(app.startup())\n"
        "print('runtime', app.model.platform)\n"
        "print('TF', any(m in sys.modules for m in ('tensorflow', 'keras', 'tf_keras', 'ray')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "runtime onnxruntime_onnx" in proc.stdout and "TF False" in proc.stdout, proc.stdout + proc.stderr


def test_serve_get_smoke_test(digits_package: Path) -> None:
    result = run_cli("serve", digits_package, "--get", "/v2/models/model")
    assert result.exit_code == 0 and '"platform":"onnxruntime_onnx"' in result.output
    result = run_cli("serve", digits_package, "--runtime", "tflite", "--get", "/v2/models/model")
    assert result.exit_code == 0 and '"platform":"tflite"' in result.output
    assert run_cli("serve", digits_package, "--runtime", "savedmodel").exit_code == 2


def test_workers(digits_package: Path) -> None:
    server = Process(digits_package, "--workers", "2")
    try:
        children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) >= 2, children
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: httpx.post(f"{server.url}/predict",
                                                       json={"input_data": X[:1].tolist()}).status_code, range(40)))
        assert codes == [200] * 40
    finally:
        code, _ = server.stop()
    assert code == 0


def test_soak_thousands_of_requests_no_5xx(socket_server) -> None:
    url = socket_server.url
    bodies = [v2_json(X[i % 300:i % 300 + 1 + i % 3]) for i in range(50)]
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def worker(n: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in range(n):
                body = bodies[i % len(bodies)] if i % 10 else {"inputs": "garbage"}
                code = c.post("/v2/models/model/infer", json=body).status_code
                with lock:
                    counts[code] = counts.get(code, 0) + 1

    threads = [threading.Thread(target=worker, args=(300,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts.values()) == 2400
    assert not any(code >= 500 for code in counts), counts
    assert counts[200] == 2160 and counts[400] == 240
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_sigterm_drains_accepted_requests(digits_package: Path) -> None:
    # A long batch window holds the requests in the batcher (12 rows < --max-batch-size 32) until SIGTERM.
    # SIGTERM must run them at once: were the batcher to keep waiting for its 10 s window, the 3 s grace
    # period would end first and the requests would be cut off.
    server = Process(digits_package, "--batch-timeout-ms", "10000", "--graceful-timeout-s", "3")
    results: list[int] = []

    def call() -> None:
        results.append(httpx.post(f"{server.url}/v2/models/model/infer", json=v2_json(X[:2]), timeout=60).status_code)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    wait_until(lambda: server.metric("modelpack_queue_depth") == 6, 30, "all six requests to wait in the batcher")
    assert results == []  # accepted, none answered yet: what the server must now drain
    code, err = server.stop(signal.SIGTERM)
    for t in threads:
        t.join()
    assert results == [200] * 6, (results, err)
    assert code == 0 and "Finished server process" in err


def test_error_bodies_do_not_echo_a_huge_input(client) -> None:
    huge = "x" * 5_000_000
    response = client.post("/v2/models/model/infer", json={"inputs": [{"name": "image", "shape": [1, 8, 8, 1],
                                                                       "datatype": "FP32",
                                                                       "data": [huge] + [0] * 63}]})
    assert response.status_code == 400 and len(response.content) < 2048
    response = client.get("/v2/models/" + "m" * 60_000)
    assert response.status_code == 414 and len(response.content) < 2048
    response = client.get("/v2/models/" + "m" * 1000)
    assert response.status_code == 404 and len(response.content) < 2048


def test_a_shape_the_runtime_refuses_is_a_400_with_its_reason(tmp_path) -> None:
    """A dynamic inner dimension the graph constrains: [1, 7] where a Reshape needs 8 values per row."""
    import onnx
    from conftest import run_cli
    from onnx import TensorProto, helper, numpy_helper
    from servers import InProcess

    shape = numpy_helper.from_array(np.array([-1, 2, 4], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 4])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert run_cli("optimize", tmp_path / "m.onnx", "-o", tmp_path / "pkg", "--name", "model", "-q",
                   "export").exit_code == 0
    server = InProcess(tmp_path / "pkg")
    try:
        bad = server.post("/v2/models/model/infer", json={"inputs": [{"name": "x", "shape": [1, 7], "datatype": "FP32",
                                                                      "data": [0.0] * 7}]})
        assert bad.status_code == 400, bad.text
        assert "the model rejected the input" in bad.json()["error"]
        good = server.post("/v2/models/model/infer", json={"inputs": [{"name": "x", "shape": [1, 8],
                                                                       "datatype": "FP32", "data": [0.0] * 8}]})
        assert good.status_code == 200
    finally:
        server.close()


def _closed_within(sock, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open after `seconds`."""

    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {seconds} s; got {received[:200]!r}") from None
    return received


@pytest.fixture(scope="module")
def strict_server(digits_package: Path):
    server = Process(digits_package, "--header-timeout-s", "0.5", "--body-timeout-s", "0.5",
                     "--max-inflight-mb", "1")
    yield server
    server.stop()


def test_slow_and_idle_clients_are_cut_off(strict_server) -> None:
    import socket as socketlib

    def connect():
        return socketlib.create_connection(("127.0.0.1", strict_server.port), timeout=10)

    with connect() as idle:  # connects and says nothing
        assert _closed_within(idle, 20) == b""
    with connect() as dribble:  # starts a request and never finishes the headers
        dribble.sendall(b"POST /v2/models/model/infer HTTP/1.1\r\nhost: x\r\n")
        assert b"408" in _closed_within(dribble, 20)
    with connect() as short:  # a Content-Length larger than the body it sends
        short.sendall(b"POST /v2/models/model/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      b"content-length: 1000\r\n\r\n{\"inputs\": [")
        answer = _closed_within(short, 20)
        assert b"408" in answer and b"request body" in answer
    # ... and the server goes on answering.
    assert httpx.post(f"{strict_server.url}/v2/models/model/infer", json=v2_json(X[:1])).status_code == 200


def test_request_bytes_in_flight_are_capped(digits_package: Path) -> None:
    import re
    import socket as socketlib

    server = Process(digits_package, "--max-inflight-mb", "1")
    stalled = []
    try:
        for _ in range(2):  # two uploads of 500 KB, 400 KB of each sent, then stalled
            sock = socketlib.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"POST /v2/models/model/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 500000\r\n\r\n"
                         + b" " * 400_000)
            stalled.append(sock)

        def held() -> int:
            found = re.search(r"modelpack_inflight_request_bytes\{[^}]*\} (\d+)",
                              httpx.get(f"{server.url}/metrics").text)
            return int(found[1]) if found else 0

        wait_until(lambda: held() >= 800_000, 30, "the server to hold both bodies")
        answer = httpx.post(f"{server.url}/v2/models/model/infer", content=b"x" * 300_000,
                            headers={"content-type": "application/json"})
        assert answer.status_code == 503, answer.text
        assert "--max-inflight-mb" in answer.json()["error"] and answer.headers["retry-after"] == "1"
    finally:
        for sock in stalled:
            sock.close()
        server.stop()


def test_compressed_requests_and_a_gzip_bomb(socket_server, reference) -> None:
    import gzip
    import zlib

    import tritonclient.http as triton

    body = json.dumps(v2_json(X[:2])).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        answer = httpx.post(f"{socket_server.url}/v2/models/model/infer", content=packed,
                            headers={"content-encoding": encoding, "content-type": "application/json"})
        assert answer.status_code == 200, answer.text
    client = triton.InferenceServerClient(socket_server.url.removeprefix("http://"))
    inp = triton.InferInput("image", list(X[:2].shape), "FP32")
    inp.set_data_from_numpy(X[:2].astype(np.float32))
    result = client.infer("model", [inp], request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("probs"), reference(X[:2]), atol=1e-5)
    bomb = gzip.compress(b"0" * (64 << 20))  # 64 MiB of zeros in about 64 KB
    answer = httpx.post(f"{socket_server.url}/v2/models/model/infer", content=bomb,
                        headers={"content-encoding": "gzip"})
    assert answer.status_code == 413 and "inflates past" in answer.json()["error"]
    answer = httpx.post(f"{socket_server.url}/v2/models/model/infer", content=body, headers={"content-encoding": "br"})
    assert answer.status_code == 415


def test_tfserving_model_metadata(client) -> None:
    answer = client.get("/v1/models/model/metadata")
    assert answer.status_code == 200, answer.text
    signature = answer.json()["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["image"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["image"]["tensor_shape"]["dim"]] == ["-1", "8", "8", "1"]
    assert "probs" in signature["outputs"]


def test_answers_below_the_app_are_json(strict_server, digits_package: Path) -> None:
    import socket as socketlib

    with socketlib.create_connection(("127.0.0.1", strict_server.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")  # e.g. a TLS client on the plain port
        answer = _closed_within(sock, 20)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head
    assert "malformed HTTP/1.1 request" in json.loads(body)["error"]
    # Past --max-connections, uvicorn's own 503 is JSON too, with Retry-After.
    server = Process(digits_package, "--max-connections", "2")
    try:
        with socketlib.create_connection(("127.0.0.1", server.port), timeout=10):  # one idle connection holds a slot
            def refused() -> bool:
                return httpx.get(f"{server.url}/v2/health/live").status_code == 503
            wait_until(refused, 30, "the connection limit to be reached")
            answer = httpx.get(f"{server.url}/v2/health/live")
            assert answer.headers["content-type"] == "application/json" and answer.headers["retry-after"] == "1"
            assert "--max-connections" in answer.json()["error"]
        wait_until(lambda: httpx.get(f"{server.url}/v2/health/live").status_code == 200, 30,
                   "the slot to be freed")
    finally:
        server.stop()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_stalled_uploads_hold_bounded_memory_and_are_closed(digits_package: Path) -> None:
    """20 uploads that declare 15 MB, send 4 MB and stall: without a cap that is 80 MB held (the issue saw
    300 MB); with --max-inflight-mb 16 the server holds at most 16 MB of them, and closes them all at the
    body deadline."""
    import socket as socketlib

    server = Process(digits_package, "--max-inflight-mb", "16", "--body-timeout-s", "15", "--max-body-mb", "16")
    stalled = []
    try:
        before = _rss_mb(server.proc.pid)
        chunk = b" " * (4 << 20)
        for _ in range(20):
            sock = socketlib.create_connection(("127.0.0.1", server.port), timeout=30)
            sock.sendall(b"POST /v2/models/model/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: 15728640\r\n\r\n")
            try:
                sock.sendall(chunk)
            except OSError:
                pass  # refused already (503) and closed: also bounded
            stalled.append(sock)

        def settled() -> bool:  # every upload is either held whole (4 MB each) or refused with 503
            import re

            text = httpx.get(f"{server.url}/metrics", timeout=5).text
            held = int(float(re.search(r"^modelpack_inflight_request_bytes\S* (\S+)$", text, re.M)[1]))
            refused = sum(int(n) for n in re.findall(r'^modelpack_requests_total\{.*status="503"\} (\d+)$', text, re.M))
            return held % len(chunk) == 0 and held // len(chunk) + refused == 20

        wait_until(settled, 60, "every upload to be held or refused")
        peak = _rss_mb(server.proc.pid)
        assert server.metric("modelpack_inflight_request_bytes") <= 16 << 20
        assert peak - before < 64, (before, peak)  # 16 MB at most held, plus parser and socket buffers
        # Health checks are answered meanwhile, and every stalled upload is closed by the body deadline.
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
        for sock in stalled:
            answer = _closed_within(sock, 30)
            assert answer == b"" or answer.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")), answer[:100]
        wait_until(lambda: server.metric("modelpack_inflight_request_bytes") == 0, 30, "the held bytes to be released")
    finally:
        for sock in stalled:
            sock.close()
        server.stop()


class _Responses:
    """HTTP/1.1 responses read one by one from a keep-alive socket. Answers to pipelined requests may arrive
    together in one read (the server need not wait for the client to read the first), so what is past one
    response is kept for the next."""

    def __init__(self, sock) -> None:
        self.sock, self.data = sock, b""

    def next(self, head_only: bool = False) -> tuple[bytes, bytes]:
        """(status line and headers, body by Content-Length)."""
        while b"\r\n\r\n" not in self.data:
            self.data += self.sock.recv(65536)
        head, _, rest = self.data.partition(b"\r\n\r\n")
        length = 0 if head_only else int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.data = rest[length:]
        return head, rest[:length]


def test_each_answer_is_one_write_and_pipelining_head_and_100_continue_work(socket_server) -> None:
    import socket as socketlib

    body = json.dumps(v2_json(X[:1])).encode()
    infer = (b"POST /v2/models/model/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
             b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    with socketlib.create_connection(("127.0.0.1", socket_server.port), timeout=30) as sock:
        # The status line, headers and body leave the server in one write, so the first read after the
        # socket turns readable holds all of it. (Two writes would often show the headers alone.)
        for _ in range(40):
            sock.sendall(infer)
            first = sock.recv(65536)
            head, _, rest = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), first[:200]
            assert len(rest) == int(re.search(rb"content-length: (\d+)", head, re.I).group(1)), first
        # Pipelined requests, a HEAD among them, are answered in order, the HEAD without a body.
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n"
                     b"HEAD /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n" + infer)
        responses = _Responses(sock)
        live_head, live = responses.next()
        ready_head, _ = responses.next(head_only=True)
        infer_head, answer = responses.next()
        assert responses.data == b"", "bytes past the last answer"
        assert live_head.startswith(b"HTTP/1.1 200") and json.loads(live) == {"live": True}
        assert ready_head.startswith(b"HTTP/1.1 200") and re.search(rb"content-length: \d+", ready_head, re.I)
        assert infer_head.startswith(b"HTTP/1.1 200") and len(json.loads(answer)["outputs"]) == 1
        # A client that waits for 100 Continue gets it before sending its body, then the answer.
        sock.sendall(infer.replace(b"host: x\r\n", b"host: x\r\nexpect: 100-continue\r\n").split(b"\r\n\r\n")[0]
                     + b"\r\n\r\n")
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        final_head, answer = _Responses(sock).next()
        assert final_head.startswith(b"HTTP/1.1 200") and len(json.loads(answer)["outputs"]) == 1
