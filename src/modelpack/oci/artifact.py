"""A package as a CNCF ModelPack artifact (github.com/modelpack/model-spec, docs/spec.md), and back.

One layer per file, uncompressed (the spec's advice for weights): the model files as `weight.v1.raw`, a
directory artifact (a SavedModel) as one reproducible `weight.v1.tar`, `modelpack.json` and `modelpack.sig` as
`weight.config.v1.raw`, anything else (a report) as `doc.v1.raw`. Each layer names its path in the package with
`org.cncf.model.filepath`. The config follows the spec's `config-schema.json` (vendored unmodified as
`schema/cncf-model-config.schema.json`, model-spec commit d78bf3231b4f26196c4a955e1007ccc47e19a77c) and is
validated against it before any byte is sent, and again when pulled.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from ..atomic import atomic_dir, check_output
from ..errors import InputError, IntegrityError, ModelpackError, UsageError, printable
from ..package import manifest as mf
from ..package import open_any
from ..package.dir import Package, sha256_file
from .registry import DIGEST, Reference, Registry, sha256_digest
from .unpack import Budget, PullLimits, check_layout, escaped, extract, safe_path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_TAR = "application/vnd.cncf.model.weight.v1.tar"
WEIGHT_CONFIG_RAW = "application/vnd.cncf.model.weight.config.v1.raw"
DOC_RAW = "application/vnd.cncf.model.doc.v1.raw"
FILEPATH = "org.cncf.model.filepath"
FILE_METADATA = "org.cncf.model.file.metadata+json"
TITLE = "org.opencontainers.image.title"
KINDS = ("weight", "weight.config", "doc", "code", "dataset")
LAYER_TYPES = {f"application/vnd.cncf.model.{kind}.v1.{form}" for kind in KINDS for form in ("raw", "tar", "tar+gzip")}
UNSUPPORTED = {f"application/vnd.cncf.model.{kind}.v1.tar+zstd" for kind in KINDS}
MAX_CONFIG = 1 << 20
_EPOCH = "1970-01-01T00:00:00Z"  # constant file attributes: the same package gives the same layers


@lru_cache(maxsize=1)
def config_schema() -> dict[str, Any]:
    text = resources.files("modelpack").joinpath("schema/cncf-model-config.schema.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def check_config(config: Any, where: str) -> None:
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(config_schema()).iter_errors(config))
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise IntegrityError(f"{where}: the model config breaks the CNCF model-spec schema at {at}: {error.message}")


@dataclass
class Layer:
    path: str  # where the file goes in the package
    media_type: str
    source: Path  # the file to upload (for a directory: a tar built from it)
    digest: str = ""
    size: int = 0
    kind: int = 0  # tar typeflag of what `path` is: 0 a file, 5 a directory

    def descriptor(self) -> dict[str, Any]:
        metadata = {"name": self.path, "mode": 0o755 if self.kind else 0o644, "uid": 0, "gid": 0,
                    "size": self.size, "mtime": _EPOCH, "typeflag": self.kind}
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size,
                "annotations": {FILEPATH: self.path, TITLE: self.path,
                                FILE_METADATA: json.dumps(metadata, separators=(",", ":"))}}


@dataclass
class PushResult:
    reference: str
    digest: str
    layers: int
    size: int  # bytes in the artifact's blobs
    uploaded: int  # bytes sent: blobs the registry had already are skipped


@dataclass
class PullResult:
    reference: str
    digest: str
    output: Path
    files: list[str]
    package: bool  # the artifact holds a modelpack package (modelpack.json), checked after the pull
    signature: dict[str, Any] | None = field(default=None)
    skipped: list[str] = field(default_factory=list)  # with a signature: unsigned documents, not written


def _tar_directory(root: Path, rel: str, out: Path) -> None:
    """A reproducible tar of `root/rel` (lexicographic order, constant owners and times), named `rel/...`."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        base = root / rel
        for path in [base, *sorted(base.rglob("*"))]:
            info = tar.gettarinfo(str(path), arcname=(PurePosixPath(rel) / path.relative_to(base).as_posix()).as_posix()
                                  if path != base else rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            elif path.is_dir():
                tar.addfile(info)


def _layers(pkg: Package, scratch: Path) -> list[Layer]:
    """One layer per file (a tar per directory artifact). The caller has checked the package's checksums, so
    the manifest's sha256 and size of each model file are its layer's digest and size: not read twice."""
    from ..package.signing import SIGNATURE_NAME

    root = pkg.root
    directories = {a["path"].rstrip("/") for a in pkg.artifacts if (root / a["path"]).is_dir()}
    known = {e["path"]: (e["sha256"], e["size"]) for a in pkg.artifacts for e in [a, *a.get("files", [])]
             if e["path"].rstrip("/") not in directories}  # a directory's sha256 is of its tree, not of a tar
    weights = {a["path"] for a in pkg.artifacts} | {c["path"] for a in pkg.artifacts for c in a.get("files", [])}
    layers: list[Layer] = []
    for rel in sorted(directories):
        tar = scratch / f"layer-{len(layers)}.tar"
        _tar_directory(root, rel, tar)
        layers.append(Layer(rel, WEIGHT_TAR, tar, kind=5))
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.split("/")[0] in directories or path.name.startswith("."):
            continue
        if rel in (mf.MANIFEST_NAME, SIGNATURE_NAME):
            kind = WEIGHT_CONFIG_RAW
        elif rel in weights:
            kind = WEIGHT_RAW
        else:
            kind = DOC_RAW
        layers.append(Layer(rel, kind, path))
    for layer in layers:
        sha256, layer.size = known.get(layer.path) or (sha256_file(layer.source), layer.source.stat().st_size)
        layer.digest = f"sha256:{sha256}"
    return layers


def model_config(pkg: Package, diff_ids: list[str]) -> dict[str, Any]:
    """The spec's config: who and what the model is, from the manifest; the layers' DiffIDs."""
    manifest = pkg.manifest
    descriptor: dict[str, Any] = {"name": pkg.name, "version": pkg.version, "createdAt": manifest["created_at"],
                                  "title": pkg.name}
    if manifest.get("description"):
        descriptor["description"] = manifest["description"]
    best = pkg.artifact()
    technical: dict[str, Any] = {"format": best["format"]}
    if best.get("precision"):
        technical["precision"] = best["precision"]
    quantized = [s for s in manifest["lineage"]["stages"] if s["name"] == "quantize" and s.get("status", "ok") == "ok"]
    if quantized:
        technical["quantization"] = str(quantized[-1]["params"].get("method", "int8"))
    return {"descriptor": descriptor, "config": technical, "modelfs": {"type": "layers", "diffIds": diff_ids}}


def push(package: Path, reference: str, *, plain_http: bool = False) -> PushResult:
    """Push a package (directory or `.mpk`) as a CNCF ModelPack artifact; the tag defaults to its version."""
    ref = Reference.parse(reference)
    if ref.digest:
        raise UsageError(f"REFERENCE '{reference}': push to a tag, not a digest (the digest is the result).")
    with open_any(package) as pkg, tempfile.TemporaryDirectory(prefix="modelpack-push-") as scratch:
        pkg.check_checksums()
        ref = ref if ref.tag else ref.with_tag(_tag_of(pkg.version))
        layers = _layers(pkg, Path(scratch))
        config = model_config(pkg, [layer.digest for layer in layers])
        check_config(config, "push")
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        manifest: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": CONFIG, "digest": sha256_digest(config_bytes), "size": len(config_bytes)},
            "layers": [layer.descriptor() for layer in layers],
            "annotations": {"org.opencontainers.image.title": pkg.name, "org.opencontainers.image.version": pkg.version,
                            "org.opencontainers.image.created": pkg.manifest["created_at"]},
        }
        registry = Registry(ref, plain_http=plain_http, push=True)
        uploaded = sum(layer.size for layer in layers if registry.upload_blob(layer.digest, layer.source))
        uploaded += len(config_bytes) if registry.upload_blob(manifest["config"]["digest"], config_bytes) else 0
        digest = registry.put_manifest(str(ref.tag), OCI_MANIFEST, json.dumps(manifest, separators=(",", ":")).encode())
    return PushResult(str(ref), digest, len(layers), sum(layer.size for layer in layers) + len(config_bytes), uploaded)


def _tag_of(version: str) -> str:
    tag = "".join(c if c.isalnum() or c in "_.-" else "-" for c in version)[:128]
    return tag if tag and (tag[0].isalnum() or tag[0] == "_") else f"v{tag}"[:128]


def _check_manifest(data: bytes, ref: Reference) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise IntegrityError(f"{ref}: the manifest is not JSON ({printable(str(exc))}).") from None
    except RecursionError:
        raise IntegrityError(f"{ref}: the manifest nests deeper than a JSON reader goes; refusing it.") from None
    if not isinstance(manifest, dict) or manifest.get("mediaType") != OCI_MANIFEST:
        kind = manifest.get("mediaType") if isinstance(manifest, dict) else type(manifest).__name__
        raise InputError(f"{ref}: not an OCI image manifest ({printable(str(kind)[:100])}); pull a CNCF ModelPack "
                         "artifact.")
    config = manifest.get("config") or {}
    if manifest.get("artifactType") != ARTIFACT_TYPE and config.get("mediaType") != CONFIG:
        shown = printable(repr(manifest.get("artifactType"))[:100])
        raise InputError(f"{ref}: not a CNCF ModelPack artifact (artifactType {shown}); "
                         "modelpack pulls models packaged to the CNCF model-spec.")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise IntegrityError(f"{ref}: the manifest lists no layers.")
    for index, item in enumerate([config, *layers]):
        where = "config" if index == 0 else f"layer {index - 1}"
        if (not isinstance(item, dict) or not isinstance(item.get("digest"), str) or not DIGEST.match(item["digest"])
                or not isinstance(item.get("size"), int) or item["size"] < 0):
            raise IntegrityError(f"{ref}: {where} needs a sha256 digest and a size.")
        if index and item.get("mediaType") in UNSUPPORTED:
            raise InputError(f"{ref}: {where} is zstd-compressed ({item['mediaType']}), which modelpack does not "
                             "read; push it uncompressed or with gzip.")
        if index and item.get("mediaType") not in LAYER_TYPES:
            raise InputError(f"{ref}: {where} has media type {printable(repr(item.get('mediaType'))[:100])}, not a "
                             "model-spec layer.")
    return manifest


def _layer_path(ref: Reference, layer: dict[str, Any], index: int) -> PurePosixPath:
    annotations = layer.get("annotations") or {}
    name = annotations.get(FILEPATH) or annotations.get(TITLE) if isinstance(annotations, dict) else None
    if not isinstance(name, str) or not name:
        raise InputError(f"{ref}: layer {index} names no file path ({FILEPATH}).")
    return safe_path(ref, name, f"layer {index}")


def _signed_paths(pkg: Package) -> set[PurePosixPath]:
    """What a signature covers: the manifest, the signature, and each artifact and companion file listed."""
    from ..package.signing import SIGNATURE_NAME

    names = {mf.MANIFEST_NAME, SIGNATURE_NAME} | {a["path"].rstrip("/") for a in pkg.artifacts}
    names |= {c["path"] for a in pkg.artifacts for c in a.get("files", [])}
    return {PurePosixPath(n) for n in names}


def _load(staging: Path, output: Path) -> Package:
    try:
        return Package.load(staging, output)
    except RecursionError:
        raise IntegrityError(f"{output}: {mf.MANIFEST_NAME} nests deeper than a JSON reader goes; refusing it.") from None


def pull(reference: str, output: Path, *, force: bool = False, pubkey: Path | None = None,
         plain_http: bool = False, limits: PullLimits | None = None) -> PullResult:
    """Pull a CNCF ModelPack artifact into `output`, checking every digest; a modelpack package inside is then
    checked against its manifest (and, with `pubkey`, its signature, before any layer the signed manifest does
    not list is fetched: such a layer is refused, or left out when it is a document). Within `limits` (time, bytes, files); nothing is left at `output`
    on failure."""
    ref = Reference.parse(reference)
    limits = limits or PullLimits()
    check_output(output, force)
    if pubkey is not None and not pubkey.is_file():
        raise InputError(f"--pubkey '{pubkey}': no such file. Pass the public key the package was signed with.")
    try:
        with Registry(ref, plain_http=plain_http, timeout_s=limits.timeout_s) as registry:
            return _pull(registry, ref, output, force, pubkey, limits)
    except ModelpackError as exc:
        raise escaped(exc) from None  # messages may quote what the registry sent


def _pull(registry: Registry, ref: Reference, output: Path, force: bool, pubkey: Path | None,
          limits: PullLimits) -> PullResult:
    from ..package.signing import SIGNATURE_NAME

    data, digest = registry.get_manifest(OCI_MANIFEST)
    manifest = _check_manifest(data, ref)
    if manifest["config"]["size"] > MAX_CONFIG:
        raise IntegrityError(f"{ref}: the config is over {MAX_CONFIG >> 20} MiB; refusing it.")
    buffer = io.BytesIO()
    registry.download_blob(manifest["config"]["digest"], manifest["config"]["size"], buffer)
    try:
        config = json.loads(buffer.getvalue())
        check_config(config, str(ref))
    except ValueError as exc:
        raise IntegrityError(f"{ref}: the model config is not JSON ({exc}).") from None
    except RecursionError:
        raise IntegrityError(f"{ref}: the model config nests deeper than a JSON reader goes; refusing it.") from None
    diff_ids = config["modelfs"]["diffIds"]
    layers = manifest["layers"]
    if len(diff_ids) != len(layers):
        raise IntegrityError(f"{ref}: the config lists {len(diff_ids)} DiffIDs for {len(layers)} layers.")
    paths = [_layer_path(ref, layer, i) for i, layer in enumerate(layers)]
    check_layout(ref, paths)
    budget = Budget(ref, limits)
    budget.check_sizes(layer["size"] for layer in layers)
    order = list(range(len(layers)))
    signed_first = {PurePosixPath(mf.MANIFEST_NAME), PurePosixPath(SIGNATURE_NAME)} if pubkey is not None else set()
    if pubkey is not None and PurePosixPath(mf.MANIFEST_NAME) not in paths:
        raise InputError(f"{ref}: --pubkey given, but the artifact holds no modelpack package to verify.")
    order.sort(key=lambda i: paths[i] not in signed_first)  # the manifest and signature first, with --pubkey
    files: list[str] = []
    skipped: list[str] = []
    signature = None
    with atomic_dir(output.absolute(), force=force) as staging:
        for i in order:
            if pubkey is not None and signature is None and paths[i] not in signed_first:
                signed = _load(staging, output)
                signature = signed.check_signature(pubkey)
                allowed = _signed_paths(signed)
                unsigned = [j for j in order if paths[j] not in allowed]
                if any(layers[j]["mediaType"] != DOC_RAW for j in unsigned):
                    name = next(paths[j] for j in unsigned if layers[j]["mediaType"] != DOC_RAW)
                    raise IntegrityError(f"{ref}: layer '{name}' is not in the signed manifest; with --pubkey, "
                                         "modelpack writes only what the signature covers, refusing the pull.")
                skipped = [paths[j].as_posix() for j in unsigned]  # documents (a README) the package does not list
            if paths[i].as_posix() in skipped:
                continue
            registry.check_deadline()
            files += _place(registry, layers[i], paths[i], diff_ids[i], staging, budget)
        if pubkey is not None and signature is None:
            signature = _load(staging, output).check_signature(pubkey)
        is_package = (staging / mf.MANIFEST_NAME).is_file()
        if is_package:
            _load(staging, output).check_checksums()
    return PullResult(str(ref), digest, output, sorted(files), is_package, signature, sorted(skipped))


def _place(registry: Registry, layer: dict[str, Any], path: PurePosixPath, diff_id: str, staging: Path,
           budget: Budget) -> list[str]:
    media_type = str(layer["mediaType"])
    target = staging.joinpath(*path.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    budget.take_file()
    if media_type.endswith(".raw"):
        budget.take_bytes(layer["size"], path)
    fd, tmp_name = tempfile.mkstemp(dir=staging, prefix=".layer-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            registry.download_blob(layer["digest"], layer["size"], fh)
        if media_type.endswith(".raw"):
            if diff_id != layer["digest"]:
                raise IntegrityError(f"{registry.ref}: '{path}' has DiffID {printable(str(diff_id)[:80])} but digest "
                                     f"{layer['digest']}.")
            os.replace(tmp, target)
            return [path.as_posix()]
        return extract(registry.ref, tmp, media_type, path, diff_id, staging, budget)
    finally:
        tmp.unlink(missing_ok=True)
