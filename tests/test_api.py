"""The Python API (`modelpack.optimize`, `benchmark`, `open`, `create_app`), on a handmade ONNX model: what the
Python API page (docs/api.md) runs on the Keras example, plus the errors and the lazy imports."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import make_onnx_mlp

import modelpack
from modelpack.errors import GateFailed, InputError, UsageError


def test_import_modelpack_is_light_and_exports_the_api() -> None:
    code = ("import sys, modelpack\n"
            "names = [n for n in modelpack.__all__ if callable(getattr(modelpack, n, None))]\n"
            "heavy = [m for m in ('tensorflow', 'tf_keras', 'tf2onnx', 'onnxruntime', 'uvicorn') if m in sys.modules]\n"
            "print(sorted(names), heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "['benchmark', 'create_app', 'open', 'optimize', 'pull', 'push'] []", proc.stderr
    with pytest.raises(AttributeError):
        modelpack.nothing  # noqa: B018


def test_optimize_open_predict_benchmark(tmp_path: Path) -> None:
    source = make_onnx_mlp(tmp_path / "mlp.onnx")
    before = source.read_bytes()
    result = modelpack.optimize(source, tmp_path / "pkg", name="mlp", stages=["export", ("quantize", {"method": "dynamic"})])
    assert result.output == tmp_path / "pkg" and [s["name"] for s in result.manifest["lineage"]["stages"]] == [
        "export", "quantize"]
    assert source.read_bytes() == before  # the input is never modified
    x = np.random.default_rng(0).standard_normal((3, 16), dtype=np.float32)
    with modelpack.open(tmp_path / "pkg") as pkg:
        assert (pkg.name, pkg.signature.input_names) == ("mlp", ["features"])
        out = pkg.predict(x)
        assert out["logits"].shape == (3, 4)
        np.testing.assert_allclose(pkg.predict({"features": x})["logits"], out["logits"])
        with pytest.raises(InputError, match="features"):
            pkg.predict(np.zeros((3, 5), np.float32))
    numbers = modelpack.benchmark(tmp_path / "pkg", iterations=10, fail_if=["onnx.p50_ms@1 > 10000"], record=False)
    assert numbers["gates"] and all(g["passed"] for g in numbers["gates"])
    with pytest.raises(GateFailed, match="p50_ms"):
        modelpack.benchmark(tmp_path / "pkg", iterations=5, fail_if=["onnx.p50_ms@1 > 0"], record=False)


def test_api_errors_come_before_work(tmp_path: Path) -> None:
    source = make_onnx_mlp(tmp_path / "mlp.onnx")
    with pytest.raises(UsageError, match="at least one stage"):
        modelpack.optimize(source, tmp_path / "a", stages=[])
    with pytest.raises(UsageError, match="export"):
        modelpack.optimize(source, tmp_path / "b", stages=["exprot"])
    with pytest.raises(UsageError, match="sparsity"):
        modelpack.optimize(source, tmp_path / "c", stages=[("prune", {"sparsity": 2.0})])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]  # nothing written
    with pytest.raises(UsageError, match="unknown option"):
        modelpack.create_app(tmp_path, max_batch=3)


def test_create_app_serves_in_process(mlp_package: Path) -> None:
    app = modelpack.create_app(mlp_package, api_key="k", max_batch_size=8)

    async def call() -> tuple[int, int, dict]:
        await app.startup()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://model") as client:
                refused = await client.get("/v2/models/mlp")
                body = {"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
                answer = await client.post("/v2/models/mlp/infer", json=body, headers={"Authorization": "Bearer k"})
                return refused.status_code, answer.status_code, answer.json()
        finally:
            await app.shutdown()

    refused, status, body = asyncio.run(call())
    assert (refused, status) == (401, 200) and body["outputs"][0]["shape"] == [1, 4]
