"""`modelpack serve REPO`: many models and versions in one server, the repository API, polling, labels.

Every server test runs `modelpack serve` as a real process on a loopback port and waits on conditions (a log
line, an answer, a metric), never on the clock. Versions are MLPs with different weights, so an answer tells
which version gave it: each is checked against onnxruntime running that version's own ONNX file.
"""

from __future__ import annotations

import shutil
import signal
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import make_onnx_mlp, run_cli, wait_until
from servers import Process, free_port

from modelpack.errors import InputError
from modelpack.serve.sources import Policy, read_repository

ADMIN, INFER = "admin-key-0123456789", "infer-key-0123456789"
X = np.random.default_rng(7).standard_normal((3, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, np.ndarray]]:
    """Three versions of one model (seeds 1, 2, 3): each package and its reference output on X."""
    base = tmp_path_factory.mktemp("versions")
    return {seed: _mlp_package(base, f"mlp{seed}", f"pkg{seed}", X, seed=seed) for seed in (1, 2, 3)}


def _mlp_package(base: Path, model: str, package: str, x: np.ndarray, **mlp: int) -> tuple[Path, np.ndarray]:
    """An MLP (make_onnx_mlp with `mlp`) exported into a package under `base`, and onnxruntime's output on `x`."""
    import onnxruntime as ort

    onnx_file = make_onnx_mlp(base / f"{model}.onnx", **mlp)
    out = base / package
    result = run_cli("optimize", onnx_file, "-o", out, "-q", "export")
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return out, session.run(None, {"features": x})[0]


def _keys(tmp_path: Path) -> Path:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"ops:{ADMIN}:admin\nclient:{INFER}:infer\n")
    return keys


def _auth(key: str = ADMIN) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _infer(server: Process, path: str, key: str = ADMIN) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", headers=_auth(key), timeout=30, json={
        "inputs": [{"name": "features", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]})


def _output(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array(response.json()["outputs"][0]["data"], np.float32).reshape(len(X), -1)


def _copy_in(src: Path, dest: Path) -> None:
    """Put a version in place the way a deploy should: copy beside it, then rename (atomic)."""
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.copytree(src, tmp)
    tmp.rename(dest)


def _corrupt(package: Path) -> None:
    artifact = next(package.rglob("*.onnx"))
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))


# -- layout and file ------------------------------------------------------------------------------------------


def test_directory_layout_and_repository_file(versions, tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "mlp").mkdir(parents=True)
    shutil.copytree(versions[1][0], root / "mlp" / "1")
    shutil.copytree(versions[2][0], root / "mlp" / "2")
    (root / "mlp" / "notes").mkdir()  # not an integer: ignored, as TF Serving does
    (root / "mlp" / "3").mkdir()  # no manifest yet (still being copied): not a version
    spec = read_repository(root)
    assert list(spec.models) == ["mlp"]
    assert sorted(spec.models["mlp"].available()) == [1, 2]
    assert list(spec.models["mlp"].wanted()) == [2]  # the default policy: the latest version

    file = tmp_path / "repo.toml"
    file.write_text(f'default_model = "a"\n[models.a]\nversions = {{1 = "{versions[1][0]}", 2 = "{versions[2][0]}"}}\n'
                    'policy = "all"\nlabels = {stable = 1, canary = 2}\ndefault = "stable"\n'
                    f'[models.b]\nsource = "{root / "mlp"}"\npolicy = {{latest = 2}}\n')
    spec = read_repository(file)
    assert spec.default_model == "a" and spec.models["a"].labels == {"stable": 1, "canary": 2}
    assert list(spec.models["a"].wanted()) == [1, 2] and list(spec.models["b"].wanted()) == [1, 2]
    assert Policy("specific", versions=(1, 3)).choose([1, 2, 3, 4]) == [1, 3]
    assert Policy("latest", 2).choose([5, 1, 9]) == [5, 9]


@pytest.mark.parametrize(("text", "message"), [
    ("", "no [models.NAME] tables"),
    ("[models.a]\nversions = {1 = 'nowhere'}\n", "[models.a]: versions.1: '"),
    ("[models.a]\nversions = {1 = 'PKG'}\nwhat = 1\n", "unknown field 'what'"),
    ("[models.a]\nversions = {1 = 'PKG'}\npolicy = {newest = 1}\n", "policy must be"),
    ("[models.a]\nversions = {1 = 'PKG'}\nlabels = {stable = 2}\n", "labels.stable = 2, a version the policy"),
    ("[models.a]\nversions = {1 = 'PKG'}\ndefault = 'canary'\n", "default 'canary' is neither"),
    ("[models.a]\nsource = 'oci://example.org/m:1'\nlabels = {stable = 1}\n", "'labels' does not go with an oci://"),
    ("[models.a]\nsource = 'oci://example.org/m@sha256:" + "0" * 64 + "'\n", "names a digest; give a tag"),
    ("[models.a]\nversions = {1 = 'PKG'}\nplain_http = true\n", "'plain_http' goes with an oci:// source"),
    ("[models.a]\nversions = {one = 'PKG'}\n", "'one' is not a version"),
    ("default_model = 'z'\n[models.a]\nversions = {1 = 'PKG'}\n", "default_model 'z' is not one of"),
    ("[models.a\n", "not valid TOML"),
    ("memory_budget_mb = 0\n[models.a]\nversions = {1 = 'PKG'}\n", "memory_budget_mb must be a number"),
])
def test_repository_file_errors_name_the_file_and_field(versions, tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "repo.toml"
    file.write_text(text.replace("PKG", str(versions[1][0])))
    with pytest.raises(InputError) as caught:
        read_repository(file)
    assert str(file) in str(caught.value) and message in str(caught.value)
    result = run_cli("serve", file)  # the CLI: exit 2, one line, before anything is served
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_directory_errors_and_a_corrupt_version_refused_at_start(versions, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("serve", empty)
    assert result.exit_code == 2 and "no models in it" in result.output
    (empty / "m").mkdir()
    result = run_cli("serve", empty)
    assert result.exit_code == 2 and "m: no versions in it" in result.output
    shutil.copytree(versions[1][0], empty / "m" / "1")
    _corrupt(empty / "m" / "1")
    result = run_cli("serve", empty)
    assert result.exit_code == 1 and "refusing to serve model m version 1" in result.output
    result = run_cli("serve", versions[1][0], "--poll-s", "1")
    assert result.exit_code == 2 and "--poll-s goes with a model repository" in result.output
    result = run_cli("serve", empty, "--register", "zk://127.0.0.1:1/x", "--workers", "2")
    assert result.exit_code == 2 and "--register with a model repository needs --workers 1" in result.output
    result = run_cli("serve", versions[1][0], "--memory-budget-mb", "100")
    assert result.exit_code == 2 and "--memory-budget-mb goes with a model repository" in result.output


# -- a served repository ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(versions, tmp_path_factory: pytest.TempPathFactory):
    """Model a (versions 1 and 2, labels stable=1 and canary=2, default stable) and model b (a directory with
    version 3), over HTTP and gRPC, with an admin key and an infer-only key."""
    tmp = tmp_path_factory.mktemp("served")
    (tmp / "b").mkdir()
    shutil.copytree(versions[3][0], tmp / "b" / "3")
    file = tmp / "repo.toml"
    file.write_text(f'[models.a]\nversions = {{1 = "{versions[1][0]}", 2 = "{versions[2][0]}"}}\npolicy = "all"\n'
                    'labels = {stable = 1, canary = 2}\ndefault = "stable"\n'
                    f'[models.b]\nsource = "{tmp / "b"}"\n')
    grpc_port = free_port()
    server = Process(file, "--grpc-port", str(grpc_port), "--api-keys-file", str(_keys(tmp)))
    server.grpc_port = grpc_port  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_every_model_and_version_over_v2_rest(served, versions) -> None:
    one, two, three = (versions[v][1] for v in (1, 2, 3))
    default = _infer(served, "/v2/models/a/infer")
    assert default.json()["model_version"] == "1"  # the default label, stable
    np.testing.assert_allclose(_output(default), one, atol=1e-4)
    np.testing.assert_allclose(_output(_infer(served, "/v2/models/a/versions/2/infer")), two, atol=1e-4)
    np.testing.assert_allclose(_output(_infer(served, "/v2/models/b/infer", INFER)), three, atol=1e-4)
    meta = httpx.get(f"{served.url}/v2/models/a", headers=_auth()).json()
    assert meta["versions"] == ["1", "2"]
    missing = _infer(served, "/v2/models/a/versions/7/infer")
    assert missing.status_code == 404 and "has no version '7'" in missing.text and "1, 2" in missing.text
    # /predict needs one model or a default_model: this repository has two and none.
    answer = httpx.post(f"{served.url}/predict", headers=_auth(), json={"input_data": X.tolist()})
    assert answer.status_code == 404 and "several models ('a', 'b')" in answer.text
    metrics = httpx.get(f"{served.url}/metrics", headers=_auth()).text
    assert 'modelpack_requests_total{model="a",version="2",route="/v2/models/{name}/versions/{version}/infer",' \
           'status="200"} 1' in metrics
    assert 'modelpack_batch_size_count{model="b",version="3"}' in metrics
    document = httpx.get(f"{served.url}/openapi.json", headers=_auth()).json()
    assert [(m["name"], m["versions"], m["labels"]) for m in document["x-models"]] == [
        ("a", ["1", "2"], {"stable": "1", "canary": "2"}), ("b", ["3"], {})]
    page = httpx.get(f"{served.url}/docs", headers=_auth()).text
    assert "stable=1, canary=2" in page


def test_tf_serving_versions_and_labels(served, versions) -> None:
    rows = {"instances": X.tolist()}
    for path, version in (("/v1/models/a/labels/canary", 2), ("/v1/models/a/versions/1", 1),
                          ("/v1/models/a", 1), ("/v1/models/a/labels/stable", 1)):
        answer = httpx.post(f"{served.url}{path}:predict", headers=_auth(), json=rows, timeout=30)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(np.array(answer.json()["predictions"]), versions[version][1], atol=1e-4)
    status = httpx.get(f"{served.url}/v1/models/a", headers=_auth()).json()
    assert [s["version"] for s in status["model_version_status"]] == ["1", "2"]
    status = httpx.get(f"{served.url}/v1/models/a/labels/canary", headers=_auth()).json()
    assert [s["version"] for s in status["model_version_status"]] == ["2"]
    meta = httpx.get(f"{served.url}/v1/models/a/labels/canary/metadata", headers=_auth()).json()
    assert meta["model_spec"]["version"] == "2"
    nope = httpx.get(f"{served.url}/v1/models/a/labels/beta", headers=_auth())
    assert nope.status_code == 404 and "no label 'beta'" in nope.text


def test_v2_grpc_per_model_and_version(served, versions) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
    feed = grpcclient.InferInput("features", list(X.shape), "FP32")
    feed.set_data_from_numpy(X)
    result = client.infer("a", [feed], model_version="2", headers=_auth())
    np.testing.assert_allclose(result.as_numpy("logits"), versions[2][1], atol=1e-4)
    assert result.get_response().model_version == "2"
    result = client.infer("b", [feed], headers=_auth(INFER))
    np.testing.assert_allclose(result.as_numpy("logits"), versions[3][1], atol=1e-4)
    assert list(client.get_model_metadata("a", headers=_auth()).versions) == ["1", "2"]
    client.close()
    metrics = httpx.get(f"{served.url}/metrics", headers=_auth()).text
    assert 'modelpack_requests_total{model="a",version="2",route="grpc ModelInfer",status="200"} 1' in metrics


def test_tritonclient_repository_calls_over_http_and_grpc(served) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    http = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    index = http.get_model_repository_index(headers=_auth())
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("a", "1", "READY"), ("a", "2", "READY"), ("b", "3", "READY")}
    with pytest.raises(InferenceServerException, match="lacks the 'admin' scope"):
        http.get_model_repository_index(headers=_auth(INFER))
    with pytest.raises(InferenceServerException, match="lacks the 'admin' scope"):
        http.unload_model("b", headers=_auth(INFER))
    http.unload_model("b", headers=_auth())
    assert _infer(served, "/v2/models/b/infer").status_code == 404
    assert {m["state"] for m in http.get_model_repository_index(headers=_auth()) if m["name"] == "b"} == {
        "UNAVAILABLE"}
    assert not http.is_model_ready("b", headers=_auth())
    http.load_model("b", headers=_auth())
    assert _infer(served, "/v2/models/b/infer").status_code == 200
    with pytest.raises(InferenceServerException, match="unknown model 'zzz'"):
        http.load_model("zzz", headers=_auth())
    http.close()

    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
    index = grpc.get_model_repository_index(headers=_auth())
    assert {(m.name, m.version, m.state) for m in index.models} == {
        ("a", "1", "READY"), ("a", "2", "READY"), ("b", "3", "READY")}
    with pytest.raises(InferenceServerException, match="lacks the 'admin' scope"):
        grpc.load_model("b", headers=_auth(INFER))
    grpc.unload_model("a", headers=_auth())
    answer = _infer(served, "/v2/models/a/infer")
    assert answer.status_code == 404 and "not loaded" in answer.text
    assert _infer(served, "/v2/models/b/infer").status_code == 200  # the other model is untouched
    grpc.load_model("a", headers=_auth())
    assert _infer(served, "/v2/models/a/versions/2/infer").status_code == 200
    ready = grpc.get_model_repository_index(headers=_auth(), as_json=True)
    assert len(ready["models"]) == 3
    grpc.close()


# -- updates while serving ----------------------------------------------------------------------------------------


class Load:
    """Requests in a loop on a thread, recording each answer's status and version, until stopped."""

    def __init__(self, server: Process, path: str) -> None:
        self.server, self.path = server, path
        self.answers: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    answer = client.post(self.path, json={"inputs": [
                        {"name": "features", "shape": [1, 16], "datatype": "FP32", "data": X[0].tolist()}]})
                    self.answers.append((answer.status_code, answer.json().get("model_version")))
                except httpx.HTTPError as exc:
                    self.answers.append((0, repr(exc)))

    def stop(self) -> list[tuple[int, str | None]]:
        self._stop.set()
        self.thread.join(timeout=60)
        return self.answers


def test_polling_swaps_versions_refuses_a_broken_one_and_keeps_serving(versions, tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    shutil.copytree(versions[1][0], root / "m" / "1")
    server = Process(root, "--poll-s", "0.2")
    load = Load(server, "/v2/models/m/infer")
    try:
        wait_until(lambda: len(load.answers) >= 5, 60, "requests to be answered")
        _copy_in(versions[2][0], root / "m" / "2")
        wait_until(lambda: server.logged("model m version 1 unloaded"), 120, "version 1 to be replaced")
        np.testing.assert_allclose(_output(_infer(server, "/v2/models/m/infer")), versions[2][1], atol=1e-4)

        broken = tmp_path / "broken"
        shutil.copytree(versions[3][0], broken)
        _corrupt(broken)
        _copy_in(broken, root / "m" / "3")
        wait_until(lambda: server.metric("modelpack_repository_load_failures_total") == 1, 120,
                   "the broken version to be refused")
        polls = server.metric("modelpack_repository_polls_total")
        wait_until(lambda: server.metric("modelpack_repository_polls_total") >= polls + 3, 60, "three more polls")
        assert server.metric("modelpack_repository_load_failures_total") == 1  # not retried: it has not changed
        assert 'reason="verify"' in httpx.get(f"{server.url}/metrics").text
        np.testing.assert_allclose(_output(_infer(server, "/v2/models/m/infer")), versions[2][1], atol=1e-4)
        # A later good version still replaces it; by then many polls have passed over the broken one.
        _copy_in(versions[1][0], root / "m" / "4")
        wait_until(lambda: server.logged("model m version 2 unloaded"), 120, "version 4 to replace version 2")
        assert _infer(server, "/v2/models/m/infer").json()["model_version"] == "4"
        answers = load.stop()
    finally:
        load.stop()
        server.stop()
    assert server.log.count("model m version 3 refused") == 1, server.log  # one line, not one per poll
    assert {status for status, _ in answers} == {200}, [a for a in answers if a[0] != 200][:5]
    seen = [version for _, version in answers]
    assert set(seen) == {"1", "2", "4"} and seen == sorted(seen, key=int)  # never back to an older version


def test_sighup_moves_a_label(versions, tmp_path: Path) -> None:
    file = tmp_path / "repo.toml"
    body = f'[models.a]\nversions = {{1 = "{versions[1][0]}", 2 = "{versions[2][0]}"}}\npolicy = "all"\n'
    file.write_text(body + "labels = {stable = 1, canary = 2}\ndefault = \"stable\"\n")
    server = Process(file)
    try:
        assert _infer(server, "/v2/models/a/infer").json()["model_version"] == "1"
        tmp = tmp_path / "repo.toml.new"
        tmp.write_text(body + "labels = {stable = 2}\ndefault = \"stable\"\n")
        tmp.rename(file)
        server.proc.send_signal(signal.SIGHUP)

        def moved() -> bool:
            status = httpx.get(f"{server.url}/v1/models/a/labels/stable").json()
            return bool(status["model_version_status"][0]["version"] == "2")

        wait_until(moved, 60, "the stable label to move to version 2")
        assert _infer(server, "/v2/models/a/infer").json()["model_version"] == "2"
        assert httpx.get(f"{server.url}/v1/models/a/labels/canary").status_code == 404
        # A broken file is refused with one line, and the labels stay.
        file.write_text("[models.a\n")
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: server.logged("repository not re-read"), 60, "the bad file to be refused")
        assert _infer(server, "/v2/models/a/infer").json()["model_version"] == "2"
    finally:
        code, log = server.stop()
    assert code == 0, log


def test_polling_with_require_signature_refuses_an_unsigned_version_and_serves_a_signed_mpk(
        versions, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert run_cli("keygen", "-o", keys).exit_code == 0
    signed = {}
    for seed in (1, 2):
        signed[seed] = tmp_path / f"signed{seed}"
        shutil.copytree(versions[seed][0], signed[seed])
        result = run_cli("sign", signed[seed], "--key", keys / "private.pem")
        assert result.exit_code == 0, result.output
    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    shutil.copytree(signed[1], root / "m" / "1")
    server = Process(root, "--poll-s", "0.2", "--require-signature", str(keys / "public.pem"))
    try:
        _copy_in(versions[3][0], root / "m" / "2")  # unsigned
        wait_until(lambda: server.logged("model m version 2 refused (verify)"), 120, "the unsigned version refused")
        assert _infer(server, "/v2/models/m/infer").json()["model_version"] == "1"
        mpk = tmp_path / "3.mpk"
        result = run_cli("pack", signed[2], "-o", mpk)
        assert result.exit_code == 0, result.output
        shutil.copy(mpk, root / "m" / ".3.mpk.tmp")
        (root / "m" / ".3.mpk.tmp").rename(root / "m" / "3.mpk")
        wait_until(lambda: server.logged("model m version 1 unloaded"), 120, "the signed .mpk to replace version 1")
        answer = _infer(server, "/v2/models/m/infer")
        assert answer.json()["model_version"] == "3"
        np.testing.assert_allclose(_output(answer), versions[2][1], atol=1e-4)
    finally:
        server.stop()


def test_a_refused_version_leaves_the_policy_choosing_among_the_rest(versions, tmp_path: Path) -> None:
    """With {latest = 2} serving 1 and 2, a broken 3 must not cost version 1 its place."""
    (tmp_path / "m").mkdir()
    shutil.copytree(versions[1][0], tmp_path / "m" / "1")
    shutil.copytree(versions[2][0], tmp_path / "m" / "2")
    file = tmp_path / "repo.toml"
    file.write_text(f'[models.m]\nsource = "{tmp_path / "m"}"\npolicy = {{latest = 2}}\n')
    server = Process(file, "--poll-s", "0.2")
    try:
        broken = tmp_path / "broken"
        shutil.copytree(versions[3][0], broken)
        _corrupt(broken)
        _copy_in(broken, tmp_path / "m" / "3")
        wait_until(lambda: server.metric("modelpack_repository_load_failures_total") == 1, 120, "the refusal")
        polls = server.metric("modelpack_repository_polls_total")
        wait_until(lambda: server.metric("modelpack_repository_polls_total") >= polls + 2, 60, "two more polls")
        index = {row["version"]: row for row in httpx.post(f"{server.url}/v2/repository/index").json()}
        assert index["1"]["state"] == index["2"]["state"] == "READY"
        assert index["3"]["state"] == "UNAVAILABLE" and "does not match the manifest" in index["3"]["reason"], index
        for version in (1, 2):
            answer = _infer(server, f"/v2/models/m/versions/{version}/infer")
            np.testing.assert_allclose(_output(answer), versions[version][1], atol=1e-4)
    finally:
        server.stop()
    assert "version 1 unloaded" not in server.log


# -- memory budget ----------------------------------------------------------------------------------------------

XB = np.random.default_rng(8).standard_normal((3, 1024)).astype(np.float32)


@pytest.fixture(scope="module")
def sized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    """Models a, b, c of 8 MB of weights each (1024-2048-4 MLPs), and huge (24 MB), with their outputs on XB."""
    base = tmp_path_factory.mktemp("sized")
    return {name: _mlp_package(base, name, f"pkg-{name}", XB, inputs=1024, hidden=hidden, seed=seed)
            for seed, (name, hidden) in enumerate((("a", 2048), ("b", 2048), ("c", 2048), ("huge", 6144)))}


def _infer_rows(server: Process, model: str, rows: np.ndarray) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", headers=_auth(), timeout=60, json={
        "inputs": [{"name": "features", "shape": list(rows.shape), "datatype": "FP32",
                    "data": rows.ravel().tolist()}]})


def _series(server: Process, name: str, model: str) -> float:
    """One model's value of a per-model metric (0 when it has none)."""
    import re

    text = httpx.get(f"{server.url}/metrics", headers=_auth(), timeout=5).text
    found = re.findall(rf'^{name}\{{model="{model}",version="1"\}} (\S+)$', text, re.M)
    return float(found[0]) if found else 0.0


def _index(server: Process) -> dict[str, dict]:
    response = httpx.post(f"{server.url}/v2/repository/index", headers=_auth(), timeout=10)
    assert response.status_code == 200, response.text
    return {row["name"]: row for row in response.json()}


@pytest.mark.slow  # seconds: left out of make test-fast
def test_memory_budget_loads_on_first_request_and_unloads_the_least_recently_used_idle_model(
        sized, tmp_path: Path) -> None:
    root = tmp_path / "models"
    for name, (package, _) in sized.items():
        (root / name).mkdir(parents=True)
        shutil.copytree(package, root / name / "1")
    # Room for two of a, b, c (about 8.5 MB each once loaded), not three. A 1-row request waits (10 s) for a
    # full batch of 3: that is how a request is held in flight below, released by sending the 2 rows it lacks.
    grpc_port = free_port()
    server = Process(root, "--memory-budget-mb", "21", "--api-keys-file", str(_keys(tmp_path)), "--max-batch-size",
                     "3", "--batch-timeout-ms", "10000", "--grpc-port", str(grpc_port))
    try:
        assert server.logged("CPU budget: ") and "memory budget 21 MB" in server.log
        index = _index(server)
        assert {row["state"] for row in index.values()} == {"UNAVAILABLE"}, index
        assert "not loaded yet: loads on its next request (memory budget 21 MB)" in index["a"]["reason"]

        # Concurrent first requests: one load, every request answered by it.
        answers: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: answers.append(_infer_rows(server, "a", XB))) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for response in answers:
            np.testing.assert_allclose(_output_of(response), sized["a"][1], rtol=1e-4, atol=1e-4)
        assert _series(server, "modelpack_repository_loads_total", "a") == 1

        np.testing.assert_allclose(_output_of(_infer_rows(server, "b", XB)), sized["b"][1], rtol=1e-4, atol=1e-4)
        index = _index(server)
        assert index["a"]["state"] == index["b"]["state"] == "READY", (index, server.log)
        assert 8 <= index["a"]["memory_mb"] <= 12 and 8 <= index["b"]["memory_mb"] <= 12, index
        assert 8 * 2**20 <= _series(server, "modelpack_model_memory_bytes", "b") <= 12 * 2**20

        # a used last, so c's load unloads b; b's next request loads it again, and a goes.
        assert _infer_rows(server, "a", XB).status_code == 200
        np.testing.assert_allclose(_output_of(_infer_rows(server, "c", XB)), sized["c"][1], rtol=1e-4, atol=1e-4)
        index = _index(server)
        assert index["b"]["state"] == "UNAVAILABLE" and "evicted" in index["b"]["reason"], index
        assert index["a"]["state"] == index["c"]["state"] == "READY"
        assert _series(server, "modelpack_repository_evictions_total", "b") == 1
        assert _series(server, "modelpack_model_memory_bytes", "b") == 0
        np.testing.assert_allclose(_output_of(_infer_rows(server, "b", XB)), sized["b"][1], rtol=1e-4, atol=1e-4)
        assert _series(server, "modelpack_repository_loads_total", "b") == 2
        assert _series(server, "modelpack_repository_evictions_total", "a") == 1

        # c in flight (its request queued) and least recently used: a's load unloads b instead.
        held: list[httpx.Response] = []
        holder = threading.Thread(target=lambda: held.append(_infer_rows(server, "c", XB[:1])))
        holder.start()
        wait_until(lambda: _series(server, "modelpack_queue_depth", "c") == 1, 30, "c's request to be queued")
        assert _infer_rows(server, "b", XB).status_code == 200  # b most recently used, c least
        np.testing.assert_allclose(_output_of(_infer_rows(server, "a", XB)), sized["a"][1], rtol=1e-4, atol=1e-4)
        assert _series(server, "modelpack_repository_evictions_total", "b") == 2
        assert _series(server, "modelpack_repository_evictions_total", "c") == 0
        assert holder.is_alive() and _index(server)["c"]["state"] == "READY"
        rest = _infer_rows(server, "c", XB[1:])  # the 2 rows that fill c's batch: both requests run
        holder.join()
        np.testing.assert_allclose(_output_of(held[0]), sized["c"][1][:1], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(_output_of(rest), sized["c"][1][1:], rtol=1e-4, atol=1e-4)

        # A model over the budget alone: 503 naming it and the budget, and nothing loaded or unloaded for it.
        response = _infer_rows(server, "huge", XB)
        assert response.status_code == 503, response.text
        assert "model 'huge' version 1 needs" in response.text and "memory budget of 21 MB" in response.text
        assert _series(server, "modelpack_repository_loads_total", "huge") == 0
        assert _index(server)["a"]["state"] == "READY"

        # Over gRPC the same: b (unloaded above) loads on its request; the index there carries no memory_mb.
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        feed = grpcclient.InferInput("features", list(XB.shape), "FP32")
        feed.set_data_from_numpy(XB)
        result = client.infer("b", [feed], headers=_auth())
        np.testing.assert_allclose(result.as_numpy("logits"), sized["b"][1], rtol=1e-4, atol=1e-4)
        states = {m.name: m.state for m in client.get_model_repository_index(headers=_auth()).models}
        client.close()
        assert states["b"] == "READY" and _series(server, "modelpack_repository_loads_total", "b") == 3

        # The repository API under a budget: unload frees it at once, load loads it now (not on a request).
        assert httpx.post(f"{server.url}/v2/repository/models/b/unload", headers=_auth()).status_code == 200
        assert _index(server)["b"]["reason"] == "unloaded"
        assert _infer_rows(server, "b", XB).status_code == 404
        assert httpx.post(f"{server.url}/v2/repository/models/b/load", headers=_auth(), timeout=60).status_code == 200
        assert _index(server)["b"]["state"] == "READY"
        assert _series(server, "modelpack_repository_loads_total", "b") == 4
    finally:
        server.stop()


def _output_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array(response.json()["outputs"][0]["data"], np.float32).reshape(-1, 4)
