"""The server on an ONNX-only package, in-process: the part of the serve tests the fast loop runs."""

from __future__ import annotations

import html
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


def test_a_non_string_name_with_a_shape_is_a_400(mlp_package: Path) -> None:
    """schemathesis found this one: the early batch check looked a dict up in a dict."""
    with serve_in_process(mlp_package) as client:
        answer = client.post("/v2/models/mlp/infer", json={"inputs": [{"name": {}, "shape": [], "datatype": "BOOL",
                                                                        "data": [None, None]}]})
        assert answer.status_code == 400 and "name" in answer.json()["error"]


def test_one_route_table_drives_dispatch_openapi_and_docs(mlp_package: Path) -> None:
    from modelpack.serve.openapi import curl, example
    from modelpack.serve.routes import ROUTES

    with serve_in_process(mlp_package) as client:
        document = client.get("/openapi.json").json()
        assert {(path, method.upper()) for path, ops in document["paths"].items() for method in ops} == {
            (route.template, route.method) for route in ROUTES}
        assert {"/docs", "/openapi.json"} <= set(document["paths"])
        infer = document["paths"]["/v2/models/{name}/infer"]["post"]
        assert {"400", "401", "403", "404", "405", "429", "503"} <= set(infer["responses"])
        page = client.get("/docs", headers={"host": "example.org:8000"}).text
        assert "<script" not in page and "http" not in page.split("<body>")[0]  # offline: nothing fetched
        model = client.app.model
        for route in ROUTES:
            path = route.template.replace("{name}", "mlp").replace("{version}", "1")
            # Every route is dispatched to its handler (no 404/405), and shows up on /docs with its curl line.
            answer = client.request(route.method, path, json=example(route, model))
            if "{label}" in route.template:  # a single package has no labels (test_repository serves some)
                assert answer.status_code == 404 and "has no label" in answer.text, (route.template, answer.text)
            else:
                assert answer.status_code == 200, (route.template, answer.text)
            line = curl(route, model, False, "http://example.org:8000")
            assert html.escape(line) in page
            body = example(route, model)
            if route.body == "InferRequest":  # the example uses the model's real input names and shapes
                assert [(t["name"], t["shape"]) for t in body["inputs"]] == [("features", [1, 16])]
            elif route.body == "PredictRequest":
                assert np.asarray(body["inputs"]["features"]).shape == (1, 16)
            elif route.body == "SimpleRequest":
                assert np.asarray(body["input_data"]).shape == (1, 16)
        assert client.get("/v2/").status_code == 200  # the Open Inference Protocol writes GET /v2/


def test_outputs_and_parameters_of_the_wrong_type_are_refused(mlp_package: Path) -> None:
    body = {"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}]}
    with serve_in_process(mlp_package) as client:
        for extra in ({"outputs": None}, {"outputs": 0}, {"parameters": None}, {"parameters": []}):
            answer = client.post("/v2/models/mlp/infer", json={**body, **extra})
            assert answer.status_code == 400, (extra, answer.text)
        tensor = {**body["inputs"][0], "parameters": None}
        assert client.post("/v2/models/mlp/infer", json={"inputs": [tensor]}).status_code == 400


def test_an_oversized_batch_is_refused_by_its_shape_before_its_data_is_read(mlp_package: Path) -> None:
    """The data here is not even numbers: the answer is about the batch, so no data was converted first."""
    rows = 300_000
    with serve_in_process(mlp_package, max_batch_size=8) as client:
        v2 = client.post("/v2/models/mlp/infer", json={"inputs": [
            {"name": "features", "shape": [rows, 16], "datatype": "FP32", "data": ["x"] * 1000}]})
        tfs = client.post("/v1/models/mlp:predict", json={"instances": [["x"]] * rows})
        simple = client.post("/predict", json={"input_data": [["x"]] * rows})
        for answer in (v2, tfs, simple):
            assert answer.status_code == 400 and f"batch of {rows} exceeds" in answer.json()["error"], answer.text
        # A single example without its batch dimension is not mistaken for a batch of 16 (over the limit of 8).
        one = client.post("/predict", json={"input_data": [0.5] * 16})
        assert one.status_code == 200 and np.asarray(one.json()["prediction"]).shape == (1, 4)


def test_a_tiny_model_may_take_one_thread_and_answers_the_same(mlp_package: Path) -> None:
    from modelpack.package import open_any
    from modelpack.runtimes import OnnxRunner
    from modelpack.serve.model import ServedModel

    feeds = {"features": X}
    with open_any(mlp_package) as pkg:
        model = ServedModel.load(pkg, None, max_batch_size=8)
        chosen = ServedModel.load(pkg, None, max_batch_size=8, threads=2)
    before = model.runner.run(feeds)["logits"]
    switched = model.prefer_one_thread()
    assert isinstance(model.runner, OnnxRunner) and model.runner.threads == (1 if switched else None)
    np.testing.assert_allclose(model.runner.run(feeds)["logits"], before, rtol=1e-6, atol=1e-6)
    # A thread count the user chose is never overridden.
    assert chosen.prefer_one_thread() is False and chosen.runner.threads == 2
