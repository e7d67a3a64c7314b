"""The manifest (`modelpack.json`): its schema, validation, and the facts it records."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from . import __version__
from .errors import IntegrityError

SCHEMA_VERSION = 1
MANIFEST_NAME = "modelpack.json"

# Distributions whose versions a manifest records when they are installed.
FRAMEWORKS = ("tensorflow", "tf-keras", "keras", "tensorflow-model-optimization", "tf2onnx", "onnx",
              "onnxruntime", "numpy")


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    text = resources.files("modelpack").joinpath("schema/manifest.schema.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(schema())


def validate(data: Any, where: str = MANIFEST_NAME) -> dict[str, Any]:
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
        raise IntegrityError(f"{where}: invalid manifest at '{field}': {err.message[:200]}.")
    return data


def read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IntegrityError(f"'{path}': no manifest here; a package holds {MANIFEST_NAME}.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path}: the manifest is not valid JSON ({exc}).") from exc
    return validate(data, str(path))


def write(path: Path, data: dict[str, Any]) -> None:
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
