"""Train the bundled example: a small Keras 3 CNN on scikit-learn's digits (no download).

    python examples/digits/train.py

Writes model.keras, train.npz and eval.npz (arrays x, y) beside this file. The
architecture has what real mobile CNNs have: BatchNormalization, a depthwise
convolution and a residual Add.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED = 0


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]  # (n, 8, 8, 1) in [0, 1]
    y = digits.target.astype("int64")
    return train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)


def build() -> keras.Model:
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = keras.layers.BatchNormalization(name="dw_bn")(y)
    y = keras.layers.ReLU(name="dw_relu")(y)
    x = keras.layers.Add(name="residual")([x, y])
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(256, activation="relu", name="fc")(x)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def main() -> None:
    keras.utils.set_random_seed(SEED)
    x_train, x_eval, y_train, y_eval = data()
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=30, batch_size=32, validation_data=(x_eval, y_eval), verbose=2)
    _, acc = model.evaluate(x_eval, y_eval, verbose=0)
    print(f"eval accuracy: {acc:.4f} on {len(y_eval)} samples; parameters: {model.count_params()}")
    # Save an uncompiled copy: optimizer state is not part of the deployable model, and
    # leaving it in would inflate every size ratio measured against this file.
    clean = build()
    clean.set_weights(model.get_weights())
    clean.save(HERE / "model.keras")
    np.savez_compressed(HERE / "train.npz", x=x_train, y=y_train)
    np.savez_compressed(HERE / "eval.npz", x=x_eval, y=y_eval)


if __name__ == "__main__":
    main()
