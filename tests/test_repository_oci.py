"""A repository model whose versions come from an OCI registry tag (`source = "oci://HOST/REPO:TAG"`), against a
real registry (Debian's docker-registry): each digest the tag takes is pulled, verified (with
--require-signature, its signature), loaded, warmed up and swapped in like a directory version."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import oci_registry
import pytest
from conftest import make_onnx_mlp, run_cli, wait_until
from servers import Process

if not oci_registry.available():
    if os.environ.get("MODELPACK_CI") == "1":  # .ci/run installs docker-registry: never skip there
        raise RuntimeError("docker-registry is missing, but .ci/run should have installed it")
    pytest.skip("the registry (Debian docker-registry) is not installed", allow_module_level=True)

X = np.random.default_rng(7).standard_normal((3, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    server = oci_registry.Registry(tmp_path_factory.mktemp("registry")).start()
    yield server
    server.stop()


def _infer(server: Process) -> tuple[str, np.ndarray]:
    answer = httpx.post(f"{server.url}/v2/models/m/infer", timeout=30, json={
        "inputs": [{"name": "features", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body["model_version"], np.array(body["outputs"][0]["data"], np.float32).reshape(len(X), -1)


def test_polling_follows_an_oci_tag_from_digest_to_digest(registry, tmp_path: Path) -> None:
    import onnxruntime as ort

    assert run_cli("keygen", "-o", tmp_path / "keys").exit_code == 0
    packages, expected = {}, {}
    for seed in (1, 2, 3):
        onnx_file = make_onnx_mlp(tmp_path / f"mlp{seed}.onnx", seed=seed)
        out = packages[seed] = tmp_path / f"pkg{seed}"
        assert run_cli("optimize", onnx_file, "-o", out, "-q", "export").exit_code == 0
        if seed != 3:  # version 3 is pushed unsigned
            result = run_cli("sign", out, "--key", tmp_path / "keys" / "private.pem")
            assert result.exit_code == 0, result.output
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        expected[seed] = session.run(None, {"features": X})[0]
    tag = f"oci://{registry.address}/models/m:stable"
    assert run_cli("push", packages[1], tag).exit_code == 0
    file = tmp_path / "repo.toml"
    file.write_text(f'[models.m]\nsource = "{tag}"\n')
    cache = tmp_path / "cache"
    server = Process(file, "--poll-s", "0.2", "--oci-cache", str(cache),
                     "--require-signature", str(tmp_path / "keys" / "public.pem"))
    try:
        version, output = _infer(server)
        assert version == "1"
        np.testing.assert_allclose(output, expected[1], atol=1e-4)

        pushed = run_cli("push", packages[2], tag, "--json")  # the tag moves to a new digest
        assert pushed.exit_code == 0, pushed.output
        wait_until(lambda: server.logged("model m version 1 unloaded"), 120, "the new digest to replace version 1")
        version, output = _infer(server)
        assert version == "2"
        np.testing.assert_allclose(output, expected[2], atol=1e-4)
        index = httpx.post(f"{server.url}/v2/repository/index").json()
        assert [(row["version"], row["state"]) for row in index] == [("1", "UNAVAILABLE"), ("2", "READY")]

        assert run_cli("push", packages[3], tag).exit_code == 0  # unsigned: refused, version 2 keeps serving
        wait_until(lambda: server.metric("modelpack_repository_load_failures_total") == 1, 120, "the refusal")
        polls = server.metric("modelpack_repository_polls_total")
        wait_until(lambda: server.metric("modelpack_repository_polls_total") >= polls + 3, 60, "three more polls")
        assert server.metric("modelpack_repository_load_failures_total") == 1  # not pulled again each poll
        assert 'reason="pull"' in httpx.get(f"{server.url}/metrics").text
        assert _infer(server)[0] == "2"
    finally:
        code, log = server.stop()
    assert code == 0, log
    assert log.count("not pulled, the versions being served stay") == 1, log
    assert "the package is not signed" in log.split("not pulled")[1].splitlines()[0]
    assert sorted(p.name for p in next(cache.iterdir()).iterdir()) == ["1", "2", "digests.json"]

    # A restart serves what was pulled and pulls nothing the tag still points at (but 3 is still refused).
    shutil.rmtree(next(cache.iterdir()) / "1")
    again = Process(file, "--oci-cache", str(cache), "--require-signature", str(tmp_path / "keys" / "public.pem"))
    try:
        assert _infer(again)[0] == "2"
    finally:
        again.stop()
