"""The manifest (`modelpack.json`): its schema, validation, and the facts it records."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

from .. import __version__
from ..errors import IntegrityError, printable

SCHEMA_VERSION = 1
MANIFEST_NAME = "modelpack.json"

# Distributions whose versions a manifest records when they are installed.
FRAMEWORKS = ("tensorflow", "tf-keras", "keras", "tensorflow-model-optimization", "tf2onnx", "onnx",
              "onnxruntime", "numpy")


class Companion(TypedDict):
    """A file an artifact reads besides itself (ONNX external data)."""

    path: str
    size: int
    sha256: str
    compressed_size: NotRequired[int]


class Artifact(TypedDict):
    """One model file or directory in the package, as `modelpack.json` lists it."""

    format: str  # a Repr value: keras, savedmodel, onnx, tflite
    path: str
    size: int
    sha256: str
    kind: NotRequired[str]  # file or directory
    precision: NotRequired[str]
    parity: NotRequired[dict[str, Any]]
    measured: NotRequired[dict[str, Any]]
    compressed_size: NotRequired[int]
    files: NotRequired[list[Companion]]
    session: NotRequired[dict[str, Any]]  # onnxruntime session settings the latency objective found faster


class StageRecord(TypedDict):
    """One stage's entry in the lineage: what ran, with which parameters, and what it measured."""

    name: str
    params: dict[str, Any]
    started_at: str
    finished_at: str
    duration_s: float
    metrics: dict[str, Any]
    input_format: NotRequired[str]
    output_format: NotRequired[str]
    status: NotRequired[str]  # ok or skipped
    notes: NotRequired[list[str]]
    benchmark: NotRequired[dict[str, Any]]


class Lineage(TypedDict):
    source: dict[str, Any]  # path, sha256, format of the model the pipeline started from
    stages: list[StageRecord]


class Manifest(TypedDict):
    """`modelpack.json`, as validated against `schema/manifest.schema.json`."""

    schema_version: int
    name: str
    version: str
    signature: dict[str, Any]
    artifacts: list[Artifact]
    lineage: Lineage
    created_by: dict[str, Any]
    created_at: str
    description: NotRequired[str]
    metrics: NotRequired[dict[str, Any]]
    benchmark: NotRequired[dict[str, Any]]
    archive: NotRequired[dict[str, Any]]


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    text = resources.files("modelpack").joinpath("schema/manifest.schema.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(schema())


def validate(data: Any, where: str = MANIFEST_NAME) -> Manifest:
    """Return `data` if it is a valid manifest; else raise IntegrityError naming the field."""
    if not isinstance(data, dict):
        raise IntegrityError(f"{where}: the manifest must be a JSON object.")
    version = data.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise IntegrityError(
            f"{where}: schema_version {version} is newer than this modelpack understands ({SCHEMA_VERSION}); "
            "upgrade modelpack."
        )
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        field = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise IntegrityError(printable(f"{where}: invalid manifest at '{field[:200]}': {err.message[:200]}."))
    return cast(Manifest, data)


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise IntegrityError(f"'{path}': no manifest here; a package holds {MANIFEST_NAME}.") from exc
    except OSError as exc:
        raise IntegrityError(f"'{path}': cannot read the manifest ({exc.strerror}).") from exc


def parse(raw: bytes, where: str) -> Manifest:
    """The validated manifest in `raw` (the bytes a signature signs)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{where}: the manifest is not valid JSON ({exc}).") from exc
    return validate(data, where)


def read(path: Path) -> Manifest:
    return parse(read_bytes(path), str(path))


def write(path: Path, data: Manifest | dict[str, Any]) -> None:
    validate(data, str(path))
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def created_by() -> dict[str, Any]:
    versions: dict[str, str] = {}
    for dist in FRAMEWORKS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {"modelpack": __version__, "python": platform.python_version(), "frameworks": versions}
