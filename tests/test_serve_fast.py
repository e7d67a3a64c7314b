"""The server on an ONNX-only package, in-process: the part of the serve tests the fast loop runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelpack.testing import serve_in_process

X = np.random.default_rng(3).standard_normal((3, 16)).astype("float32")


@pytest.fixture(scope="module")
def mlp(mlp_package: Path):
    with serve_in_process(mlp_package) as client:
        yield client


def test_health_metadata_and_infer_match_onnxruntime(mlp, mlp_package: Path) -> None:
    import onnxruntime as ort

    assert mlp.get("/v2/health/live").status_code == 200 and mlp.get("/v2/health/ready").status_code == 200
    meta = mlp.get("/v2/models/mlp").json()
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}]
    body = {"inputs": [{"name": "features", "shape": [3, 16], "datatype": "FP32", "data": X.ravel().tolist()}]}
    response = mlp.post("/v2/models/mlp/infer", json=body)
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    expected = ort.InferenceSession(str(mlp_package / "model.onnx")).run(None, {"features": X})[0]
    assert out["name"] == "logits" and out["shape"] == [3, 4]
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(3, 4), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("inputs", "needle"), [
    ([{"name": "features", "shape": [3, 15], "datatype": "FP32", "data": [0.0] * 45}], "features"),
    ([{"name": "nope", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}], "nope"),
    ([{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 3}], "features"),
])
def test_a_bad_request_is_a_400_that_names_the_input(mlp, inputs, needle: str) -> None:
    response = mlp.post("/v2/models/mlp/infer", json={"inputs": inputs})
    assert response.status_code == 400 and needle in response.json()["error"]
    assert mlp.get("/v2/health/ready").status_code == 200  # and it keeps serving
