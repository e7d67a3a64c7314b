"""The one place TensorFlow is imported.

tfmot works only with tf_keras, so `tf.keras` must mean tf_keras: TF_USE_LEGACY_KERAS
has to be set before tensorflow is first imported. Keras 3 (`import keras`) still
loads beside it in the same process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from ..errors import UsageError


def tensorflow() -> Any:
    """Import tensorflow with tf_keras as tf.keras, quietly; say how to install it if absent."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    try:
        with quiet_native_logs():
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing logs once, here, silenced
    except ImportError as exc:
        raise UsageError("this step needs TensorFlow: pip install 'modelpack-toolkit[tf]'") from exc
    tf.get_logger().setLevel("ERROR")
    import logging

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover
        pass
    return tf


ONEDNN = "TF_ENABLE_ONEDNN_OPTS"


def prefer_stable_training() -> bool:
    """Turn oneDNN's custom ops off for a run that fine-tunes, before TensorFlow loads.

    With them on, tf_keras `fit` on TensorFlow 2.21 crashes with a double free (SIGSEGV) on some real
    pretrained models (a mini-Xception .h5 with SeparableConv2D and BatchNormalization); with them off
    it trains. A value the user set is kept. Returns whether this call turned them off."""
    if "tensorflow" in sys.modules or ONEDNN in os.environ:
        return False
    os.environ[ONEDNN] = "0"
    return True


def keras3() -> ModuleType:
    """Keras 3, the default Keras today (`import keras`)."""
    tensorflow()
    import keras

    module: ModuleType = keras
    return module


def tf_keras() -> ModuleType:
    """tf_keras (Keras 2), which tfmot needs."""
    tensorflow()
    import tf_keras

    module: ModuleType = tf_keras
    return module


@contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Silence what TensorFlow's C++ code prints to fd 2 before its logging is set up.

    Those lines (oneDNN notes, CUDA probing) ignore TF_CPP_MIN_LOG_LEVEL. MODELPACK_DEBUG=1
    keeps them. Python exceptions are unaffected.
    """
    if os.environ.get("MODELPACK_DEBUG") == "1" or os.environ.get("MODELPACK_VERBOSE") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
