"""Model representations, and detecting a file's format by its content."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import InputError, reason

ACCEPTED = "Keras 3 .keras, legacy .h5 (Keras 3 or tf_keras), a TF SavedModel directory, ONNX .onnx or TFLite .tflite"
TORCH_HINT = ("modelpack reads ONNX from PyTorch: export it first with "
              "torch.onnx.export(model, example_inputs, 'model.onnx'), then give model.onnx")

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"


class Repr(str, Enum):
    """A representation of a model that stages work on and packages hold."""

    KERAS = "keras"
    SAVEDMODEL = "savedmodel"
    ONNX = "onnx"
    TFLITE = "tflite"

    def __str__(self) -> str:
        return self.value


# The file or directory name each representation gets inside a package.
PACKAGE_NAMES: dict[Repr, str] = {
    Repr.KERAS: "model.keras",
    Repr.SAVEDMODEL: "saved_model",
    Repr.ONNX: "model.onnx",
    Repr.TFLITE: "model.tflite",
}


@dataclass(frozen=True)
class ModelRef:
    """A model on disk in a known representation.

    `flavour` tells Keras models apart: "keras3" (Keras 3) or "tf_keras" (Keras 2),
    and whether the file is a `.keras` zip or a legacy `.h5`.
    """

    rep: Repr
    path: Path
    flavour: str | None = None
    container: str | None = None
    # onnxruntime session settings the package's manifest records for this artifact (see runtimes.SESSION_KEYS);
    # not part of the model's identity
    session: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)

    def describe(self) -> str:
        if self.rep is Repr.KERAS:
            kind = "Keras 3" if self.flavour == "keras3" else "tf_keras"
            return f"{kind} {self.container or 'keras'} model"
        return {"savedmodel": "TF SavedModel", "onnx": "ONNX model", "tflite": "TFLite model"}[self.rep.value]


def detect(path: str | Path) -> ModelRef:
    """Identify a model by content, not by extension; raise InputError naming the file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input '{p}': no such file or directory. Expected {ACCEPTED}.")
    if p.is_dir():
        if (p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file():
            return ModelRef(Repr.SAVEDMODEL, p)
        if (p / "modelpack.json").is_file():
            raise InputError(f"input '{p}' is a modelpack package, not a model. Use its artifacts, or expected {ACCEPTED}.")
        raise InputError(f"input '{p}' is a directory but not a TF SavedModel (no saved_model.pb). Expected {ACCEPTED}.")
    try:
        with p.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise InputError(f"input '{p}': cannot read it ({exc.strerror}).") from exc
    if head.startswith(HDF5_MAGIC):
        return ModelRef(Repr.KERAS, p, _h5_flavour(p), "h5")
    if head.startswith(ZIP_MAGIC):
        return _detect_zip(p)
    if head[4:8] == b"TFL3":
        return ModelRef(Repr.TFLITE, p)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise InputError(f"input '{p}' is a Python pickle, as PyTorch's legacy torch.save writes; {TORCH_HINT}.")
    _check_onnx(p)
    return ModelRef(Repr.ONNX, p)


def _h5_flavour(p: Path) -> str:
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py ships with the tf extra
        raise InputError(f"input '{p}' is HDF5; reading it needs the tf extra: pip install 'modelpack-toolkit[tf]'.") from exc
    try:
        with h5py.File(p, "r") as f:
            attrs = dict(f.attrs)
    except OSError as exc:
        raise InputError(f"input '{p}': corrupt HDF5 file ({exc}). Expected {ACCEPTED}.") from exc
    if "model_config" not in attrs:
        raise InputError(
            f"input '{p}' is HDF5 but holds no Keras model config (weights only?). "
            f"Save the whole model with model.save(). Expected {ACCEPTED}."
        )
    version = attrs.get("keras_version", b"")
    version = version.decode() if isinstance(version, bytes) else str(version)
    return "keras3" if version.startswith("3") else "tf_keras"


def _detect_zip(p: Path) -> ModelRef:
    try:
        with zipfile.ZipFile(p) as zf:
            names = set(zf.namelist())
            if "modelpack.json" in names:
                raise InputError(f"input '{p}' is a modelpack archive (.mpk), not a model. Expected {ACCEPTED}.")
            if any(n == "data.pkl" or n.endswith("/data.pkl") or n.endswith("/constants.pkl") for n in names):
                raise InputError(f"input '{p}' is a PyTorch checkpoint or TorchScript file; {TORCH_HINT}.")
            if "config.json" not in names:
                raise InputError(f"input '{p}' is a zip file but not a Keras model (no config.json). Expected {ACCEPTED}.")
            meta = json.loads(zf.read("metadata.json")) if "metadata.json" in names else {}
    except (zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise InputError(f"input '{p}': corrupt Keras archive ({exc}). Expected {ACCEPTED}.") from exc
    version = str(meta.get("keras_version", "3"))
    return ModelRef(Repr.KERAS, p, "keras3" if version.startswith("3") else "tf_keras", "keras")


def _check_onnx(p: Path) -> None:
    import onnx

    if p.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin") and p.stat().st_size:
        with p.open("rb") as fh:
            if fh.read(1) == b"\x80":
                raise InputError(f"input '{p}' looks like a PyTorch file; {TORCH_HINT}.")
    try:
        model = onnx.load(str(p), load_external_data=False)
        if not model.graph.output or model.ir_version <= 0:
            raise ValueError("no graph outputs")
        external_files(model, p)
        # By path, so external data is found beside the model and models over 2 GB are checked too.
        onnx.checker.check_model(str(p))
    except InputError:
        raise
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ValueError...
        raise InputError(f"input '{p}': not a model modelpack can read ({reason(exc, 160)}). Expected {ACCEPTED}.") from exc


def external_files(model: object, path: Path) -> list[str]:
    """The external-data files an ONNX model's tensors point at, relative to the model's directory.

    A location that is absolute, climbs out with '..', or names a missing file is an InputError:
    a model must not read bytes from outside its own directory (or package)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    found: list[str] = []
    root = path.parent.resolve()
    for tensor in _get_all_tensors(model):  # type: ignore[arg-type]  # a ModelProto, loaded by the caller
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(root):
            raise InputError(f"'{path}': tensor '{tensor.name}' reads external data from '{location}', outside the "
                             "model's directory; refusing it.")
        if not target.is_file():
            raise InputError(f"'{path}': tensor '{tensor.name}' keeps its data in '{location}', which is missing; "
                             "keep the data file beside the model.")
        if location not in found:
            found.append(location)
    return found
