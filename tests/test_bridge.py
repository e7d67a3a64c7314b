"""The Keras 3 -> tf_keras bridge, on every layer type the optimization stages promise to handle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli


@pytest.fixture(scope="module")
def keras3_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Keras 3 models covering Dense, Conv1D/2D, DepthwiseConv2D, SeparableConv2D, BatchNormalization,
    pooling, Dropout, Flatten, Reshape, Add, Concatenate, activations, Embedding and LayerNormalization."""
    from modelpack.frameworks import tf as tfw

    keras = tfw.keras3()
    layers = keras.layers
    keras.utils.set_random_seed(0)
    base = tmp_path_factory.mktemp("zoo")
    rng = np.random.default_rng(0)

    inp = keras.Input((8, 8, 3), name="img")
    x = layers.Conv2D(16, 3, padding="same")(inp)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    y = layers.DepthwiseConv2D(3, padding="same")(x)
    z = layers.SeparableConv2D(16, 3, padding="same")(x)
    x = layers.Add()([x, y])
    x = layers.Concatenate()([x, z])
    x = layers.MaxPooling2D()(x)
    x = layers.AveragePooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Reshape((8, 16))(x)
    x = layers.LayerNormalization()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(64, activation="relu")(x)
    out = layers.Dense(5, activation="softmax", name="probs")(x)
    image = keras.Model(inp, out)
    image.save(base / "image.keras")
    np.savez(base / "image.npz", x=rng.random((32, 8, 8, 3), dtype=np.float32), y=rng.integers(0, 5, 32))

    tokens = keras.Input((12,), dtype="int32", name="tokens")
    e = layers.Embedding(64, 16)(tokens)
    c = layers.Conv1D(32, 3, padding="same", activation="relu")(e)
    c = layers.LayerNormalization()(c)
    g = layers.GlobalAveragePooling1D()(c)
    h = layers.ReLU()(layers.Dense(32)(g))
    o = layers.Dense(3, name="logits")(h)
    text = keras.Model(tokens, o)
    text.save(base / "text.keras")
    np.savez(base / "text.npz", x=rng.integers(0, 64, (32, 12)).astype("int32"), y=rng.integers(0, 3, 32))

    seq = keras.Sequential([keras.Input((6,), name="features"), layers.Dense(32, activation="relu"),
                            layers.Dropout(0.1), layers.Dense(2)])
    seq.save(base / "seq.keras")
    np.savez(base / "seq.npz", x=rng.random((32, 6), dtype=np.float32), y=rng.integers(0, 2, 32))
    return {name: (base / f"{name}.keras", base / f"{name}.npz") for name in ("image", "text", "seq")}


@pytest.mark.parametrize("name", ["image", "text", "seq"])
def test_bridge_rebuilds_and_matches(keras3_zoo, name: str) -> None:
    from modelpack.formats import detect
    from modelpack.frameworks import bridge, keras

    path, data = keras3_zoo[name]
    original = keras.load(detect(path))
    rebuilt, notes = bridge.to_tf_keras(original)
    assert type(rebuilt).__module__.startswith("tf_keras")
    assert [layer.name for layer in rebuilt.layers if layer.weights] == \
           [layer.name for layer in original.layers if layer.weights]
    x = np.load(data)["x"]
    assert bridge.check(original, rebuilt, [x]) < 1e-5
    if name != "seq":  # LayerNormalization's Keras 3-only rms_scaling is dropped, and said so
        assert any("rms_scaling" in n for n in notes)


@pytest.mark.parametrize("name", ["image", "text"])
def test_prune_through_the_bridge(keras3_zoo, tmp_path: Path, name: str) -> None:
    path, data = keras3_zoo[name]
    out = tmp_path / "pkg"
    result = run_cli("optimize", path, "-o", out, "--eval-data", data, "-q", "prune", "--sparsity", "0.6",
                     "--train-data", data, "--epochs", "1", "export", "--format", "onnx")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "modelpack.json").read_text())
    prune = manifest["lineage"]["stages"][0]
    assert abs(prune["metrics"]["sparsity"] - 0.6) <= 0.01
    assert prune["metrics"]["mode"] == "fine-tuned"
    pruned_layers = set(prune["metrics"]["layer_sparsity"])
    if name == "text":
        assert any(layer.startswith("embedding") for layer in pruned_layers)
        assert any(layer.startswith("conv1d") for layer in pruned_layers)
    else:
        assert any(layer.startswith("separable_conv2d") for layer in pruned_layers)
        assert any("DepthwiseConv2D" in d for d in prune["metrics"]["dense_layers"])


def test_qat_on_a_keras3_model(keras3_zoo, tmp_path: Path) -> None:
    path, data = keras3_zoo["seq"]
    out = tmp_path / "pkg"
    result = run_cli("optimize", path, "-o", out, "--eval-data", data, "-q",
                     "quantize", "--method", "qat", "--train-data", data, "--epochs", "1")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "modelpack.json").read_text())
    assert manifest["artifacts"][0]["format"] == "tflite"
    assert manifest["lineage"]["stages"][0]["metrics"]["method"] == "qat"


def test_fidelity_without_labels(models, tmp_path: Path) -> None:
    unlabeled = tmp_path / "x.npz"
    np.savez(unlabeled, x=np.load(models["onnx"].eval_data)["x"])
    out = tmp_path / "pkg"
    assert run_cli("optimize", models["onnx"].path, "-o", out, "--eval-data", unlabeled, "-q",
                   "quantize").exit_code == 0
    metrics = json.loads((out / "modelpack.json").read_text())["lineage"]["stages"][0]["metrics"]
    assert "accuracy" not in metrics and "accuracy_drop" not in metrics
    assert 0 <= metrics["top1_agreement"] <= 100 and metrics["max_abs_diff"] >= 0
