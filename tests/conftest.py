"""Shared fixtures: small real models in every input format, built once per session."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # corpus_table: the corpus routine the tests and the README share
EXAMPLE = ROOT / "examples" / "digits"
BIN = Path(sys.executable).parent


@dataclass
class ModelFile:
    path: Path
    eval_data: Path
    kind: str


# The fast loop (`make test-fast`: pytest -m "not slow and not corpus") leaves out what takes seconds per test:
# TensorFlow conversions (every test using these fixtures), the README's and CI's examples, pip installs.
SLOW_FIXTURES = {"models", "digits_package", "plugin_site", "plugin"}
SLOW_MODULES = {"test_readme", "test_ci_examples", "test_serve_install", "test_corpus", "test_bridge", "test_scale",
                "test_hostile_grpc", "test_hostile_http", "test_repository_oci", "test_lifecycle"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__ if item.module is not None else ""
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def tree_digest(path: Path) -> str:
    """sha256 of a file or a whole directory tree, to prove an input was not modified."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "the condition") -> None:
    """Poll `predicate` (which returns False, never asserts, while not yet true) until it holds or `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.05)


def run_cli(*args: str | Path, input: str | None = None) -> Result:
    """Invoke the real CLI in-process."""
    from modelpack.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def run_subprocess(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the installed `modelpack` executable in a child process."""
    return subprocess.run([str(BIN / "modelpack"), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)


def _save_eval(path: Path, x: np.ndarray, y: np.ndarray | None = None) -> Path:
    if y is None:
        np.savez(path, x=x)
    else:
        np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelFile]:
    """One small model per accepted input format."""
    from modelpack.frameworks import tf as tfw

    tf = tfw.tensorflow()
    keras = tfw.keras3()
    tf_keras = tfw.tf_keras()
    base = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    out: dict[str, ModelFile] = {}

    # Keras 3 functional CNN with BatchNormalization, DepthwiseConv2D and a residual Add.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    # Layers big enough that 80% sparsity rounds to within a point, and that TFLite's
    # dynamic-range quantization (tensors of 1024+ elements) has something to quantize.
    x = keras.layers.Conv2D(16, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Add()([x, y])
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(x)
    cnn = keras.Model(inp, probs)
    x_img = rng.random((24, 8, 8, 1), dtype=np.float32)
    y_img = rng.integers(0, 3, 24)
    cnn.save(base / "cnn.keras")
    cnn.save(base / "cnn3.h5")
    img_eval = _save_eval(base / "img_eval.npz", x_img, y_img)
    out["keras3"] = ModelFile(base / "cnn.keras", img_eval, "keras3")
    out["keras3_h5"] = ModelFile(base / "cnn3.h5", img_eval, "keras3_h5")

    # tf_keras (Keras 2) MLP saved as legacy .h5.
    tf_keras.utils.set_random_seed(0)
    mlp = tf_keras.Sequential([
        tf_keras.layers.Input((16,), name="features"),
        tf_keras.layers.Dense(64, activation="relu"),
        tf_keras.layers.Dense(4, activation="softmax", name="scores"),
    ])
    mlp.save(base / "mlp.h5")
    x_vec = rng.random((24, 16), dtype=np.float32)
    vec_eval = _save_eval(base / "vec_eval.npz", x_vec, rng.integers(0, 4, 24))
    out["tf_keras_h5"] = ModelFile(base / "mlp.h5", vec_eval, "tf_keras_h5")

    # A plain TF SavedModel (not written by Keras).
    class Affine(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(rng.standard_normal((16, 4)).astype("float32"))
            self.b = tf.Variable(np.zeros(4, "float32"))

        @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="features")])
        def serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"logits": tf.matmul(features, self.w) + self.b}

    module = Affine()
    tf.saved_model.save(module, str(base / "affine_sm"), signatures={"serving_default": module.serve})
    out["savedmodel"] = ModelFile(base / "affine_sm", vec_eval, "savedmodel")

    # An ONNX model built by hand with onnx.helper, not produced by tf2onnx.
    out["onnx"] = ModelFile(make_onnx_mlp(base / "mlp.onnx"), vec_eval, "onnx")
    return out


def make_onnx_mlp(path: Path, inputs: int = 16, hidden: int = 32, classes: int = 4, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((inputs, hidden)).astype("float32") * 0.3, "w1")
    b1 = numpy_helper.from_array(np.zeros(hidden, "float32"), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype("float32") * 0.3, "w2")
    b2 = numpy_helper.from_array(np.zeros(classes, "float32"), "b2")
    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("Gemm", ["h2", "w2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="handmade")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def digits_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled example exported to ONNX and TFLite, shared read-only by tests."""
    out = tmp_path_factory.mktemp("digits") / "pkg"
    result = run_cli("optimize", EXAMPLE / "model.keras", "-o", out, "--eval-data", EXAMPLE / "eval.npz", "-q",
                     "export", "--format", "onnx", "--format", "tflite")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def mlp_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package of a small handmade ONNX MLP (input 'features' [batch, 16], output 'logits' [batch, 4]):
    built without TensorFlow in well under a second, so server tests can run in the fast loop."""
    base = tmp_path_factory.mktemp("mlp")
    out = base / "pkg"
    result = run_cli("optimize", make_onnx_mlp(base / "mlp.onnx"), "-o", out, "-q", "export")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def copy_of(tmp_path: Path):
    def _copy(src: Path) -> Path:
        dst = tmp_path / ("copy-" + src.name)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
        return dst

    return _copy


PLUGIN_SRC = ROOT / "tests" / "plugins" / "modelpack-hello"


def plugin_env(site: Path) -> dict[str, str]:
    """PYTHONPATH with the plugin's site first, keeping the caller's (a worktree's src/, say), for a child process."""
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)}


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The third-party plugin, really installed by pip into its own site directory."""
    site = tmp_path_factory.mktemp("plugin-site")
    build = tmp_path_factory.mktemp("plugin-build")
    src = build / "modelpack-hello"
    shutil.copytree(PLUGIN_SRC, src)  # build outside the repo: no build/ or egg-info left in the tree
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return site


@pytest.fixture
def plugin(plugin_site: Path, monkeypatch: pytest.MonkeyPatch):
    """Make the installed plugin visible to this process, as if pip had put it on sys.path."""
    from modelpack.stages import registry

    monkeypatch.syspath_prepend(str(plugin_site))
    registry._entry_points.cache_clear()
    yield plugin_site
    monkeypatch.undo()
    registry._entry_points.cache_clear()
    for name in [m for m in sys.modules if m.startswith("modelpack_hello")]:
        del sys.modules[name]
