"""Where a repository's models come from: a directory laid out `NAME/VERSION/`, or a repository file (TOML).

A directory holds one folder per model and, in it, one entry per version: an integer name (as TF Serving and
Triton lay them out), each a package directory or a `.mpk` (`3.mpk` is version 3). A repository file lists the
models with their sources, version policy, labels and default:

    default_model = "digits"            # what /predict and a request without a model name use
    memory_budget_mb = 512              # load on first request, unload the least recently used idle model

    [models.digits]
    versions = {1 = "build/digits-v1", 2 = "build/digits-v2.mpk"}
    labels = {stable = 1, canary = 2}
    default = "stable"                  # a label or a version: what a request without a version gets
    policy = "all"                      # or {latest = 2}, or {specific = [1, 2]}

    [models.mlp]
    source = "models/mlp"               # a directory of VERSION entries, re-scanned when polling
    key_file = "keys/mlp.key"           # the key of its encrypted .mpk versions

    [models.ranker]
    source = "oci://registry.example.com/models/ranker:stable"   # each digest the tag takes is a version
    plain_http = false                  # true: speak HTTP to the registry (loopback always does)

Everything here is plain data and checks; nothing is loaded. A mistake is an InputError naming the file and field.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..package.manifest import MANIFEST_NAME

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DEFAULT_POLICY = ("latest", 1)  # TF Serving's default: serve the highest version


@dataclass(frozen=True)
class Policy:
    """Which of the available versions are served: the latest N, all, or specific ones."""

    kind: str = "latest"  # latest | all | specific
    count: int = 1
    versions: tuple[int, ...] = ()

    def choose(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.count:]

    def describe(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind == "specific":
            return "specific " + ",".join(map(str, self.versions))
        return f"latest {self.count}"


@dataclass
class ModelSource:
    """One model of the repository: its versions' sources (listed, or found in a directory), policy and labels."""

    name: str
    versions: dict[int, Path] = field(default_factory=dict)  # listed in the file
    directory: Path | None = None  # `source = "dir"`, or the model's folder in a repository directory
    key_file: Path | None = None
    policy: Policy = field(default_factory=Policy)
    labels: dict[str, int] = field(default_factory=dict)
    default: str | None = None  # a label or a version number, as text
    where: str = ""  # the file (and table) it was read from, for messages
    oci: str | None = None  # `source = "oci://..."`: versions are pulled into `directory` (see oci_source)
    plain_http: bool = False

    def available(self) -> dict[int, Path]:
        """Every version the source offers now: the listed ones and those in its directory."""
        found = dict(self.versions)
        if self.directory is not None and (self.oci is None or self.directory.is_dir()):
            found.update(scan_versions(self.directory, self.where))
        return found

    def wanted(self) -> dict[int, Path]:
        """The versions the policy serves, of those available now."""
        available = self.available()
        return {v: available[v] for v in self.policy.choose(list(available))}


@dataclass
class RepositorySpec:
    models: dict[str, ModelSource]
    default_model: str | None = None
    path: Path | None = None  # the directory or file it was read from
    memory_budget_mb: float | None = None  # --memory-budget-mb overrides it


def is_repository(path: Path) -> bool:
    """A repository file (.toml), or a directory that is not itself a package."""
    if path.is_file():
        return path.suffix == ".toml"
    return path.is_dir() and not (path / MANIFEST_NAME).is_file()


def read_repository(path: Path, oci_cache: Path | None = None) -> RepositorySpec:
    """The repository at `path` (a directory or a TOML file), checked; InputError names what is wrong.

    `oci_cache` is where oci:// sources keep their pulled versions (see oci_source)."""
    if path.is_dir():
        return _from_directory(path)
    return _from_file(path, oci_cache)


def _is_version_entry(entry: Path) -> int | None:
    stem = entry.name[:-4] if entry.name.endswith(".mpk") and entry.is_file() else entry.name
    if not stem.isdigit() or (entry.is_dir() and not (entry / MANIFEST_NAME).is_file()):
        return None
    if not entry.is_dir() and not entry.name.endswith(".mpk"):
        return None
    return int(stem)


def scan_versions(directory: Path, where: str = "") -> dict[int, Path]:
    """The `VERSION` (a package directory) and `VERSION.mpk` entries of a model's directory.

    A directory still being copied in (no manifest yet) is not a version; names that are not integers are
    ignored (a `README`, a `.tmp` folder), as TF Serving does."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise InputError(f"{where or directory}: cannot read the model directory '{directory}' "
                         f"({exc.strerror}).") from None
    found: dict[int, Path] = {}
    for entry in entries:
        version = _is_version_entry(entry)
        if version is None:
            continue
        if version in found:
            raise InputError(f"{directory}: version {version} is there twice ('{found[version].name}' and "
                             f"'{entry.name}'); keep one.")
        found[version] = entry
    return found


def _from_directory(root: Path) -> RepositorySpec:
    models: dict[str, ModelSource] = {}
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if not NAME_RE.match(entry.name):
            raise InputError(f"{entry}: '{entry.name}' is not a model name (letters, digits, '_', '.', '-').")
        source = ModelSource(entry.name, directory=entry, where=str(entry))
        if not source.available():
            raise InputError(f"{entry}: no versions in it; a model's directory holds VERSION/ package directories "
                             "or VERSION.mpk files (VERSION an integer, e.g. 1/).")
        models[entry.name] = source
    if not models:
        raise InputError(f"{root}: no models in it; lay a repository out as NAME/VERSION/ (a package directory "
                         "or VERSION.mpk), or pass a package directory.")
    return RepositorySpec(models, None, root)


MODEL_FIELDS = {"versions", "source", "key_file", "policy", "labels", "default", "plain_http"}


def _from_file(path: Path, oci_cache: Path | None = None) -> RepositorySpec:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the repository file ({exc.strerror}).") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML ({exc}).") from None
    unknown = sorted(set(data) - {"models", "default_model", "memory_budget_mb"})
    if unknown:
        raise InputError(f"{path}: unknown field '{unknown[0]}'; a repository file has [models.NAME] tables, "
                         "an optional default_model and an optional memory_budget_mb.")
    tables = data.get("models")
    if not isinstance(tables, dict) or not tables:
        raise InputError(f"{path}: no [models.NAME] tables; list at least one model.")
    base = path.parent
    models = {name: _model(path, base, name, table, oci_cache) for name, table in tables.items()}
    default_model = data.get("default_model")
    if default_model is not None and default_model not in models:
        raise InputError(f"{path}: default_model '{default_model}' is not one of the models "
                         f"({', '.join(models)}).")
    budget = data.get("memory_budget_mb")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise InputError(f"{path}: memory_budget_mb must be a number of megabytes above 0; got {budget!r}.")
    return RepositorySpec(models, default_model, path, None if budget is None else float(budget))


def _model(path: Path, base: Path, name: str, table: Any, oci_cache: Path | None = None) -> ModelSource:
    where = f"{path} [models.{name}]"
    if not NAME_RE.match(name):
        raise InputError(f"{where}: '{name}' is not a model name (letters, digits, '_', '.', '-').")
    if not isinstance(table, dict):
        raise InputError(f"{where}: must be a table.")
    unknown = sorted(set(table) - MODEL_FIELDS)
    if unknown:
        raise InputError(f"{where}: unknown field '{unknown[0]}'; use {', '.join(sorted(MODEL_FIELDS))}.")
    if "versions" not in table and "source" not in table:
        raise InputError(f"{where}: needs 'versions = {{1 = \"path\"}}' or 'source = \"dir\"'.")
    source = ModelSource(name, where=where)
    raw_versions = table.get("versions", {})
    if not isinstance(raw_versions, dict):
        raise InputError(f"{where}: 'versions' must be a table of VERSION = \"path\".")
    for key, value in raw_versions.items():
        if not str(key).isdigit():
            raise InputError(f"{where}: versions: '{key}' is not a version (an integer).")
        if not isinstance(value, str):
            raise InputError(f"{where}: versions.{key} must be a path (a package directory or .mpk).")
        location = base / value
        if not location.exists():
            raise InputError(f"{where}: versions.{key}: '{location}' does not exist.")
        source.versions[int(key)] = location
    if "source" in table:
        if not isinstance(table["source"], str):
            raise InputError(f"{where}: 'source' must be a directory path.")
        if table["source"].startswith("oci://"):
            return _oci_model(source, table, oci_cache)
        directory = base / table["source"]
        if not directory.is_dir():
            raise InputError(f"{where}: source: '{directory}' is not a directory.")
        source.directory = directory
    if "plain_http" in table:
        raise InputError(f"{where}: 'plain_http' goes with an oci:// source.")
    if "key_file" in table:
        if not isinstance(table["key_file"], str):
            raise InputError(f"{where}: 'key_file' must be a path.")
        source.key_file = base / table["key_file"]
        if not source.key_file.is_file():
            raise InputError(f"{where}: key_file: '{source.key_file}' does not exist.")
    source.policy = _policy(where, table.get("policy"))
    labels = table.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                               for v in labels.values()):
        raise InputError(f"{where}: 'labels' must be a table of LABEL = VERSION (an integer).")
    for label in labels:
        if not NAME_RE.match(label) or label.isdigit():
            raise InputError(f"{where}: labels: '{label}' is not a label name (letters first).")
    source.labels = dict(labels)
    default = table.get("default")
    if default is not None:
        if isinstance(default, int) and not isinstance(default, bool):
            default = str(default)
        if not isinstance(default, str) or not (default.isdigit() or default in source.labels):
            raise InputError(f"{where}: default '{default}' is neither a version nor one of the labels "
                             f"({', '.join(source.labels) or 'none'}).")
        source.default = default
    available = source.available()
    if not available:
        raise InputError(f"{where}: no versions: its source directory holds no VERSION/ or VERSION.mpk entries.")
    served = set(source.policy.choose(list(available)))
    for label, version in source.labels.items():
        if version not in served:
            raise InputError(f"{where}: labels.{label} = {version}, a version the policy "
                             f"({source.policy.describe()}) does not serve; served: "
                             f"{', '.join(map(str, sorted(served)))}.")
    if source.default is not None and source.default.isdigit() and int(source.default) not in served:
        raise InputError(f"{where}: default {source.default} is a version the policy does not serve.")
    return source


def _oci_model(source: ModelSource, table: dict[str, Any], oci_cache: Path | None) -> ModelSource:
    """A model pulled from a registry tag: its versions are the digests the tag has taken, numbered in order."""
    from ..errors import UsageError
    from ..oci.registry import Reference
    from .oci_source import cache_dir, default_cache

    where = source.where
    try:
        ref = Reference.parse(table["source"], "source")
    except UsageError as exc:
        raise InputError(f"{where}: {exc}") from None
    if ref.digest is not None:
        raise InputError(f"{where}: source: '{ref}' names a digest; give a tag (oci://HOST/REPO:TAG), which "
                         "polling follows.")
    for field_name in ("versions", "labels", "default"):
        if field_name in table:
            raise InputError(f"{where}: '{field_name}' does not go with an oci:// source (its versions are the "
                             "digests its tag takes, numbered as they are pulled); use policy.")
    plain_http = table.get("plain_http", False)
    if not isinstance(plain_http, bool):
        raise InputError(f"{where}: 'plain_http' must be true or false.")
    if "key_file" in table:
        raise InputError(f"{where}: 'key_file' does not go with an oci:// source (registries hold unencrypted "
                         "packages).")
    source.oci, source.plain_http = str(ref), plain_http
    source.policy = _policy(where, table.get("policy"))
    source.directory = cache_dir(oci_cache or default_cache(), source.name, source.oci)
    return source


def _policy(where: str, value: Any) -> Policy:
    if value is None:
        return Policy()
    if value == "all":
        return Policy("all")
    if isinstance(value, dict) and len(value) == 1:
        kind, arg = next(iter(value.items()))
        if kind == "latest" and isinstance(arg, int) and not isinstance(arg, bool) and arg >= 1:
            return Policy("latest", arg)
        if kind == "specific" and isinstance(arg, list) and arg and all(
                isinstance(v, int) and not isinstance(v, bool) for v in arg):
            return Policy("specific", versions=tuple(sorted(set(arg))))
    raise InputError(f"{where}: policy must be \"all\", {{latest = N}} (N >= 1) or {{specific = [1, 3]}}; "
                     f"got {value!r}.")
