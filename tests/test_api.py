"""The Python API (`modelpack.optimize`, `benchmark`, `open`, `create_app`), on a handmade ONNX model: what the
Python API page (docs/api.md) runs on the Keras example, plus the errors and the lazy imports."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import make_onnx_mlp, plugin_env

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


def test_optimize_settings_are_the_command_lines(tmp_path: Path) -> None:
    """api.optimize takes optimize's options from SPEC_OPTIONS and checks them by the same rules."""
    source = make_onnx_mlp(tmp_path / "mlp.onnx")
    with pytest.raises(UsageError, match="unknown setting.*max_acuracy_drop.*valid: .*max_accuracy_drop"):
        modelpack.optimize(source, tmp_path / "a", stages=["export"], max_acuracy_drop=1)
    with pytest.raises(UsageError, match="on_violation='maybe'"):
        modelpack.optimize(source, tmp_path / "b", stages=["export"], on_violation="maybe")
    with pytest.raises(UsageError, match="eval_limit=0"):
        modelpack.optimize(source, tmp_path / "c", stages=["export"], eval_limit=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]
    result = modelpack.optimize(source, tmp_path / "pkg", stages=["export"], objective="size",
                                batch_axis="features=0", model_version="2.0")
    assert (result.manifest["lineage"]["objective"], result.manifest["version"]) == ("size", "2.0")


def test_optimize_from_python_survives_a_crashing_stage(plugin_site: Path, tmp_path: Path) -> None:
    """A fresh Python process (no framework loaded, one thread) runs the pipeline in a forked child, as the CLI
    does: a stage killed by a signal is a StageFailed naming it, and nothing is left behind."""
    source = make_onnx_mlp(tmp_path / "mlp.onnx")
    code = (f"import modelpack\nfrom modelpack.errors import StageFailed\n"
            f"try:\n    modelpack.optimize({str(source)!r}, {str(tmp_path / 'pkg')!r}, stages=['crash'])\n"
            f"except StageFailed as exc:\n    print('caught:', exc)\n")
    env = {**os.environ, **plugin_env(plugin_site)}
    env.pop("MODELPACK_NO_ISOLATION", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "caught:" in proc.stdout and "stage 1/1 'crash' was killed by SIGKILL" in proc.stdout, proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]


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
