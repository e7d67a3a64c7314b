"""A package: a directory holding `modelpack.json` and the artifacts it lists.

Every command that takes a package also takes a `.mpk` archive: `open_package`
extracts one safely into a temporary directory for the duration of the command.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import manifest as mf
from .errors import InputError, IntegrityError
from .formats import ModelRef, Repr, detect
from .signature import Signature

CHUNK = 1 << 20
_KEY_HINT = "MODELPACK_KEY or --key-file"

# Which artifact to run when the caller does not say: fastest runtime first.
RUNTIME_PREFERENCE = (Repr.ONNX, Repr.TFLITE, Repr.SAVEDMODEL, Repr.KERAS)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Digest:
    kind: str
    size: int
    sha256: str


def digest(path: Path) -> Digest:
    """Size and sha256 of a file, or of a directory tree (over sorted relative paths and file hashes)."""
    if path.is_symlink():
        raise IntegrityError(f"'{path}': links are not allowed in a package.")
    if path.is_file():
        return Digest("file", path.stat().st_size, sha256_file(path))
    if not path.is_dir():
        raise IntegrityError(f"'{path}': missing.")
    h = hashlib.sha256()
    size = 0
    for file in sorted(p for p in path.rglob("*")):
        if file.is_symlink():
            raise IntegrityError(f"'{file}': links are not allowed in a package.")
        if file.is_file():
            rel = file.relative_to(path).as_posix()
            h.update(f"{rel}\0{sha256_file(file)}\n".encode())
            size += file.stat().st_size
    return Digest("directory", size, h.hexdigest())


class Package:
    """A package directory with its validated manifest."""

    def __init__(self, root: Path, manifest: dict[str, Any], source: Path | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self.source = source or root  # what the user named: the directory or the .mpk

    @classmethod
    def load(cls, root: Path, source: Path | None = None) -> Package:
        return cls(root, mf.read(root / mf.MANIFEST_NAME), source)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def signature(self) -> Signature:
        return Signature.from_dict(self.manifest["signature"])

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return list(self.manifest["artifacts"])

    def path_of(self, entry: dict[str, Any]) -> Path:
        path: Path = (self.root / entry["path"]).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise IntegrityError(f"{self.source}: artifact path '{entry['path']}' leaves the package.")
        return path

    def formats(self) -> list[Repr]:
        return [Repr(a["format"]) for a in self.artifacts]

    def artifact(self, fmt: Repr | str | None = None) -> dict[str, Any]:
        """The artifact of format `fmt`, or the best one to run when `fmt` is None."""
        by_format = {a["format"]: a for a in self.artifacts}
        if fmt is None:
            for rep in RUNTIME_PREFERENCE:
                if rep.value in by_format:
                    return by_format[rep.value]
        elif str(fmt) in by_format:
            return by_format[str(fmt)]
        have = ", ".join(by_format) or "none"
        raise InputError(f"{self.source}: no {fmt} artifact in this package (it has: {have}).")

    def model_ref(self, entry: dict[str, Any]) -> ModelRef:
        path = self.path_of(entry)
        rep = Repr(entry["format"])
        if rep is Repr.KERAS:
            found = detect(path)
            return ModelRef(rep, path, found.flavour, found.container)
        return ModelRef(rep, path)

    def check_checksums(self) -> list[dict[str, Any]]:
        """Recompute every artifact's size and sha256; raise IntegrityError naming the first mismatch."""
        report = []
        for entry in self.artifacts:
            path = self.path_of(entry)
            if not path.exists():
                raise IntegrityError(f"{self.source}: artifact '{entry['path']}' is missing.")
            found = digest(path)
            if found.size != entry["size"] or found.sha256 != entry["sha256"]:
                raise IntegrityError(
                    f"{self.source}: artifact '{entry['path']}' does not match the manifest "
                    f"(sha256 {found.sha256[:12]}…, expected {entry['sha256'][:12]}…; size {found.size}, "
                    f"expected {entry['size']}). The package was modified or corrupted."
                )
            for extra in entry.get("files", []):
                self._check_companion(entry, extra)
            report.append({"path": entry["path"], "format": entry["format"], "size": found.size, "checksum": "ok"})
        return report

    def _check_companion(self, entry: dict[str, Any], extra: dict[str, Any]) -> None:
        path = self.path_of(extra)
        if not path.is_file():
            raise IntegrityError(f"{self.source}: '{extra['path']}' (external data of '{entry['path']}') is missing.")
        found = digest(path)
        if found.size != extra["size"] or found.sha256 != extra["sha256"]:
            raise IntegrityError(f"{self.source}: '{extra['path']}' (external data of '{entry['path']}') does not match "
                                 "the manifest; the package was modified or corrupted.")
        listed = {e["path"] for e in entry.get("files", [])}
        root = self.root.resolve()
        for name in (p.resolve().relative_to(root).as_posix() for p in companions(self.path_of(entry))):
            if name not in listed:
                raise IntegrityError(f"{self.source}: '{entry['path']}' reads '{name}', which the manifest does not list.")

    def verify(self, load: bool = True) -> list[dict[str, Any]]:
        """Checksums, then load each artifact on its runtime."""
        from .runtimes import load_runner

        report = self.check_checksums()
        if load:
            for row, entry in zip(report, self.artifacts):
                try:
                    load_runner(self.model_ref(entry), self.signature)
                except Exception as exc:  # a domain error or the runtime's own: either way it does not load
                    raise IntegrityError(f"{self.source}: artifact '{entry['path']}' does not load: {exc}") from exc
                row["load"] = "ok"
        return report


@contextmanager
def open_package(path: str | Path) -> Iterator[Package]:
    """Open a package directory, or extract a `.mpk` safely into a temporary directory."""
    from . import archive

    p = Path(path)
    if not p.exists():
        raise InputError(f"package '{p}': no such file or directory. Expected a package directory or a .mpk file.")
    if p.is_dir():
        if not (p / mf.MANIFEST_NAME).is_file():
            raise InputError(f"'{p}' is not a modelpack package (no {mf.MANIFEST_NAME}).")
        yield Package.load(p, p)
        return
    from .encryption import is_encrypted

    if is_encrypted(p):
        raise InputError(f"'{p}' is encrypted: inspect, verify and serve read it (in memory, with {_KEY_HINT}); "
                         "other commands need the unencrypted package.")
    sweep_extractions()
    tmp = Path(tempfile.mkdtemp(prefix=f"{EXTRACT_PREFIX}{os.getpid()}-"))
    try:
        archive.extract(p, tmp)
        yield Package.load(tmp, p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


EXTRACT_PREFIX = "modelpack-x"  # + the pid of the process that extracted it


def sweep_extractions() -> None:
    """Remove extracted packages left in the temp directory by processes that died (kill -9 of `serve x.mpk`):
    no plaintext model outlives the process that needed it."""
    for stale in Path(tempfile.gettempdir()).glob(f"{EXTRACT_PREFIX}*-*"):
        try:
            pid = int(stale.name[len(EXTRACT_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or not stale.is_dir():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:  # alive, another user's
            continue


def is_package(path: Path) -> bool:
    if path.is_dir():
        return (path / mf.MANIFEST_NAME).is_file()
    from . import archive

    return path.is_file() and archive.is_archive(path)


def companions(path: Path) -> list[Path]:
    """Files a model reads besides itself: an ONNX model's external data (checked to stay beside it)."""
    if not path.is_file() or path.suffix.lower() != ".onnx":
        return []
    import onnx

    from .formats import external_files

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX after all: no companions
        return []
    return [path.parent / name for name in external_files(model, path)]


def model_size(path: Path) -> int:
    """Bytes of a model on disk, its external data included."""
    return digest(path).size + sum(f.stat().st_size for f in companions(path))


# ONNX's protobuf limit: a model this large keeps its weights in an external data file.
PROTOBUF_LIMIT = (2 << 30) - (64 << 20)


def copy_artifact(src: Path, dst: Path) -> list[Path]:
    """Copy a model into a package; returns the companion files written beside it.

    An ONNX model with external data (or one too large for a single protobuf) is written as
    `model.onnx` plus `model.onnx.data`, with the tensors' locations rewritten to match."""
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=False)
        return []
    extra = companions(src)
    if not extra and src.stat().st_size < PROTOBUF_LIMIT:
        shutil.copyfile(src, dst)
        return []
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import _get_all_tensors

    data_name = dst.name + ".data"
    model = onnx.load(str(src), load_external_data=True)
    for tensor in _get_all_tensors(model):  # only raw_data can move out: re-encode typed fields (float_data, ...)
        if not tensor.HasField("raw_data") and tensor.data_type != onnx.TensorProto.STRING:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name,
              size_threshold=1024, convert_attribute=True)  # Constant nodes' tensors count toward 2 GB too
    return [dst.parent / data_name] if (dst.parent / data_name).exists() else []
