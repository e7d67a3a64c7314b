"""Proving robustness: an HTTP fuzzer, property tests of parsing and decoding, and fault injection.

The numbers on the Reliability page (docs/reliability.md) come from these tests: FUZZ_CASES
requests, every one answered below 500, and the server still serving at the end.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import BIN, EXAMPLE, plugin_env, run_cli, run_subprocess, tree_digest, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from servers import InProcess

from modelpack.errors import ModelpackError
from modelpack.package import manifest as mf
from modelpack.serve import tensors

FUZZ_CASES = 1500
KEY = "fuzz-key-123456"
X = np.load(EXAMPLE / "eval.npz")["x"][:2]

# --- the HTTP fuzzer ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
names = st.sampled_from(["model", "image", "probs", "nope", "", "../etc", "%00", "m" * 300]) | st.text(max_size=12)
datatypes = st.sampled_from(list(tensors.V2_TO_NUMPY) + ["BYTES", "FP8", "", "fp32"]) | st.text(max_size=6)
shapes = st.lists(st.integers(-3, 70), max_size=5) | json_values
tensor = st.fixed_dictionaries(
    {"name": names, "datatype": datatypes, "shape": shapes},
    optional={"data": st.lists(st.floats(allow_nan=False, width=32), max_size=130) | json_values,
              "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-5, 600) | json_values,
                                                                "binary_data": st.booleans()})},
)
v2_body = st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=3)},
                                optional={"outputs": st.lists(st.fixed_dictionaries({"name": names}), max_size=2),
                                          "id": json_values, "parameters": json_values})
tfs_body = st.fixed_dictionaries({}, optional={"instances": json_values, "inputs": json_values,
                                               "signature_name": st.text(max_size=8)})
simple_body = st.fixed_dictionaries({}, optional={"input_data": json_values | st.just(X.tolist())})
valid_infer = st.just({"inputs": [{"name": "image", "shape": [2, 8, 8, 1], "datatype": "FP32",
                                   "data": X.ravel().tolist()}]})
paths = st.sampled_from([
    "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/model", "/v2/models/model/ready",
    "/v2/models/model/infer", "/v2/models/model/versions/1/infer", "/v2/models/model/versions/9/infer",
    "/v2/models/other/infer", "/v1/models/model", "/v1/models/model:predict", "/v1/models/model/versions/1:predict",
    "/predict", "/metrics", "/openapi.json", "/docs", "/", "/v2/models//infer", "/v1/models/:predict",
]) | st.text(alphabet="/abcdefmodel:v12_.-", max_size=40).map(lambda p: "/" + p.lstrip("/"))
bodies = st.one_of(v2_body, tfs_body, simple_body, valid_infer, json_values,
                   st.binary(max_size=300), st.text(max_size=200))
auth = st.sampled_from([f"Bearer {KEY}", f"Bearer {KEY}x", "Bearer ", "Basic abc", "", KEY])


def _encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def fuzz_server(digits_package: Path):
    server = InProcess(digits_package, api_key=KEY, max_batch_size=8, max_body_mb=0.05, rate_limit="100000/s")
    yield server
    server.close()


def test_http_fuzz_never_5xx(fuzz_server: InProcess) -> None:
    seen: dict[int, int] = {}

    @settings(max_examples=FUZZ_CASES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]), path=paths,
           body=bodies, authorization=auth, header_length=st.none() | st.integers(-10, 5000) | st.text(alphabet="0123456789-+ x.e", max_size=5),
           content_type=st.sampled_from(["application/json", "application/octet-stream", "text/plain", ""]))
    def one(method: str, path: str, body: Any, authorization: str, header_length: Any, content_type: str) -> None:
        headers = {"Authorization": authorization, "Content-Type": content_type}
        data = _encode(body)
        if header_length is not None:
            headers["Inference-Header-Content-Length"] = str(header_length)
            data += np.arange(64, dtype=np.float32).tobytes()
        response = fuzz_server.request(method, path, content=data, headers=headers)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (method, path, data[:200], response.text)
        if response.status_code >= 400 and method != "HEAD":
            assert "error" in response.json()

    one()
    assert sum(seen.values()) == FUZZ_CASES
    assert any(code == 200 for code in seen) and any(400 <= code < 500 for code in seen)
    # Still serving, and still right.
    assert fuzz_server.get("/v2/health/ready").status_code == 200
    ok = fuzz_server.post("/v2/models/model/infer", headers={"Authorization": f"Bearer {KEY}"},
                          json={"inputs": [{"name": "image", "shape": [2, 8, 8, 1], "datatype": "FP32",
                                            "data": X.ravel().tolist()}]})
    assert ok.status_code == 200


# --- property tests ------------------------------------------------------------------------------------------

def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, prefix + (i,))
    return found


@pytest.fixture(scope="module")
def manifest(digits_package: Path) -> dict:
    return mf.read(digits_package / mf.MANIFEST_NAME)


@settings(max_examples=400, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_manifest_mutation_is_accepted_or_clearly_rejected(manifest: dict, data: st.DataObject) -> None:
    mutated = copy.deepcopy(manifest)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(mutated)))
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            mutated = data.draw(json_values)
            break
        parent = mutated
        for step in path[:-1]:
            parent = parent[step]
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=8))] = data.draw(json_values)
        else:
            parent[path[-1]] = data.draw(json_values)
    try:
        result = mf.validate(mutated)
        assert result is mutated
    except ModelpackError as exc:  # IntegrityError: a one-line message naming the field
        assert "\n" not in str(exc) and str(exc)


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(raw=st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_manifest_file_is_read_or_clearly_rejected(raw: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("m") / mf.MANIFEST_NAME
    path.write_bytes(raw)
    with pytest.raises(ModelpackError):
        mf.read(path)


DTYPES = list(tensors.V2_TO_NUMPY.items())


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(data=st.data(), datatype=st.sampled_from(DTYPES), shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=4))
def test_tensor_round_trips_json_and_binary(data: st.DataObject, datatype: tuple, shape: tuple) -> None:
    name, dtype = datatype
    finite = dict(allow_nan=False, allow_infinity=False) if dtype.kind == "f" else {}
    array = data.draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(dtype, **finite)))
    # JSON, nested (as most clients send) and flat, through a real JSON text.
    for payload in (array.tolist(), array.ravel().tolist()):
        wire = json.loads(json.dumps({"name": "t", "datatype": name, "shape": list(shape), "data": payload}))
        _, decoded, _ = tensors.decode(wire, None, 0)
        assert decoded.dtype == dtype and decoded.shape == shape and np.array_equal(decoded, array)
    # Binary: the server's encoder, then its decoder.
    meta, raw = tensors.encode("t", array, binary=True)
    assert meta["datatype"] == name and raw is not None
    _, decoded, offset = tensors.decode(meta, memoryview(raw), 0)
    assert offset == len(raw) and decoded.tobytes() == array.tobytes() and decoded.shape == shape
    # And the JSON encoder's data decodes back to the same tensor.
    meta, _ = tensors.encode("t", array, binary=False)
    meta["data"] = np.asarray(meta["data"]).tolist()
    _, decoded, _ = tensors.decode(json.loads(json.dumps(meta)), None, 0)
    assert np.array_equal(decoded, array)


# --- fault injection -----------------------------------------------------------------------------------------

def test_kill_9_during_optimize_keeps_the_previous_package(plugin_site: Path, models, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    assert run_cli("optimize", models["onnx"].path, "-o", out, "-q", "export").exit_code == 0
    before = tree_digest(out)
    proc = subprocess.Popen([str(BIN / "modelpack"), "optimize", str(models["onnx"].path), "-o", str(out), "--force",
                             "nap", "--seconds", "60"], env={**os.environ, **plugin_env(plugin_site)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def napping() -> bool:
        assert proc.poll() is None, "the run ended before it could be killed"
        return any(p.name.startswith(".pkg.tmp-work") and any(p.iterdir()) for p in tmp_path.iterdir() if p.is_dir())

    wait_until(napping, 60, "the nap stage to write its scratch file")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def lock_released() -> bool:  # the run's forked child gets SIGKILL from PR_SET_PDEATHSIG, a moment later
        import fcntl

        with open(tmp_path / ".pkg.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
            return True

    wait_until(lock_released, 30, "the killed run's child to exit and release the output's lock")
    assert tree_digest(out) == before  # the package at the output path is whole and unchanged
    assert run_cli("verify", out).exit_code == 0
    # The next run sweeps what the killed one left and succeeds.
    assert run_cli("optimize", models["onnx"].path, "-o", out, "-q", "--force", "export").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_truncated_artifact_fails_verify_and_serve(digits_package: Path, copy_of) -> None:
    pkg = copy_of(digits_package)
    model = pkg / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    result = run_cli("verify", pkg)
    assert result.exit_code == 1 and "model.onnx" in result.output
    served = run_subprocess("serve", pkg, "--get", "/v2/health/ready")
    assert served.returncode == 1 and "refusing to serve" in served.stderr and "model.onnx" in served.stderr


def test_two_runs_into_one_output_one_wins(models, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    cmd = [str(BIN / "modelpack"), "optimize", str(models["tf_keras_h5"].path), "-o", str(out), "export",
           "--format", "onnx"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] in (1, 2), results
    loser = next(err for code, err in results if code != 0)
    assert ("another modelpack run" in loser or "exists" in loser) and "Traceback" not in loser
    assert run_cli("verify", out).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 600 KiB tmpfs when this process may mount one; else None (the test limits file size instead)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow  # TensorFlow
def test_full_disk_gives_a_clear_error_and_no_partial_package(small_disk: Path | None, tmp_path: Path) -> None:
    model = EXAMPLE / "model.keras"  # 1.2 MB: cannot fit
    if small_disk is not None:
        out, preexec = small_disk / "pkg", None
    else:
        out = tmp_path / "pkg"

        def preexec() -> None:  # writes past 600 KiB fail with EFBIG instead of killing the process
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (600 * 1024, 600 * 1024))

    proc = subprocess.run([str(BIN / "modelpack"), "optimize", str(model), "-o", str(out), "export", "--format",
                           "onnx", "--format", "tflite"], capture_output=True, text=True, timeout=300,
                          preexec_fn=preexec)
    assert proc.returncode in (1, 2), proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:") and ("No space left" in last or "too large" in last.lower()), proc.stderr[-800:]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".pkg")] == []  # no temp dirs left
    shutil.rmtree(out, ignore_errors=True)
