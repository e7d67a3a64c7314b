"""The guard HTTP and gRPC share: API-key scopes that name models, rate limits per model, per-model refusals.

One repository server (models a and b) on a real socket, with HTTP and gRPC; every protocol that names a model is
asked with a key scoped to model a only, and with a model rate limit on b.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import make_onnx_mlp, run_cli
from servers import Process, free_port

from modelpack.errors import InputError
from modelpack.serve.auth import read_keys_file
from modelpack.serve.guard import parse_model_rates

ADMIN, ONLY_A, ADMIN_A = "admin-key-0123456789", "only-a-key-012345678", "admin-a-key-01234567"
X = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
V2 = {"inputs": [{"name": "features", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]}


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("guard")
    for name, seed in (("a", 1), ("b", 2)):
        out = tmp / "build" / name
        result = run_cli("optimize", make_onnx_mlp(tmp / f"{name}.onnx", seed=seed), "-o", out, "-q", "export")
        assert result.exit_code == 0, result.output
        (tmp / "repo" / name).mkdir(parents=True)
        shutil.copytree(out, tmp / "repo" / name / "1")
    (tmp / "repo.toml").write_text(f'default_model = "b"\n[models.a]\nsource = "{tmp / "repo" / "a"}"\n'
                                   f'[models.b]\nsource = "{tmp / "repo" / "b"}"\n')
    keys = tmp / "keys.txt"
    keys.write_text(f"ops:{ADMIN}:admin\nonly-a:{ONLY_A}:infer@a\nadmin-a:{ADMIN_A}:admin@a,infer@a*\n")
    grpc_port = free_port()
    proc = Process(tmp / "repo.toml", "--grpc-port", str(grpc_port), "--api-keys-file", str(keys),
                   "--model-rate-limit", "b=3/m")
    proc.grpc_port = grpc_port  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def test_a_key_scoped_to_one_model_is_refused_on_every_protocol_for_another(server) -> None:
    url = server.url
    ok = httpx.post(f"{url}/v2/models/a/infer", json=V2, headers=_auth(ONLY_A))
    assert ok.status_code == 200 and ok.json()["model_name"] == "a"
    assert httpx.get(f"{url}/v2/models/a/ready", headers=_auth(ONLY_A)).status_code == 200  # tritonclient asks
    refused = httpx.post(f"{url}/v2/models/b/infer", json=V2, headers=_auth(ONLY_A))
    assert refused.status_code == 403 and "lacks the 'infer' scope on model 'b'" in refused.json()["error"]
    for method, path, body in (("GET", "/v2/models/b", None), ("GET", "/v2/models/b/versions/1/ready", None),
                               ("POST", "/v1/models/b:predict", {"instances": X.tolist()}),
                               ("GET", "/v1/models/b/metadata", None),
                               ("POST", "/predict", {"input_data": X.tolist()}),  # the default model is b
                               ("POST", "/v2/models/nosuch/infer", V2)):  # no hint of which models exist
        answer = httpx.request(method, f"{url}{path}", json=body, headers=_auth(ONLY_A))
        assert answer.status_code == 403, (path, answer.text)
    assert httpx.post(f"{url}/v1/models/a:predict", json={"instances": X.tolist()},
                      headers=_auth(ONLY_A)).status_code == 200
    # A scope on some models grants nothing server-wide: the OpenAPI document lists every model.
    assert httpx.get(f"{url}/openapi.json", headers=_auth(ONLY_A)).status_code == 403
    # The repository API: admin@a may load and unload a, not b, and not read the index of every model.
    assert httpx.post(f"{url}/v2/repository/models/a/load", headers=_auth(ADMIN_A)).status_code == 200
    assert httpx.post(f"{url}/v2/repository/models/b/unload", headers=_auth(ADMIN_A)).status_code == 403
    assert httpx.post(f"{url}/v2/repository/index", headers=_auth(ADMIN_A)).status_code == 403
    metrics = httpx.get(f"{url}/metrics", headers=_auth(ADMIN)).text
    assert 'modelpack_model_refused_total{model="b",reason="scope"}' in metrics
    assert 'modelpack_requests_total{model="b",version="",route="/v2/models/{name}/infer",status="403"} 1' in metrics
    assert 'model="nosuch"' not in metrics  # an unknown name gets no series of its own


def test_the_binary_tensor_extension_and_grpc_apply_the_same_model_scope(server) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    feed = httpclient.InferInput("features", list(X.shape), "FP32")
    feed.set_data_from_numpy(X, binary_data=True)
    assert http.infer("a", [feed], headers=_auth(ONLY_A)).as_numpy("logits").shape == (2, 4)
    with pytest.raises(InferenceServerException, match="scope on model 'b'"):
        http.infer("b", [feed], headers=_auth(ONLY_A))
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    gfeed = grpcclient.InferInput("features", list(X.shape), "FP32")
    gfeed.set_data_from_numpy(X)
    assert client.infer("a", [gfeed], headers=_auth(ONLY_A)).as_numpy("logits").shape == (2, 4)
    for call in (lambda: client.infer("b", [gfeed], headers=_auth(ONLY_A)),
                 lambda: client.get_model_metadata("b", headers=_auth(ONLY_A)),
                 lambda: client.unload_model("b", headers=_auth(ADMIN_A))):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "StatusCode.PERMISSION_DENIED", caught.value.message()
        assert "on model 'b'" in caught.value.message()
    client.close()


def test_a_model_rate_limit_answers_429_and_resource_exhausted(server) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    url = server.url
    codes = [httpx.post(f"{url}/v2/models/b/infer", json=V2, headers=_auth(ADMIN)).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    limited = httpx.post(f"{url}/v2/models/b/infer", json=V2, headers=_auth(ADMIN))
    assert limited.status_code == 429 and "model 'b' is over its rate limit" in limited.json()["error"]
    assert 1 <= int(limited.headers["retry-after"]) <= 20
    assert httpx.get(f"{url}/v2/models/b", headers=_auth(ADMIN)).status_code == 200  # metadata is not limited
    # Model a has no limit of its own, so the same key keeps inferring with it.
    assert all(httpx.post(f"{url}/v2/models/a/infer", json=V2, headers=_auth(ADMIN)).status_code == 200
               for _ in range(5))
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    feed = grpcclient.InferInput("features", list(X.shape), "FP32")
    feed.set_data_from_numpy(X)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("b", [feed], headers=_auth(ADMIN))
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "rate limit" in caught.value.message()
    client.close()
    metrics = httpx.get(f"{url}/metrics", headers=_auth(ADMIN)).text
    assert 'modelpack_model_refused_total{model="b",reason="rate"} 2' in metrics
    # The refused calls are counted in model b's own request series (no version answered them).
    assert 'modelpack_requests_total{model="b",version="",route="/v2/models/{name}/infer",status="429"} 1' in metrics
    assert 'modelpack_requests_total{model="b",version="",route="grpc ModelInfer",status="429"} 1' in metrics
    # Per-model series: requests and latency labelled with the model and version that answered.
    assert 'modelpack_requests_total{model="a",version="1",route="/v2/models/{name}/infer",status="200"}' in metrics
    assert 'modelpack_request_duration_seconds_count{model="b",version="1",route="/v2/models/{name}/infer"} 3' \
        in metrics


def test_keys_file_and_option_errors_say_what_to_write(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("x:long-enough-key:infer@digits,metadata,admin@team-*\n")
    key = read_keys_file(keys)[0]
    assert key.allows("infer", "digits") and not key.allows("infer", "mnist") and not key.allows("infer")
    assert key.allows("model", "digits") and key.allows("metadata") and key.allows("admin", "team-x")
    assert not key.allows("admin")
    for text, needle in (("x:long-enough-key:infer@\n", "names no model"),
                         ("x:long-enough-key:predict@a\n", "unknown scope 'predict'")):
        keys.write_text(text)
        with pytest.raises(InputError, match=needle):
            read_keys_file(keys)
    assert parse_model_rates(["a=5/s", "*=1/m"])["*"].per_second == pytest.approx(1 / 60)
    with pytest.raises(InputError, match="write MODEL=N/s"):
        parse_model_rates(["5/s"])


def test_a_name_no_model_has_gets_no_rate_bucket() -> None:
    from modelpack.serve.auth import KeyRing
    from modelpack.serve.guard import INFER, Caller, Guard
    from modelpack.serve.limits import Budget
    from modelpack.serve.metrics import Metrics

    guard = Guard(KeyRing([]), Budget(1), Metrics(), parse_model_rates(["*=1/m"]))
    for i in range(100):
        guard.check_model(Caller(None, INFER), f"stranger-{i}", known=False)
    assert guard._buckets == {} and not guard.refused
    guard.check_model(Caller(None, INFER), "a")
    with pytest.raises(Exception, match="model 'a' is over its rate limit"):
        guard.check_model(Caller(None, INFER), "a")
    assert guard.refused == {("a", "rate"): 1}
