"""A package: `modelpack.json` and the artifacts it lists, in a directory or read from an archive."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from ..errors import InputError, IntegrityError, UsageError
from ..formats import ModelRef, Repr, detect
from ..signature import Signature
from . import manifest as mf
from .files import companions

if TYPE_CHECKING:
    from ..runtimes import Runner
    from .encryption import EncryptedPackage

CHUNK = 1 << 20
_KEY_HINT = "MODELPACK_KEY or --key-file"

# Which artifact to run when the caller does not say: fastest runtime first.
RUNTIME_PREFERENCE = (Repr.ONNX, Repr.TFLITE, Repr.SAVEDMODEL, Repr.KERAS)
MEMORY_LOADABLE = (Repr.ONNX, Repr.TFLITE)  # runtimes that load a model from bytes


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
    """A package's validated manifest, and its artifacts: files under `root`, or, for an encrypted `.mpk`,
    bytes decrypted in memory on demand (`read`). Open one with `modelpack.package.open_any`."""

    def __init__(self, root: Path | None, manifest: mf.Manifest, source: Path | None = None, *,
                 manifest_bytes: bytes | None = None, signature_bytes: bytes | None = None,
                 sealed: EncryptedPackage | None = None, encrypted: bool = False) -> None:
        self._root = root
        self.manifest = manifest
        self.source = source or root or Path(".")  # what the user named: the directory or the .mpk
        self.manifest_bytes = manifest_bytes
        self.signature_bytes = signature_bytes
        self._sealed = sealed
        self.encrypted = encrypted or sealed is not None
        self._runners: dict[str, Any] = {}

    @classmethod
    def load(cls, root: Path, source: Path | None = None) -> Package:
        from .signing import SIGNATURE_NAME

        raw = mf.read_bytes(root / mf.MANIFEST_NAME)
        signature = root / SIGNATURE_NAME
        return cls(root, mf.parse(raw, str(root / mf.MANIFEST_NAME)), source, manifest_bytes=raw,
                   signature_bytes=signature.read_bytes() if signature.is_file() else None)

    @property
    def root(self) -> Path:
        """The directory holding the artifacts; an encrypted or unopened archive has none."""
        if self._root is None:
            how = (f"it is encrypted: inspect, verify and serve read it (in memory, with {_KEY_HINT}); other "
                   "commands need the unencrypted package") if self.encrypted else "it was opened for its manifest only"
            raise InputError(f"'{self.source}': no files to read here: {how}.")
        return self._root

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
    def artifacts(self) -> list[mf.Artifact]:
        return list(self.manifest["artifacts"])

    def path_of(self, entry: mf.Artifact | mf.Companion) -> Path:
        root = self.root
        path: Path = (root / entry["path"]).resolve()
        if not path.is_relative_to(root.resolve()):
            raise IntegrityError(f"{self.source}: artifact path '{entry['path']}' leaves the package.")
        return path

    def formats(self) -> list[Repr]:
        return [Repr(a["format"]) for a in self.artifacts]

    def artifact(self, fmt: Repr | str | None = None) -> mf.Artifact:
        """The artifact of format `fmt`, or the best one to run when `fmt` is None (of those an encrypted
        package can run from memory, when it is encrypted)."""
        by_format = {a["format"]: a for a in self.artifacts}
        if fmt is None:
            for rep in RUNTIME_PREFERENCE:
                if rep.value in by_format and (not self.encrypted or rep in MEMORY_LOADABLE):
                    return by_format[rep.value]
            if self.encrypted:
                raise UsageError(f"{self.source}: an encrypted package runs from memory, which needs an ONNX or "
                                 f"TFLite artifact; this one has {', '.join(by_format) or 'none'}.")
        elif str(fmt) in by_format:
            if self.encrypted and Repr(str(fmt)) not in MEMORY_LOADABLE:
                raise UsageError(f"{self.source}: an encrypted package runs from memory, which {fmt} cannot; "
                                 "choose onnx or tflite.")
            return by_format[str(fmt)]
        have = ", ".join(by_format) or "none"
        raise InputError(f"{self.source}: no {fmt} artifact in this package (it has: {have}).")

    def model_ref(self, entry: mf.Artifact) -> ModelRef:
        path = self.path_of(entry)
        rep = Repr(entry["format"])
        if rep is Repr.KERAS:
            found = detect(path)
            return ModelRef(rep, path, found.flavour, found.container)
        return ModelRef(rep, path, session=entry.get("session"))

    def read(self, entry: mf.Artifact) -> bytes:
        """An artifact file's bytes, checked against the manifest when it is decrypted."""
        if self._sealed is not None:
            return self._sealed.read(entry["path"])
        return self.path_of(entry).read_bytes()

    def check_checksums(self) -> list[ArtifactCheck]:
        """Recompute every artifact's size and sha256; raise IntegrityError naming the first mismatch."""
        if self._sealed is not None:  # decrypting checks the sha256; one artifact in memory at a time
            return [{"path": e["path"], "format": e["format"], "size": len(self._sealed.read(e["path"])),
                     "checksum": "ok"} for e in self.artifacts]
        report: list[ArtifactCheck] = []
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

    def _check_companion(self, entry: mf.Artifact, extra: mf.Companion) -> None:
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

    def check_signature(self, pubkey: Path, option: str = "--pubkey") -> dict[str, Any]:
        """The signature record, if `modelpack.sig` signs these exact manifest bytes with `pubkey`'s key."""
        from .signing import check, load_public

        if self.manifest_bytes is None:
            raise IntegrityError(f"{self.source}: the manifest's bytes were not kept; reopen the package.")
        return check(self.manifest_bytes, self.signature_bytes, load_public(pubkey, option), str(self.source))

    def verify(self, *, pubkey: Path | None = None, load: bool = True, option: str = "--pubkey") -> Verified:
        """Signature first (when `pubkey` is given), then every artifact's checksum, then loading each:
        what `modelpack verify` prints and what `serve` checks before it starts."""
        signature = self.check_signature(pubkey, option) if pubkey is not None else None
        report = self.check_checksums()
        if load:
            for row, entry in zip(report, self.artifacts):
                row["load"] = self._load(entry)
        return {"signature": signature, "encrypted": self.encrypted, "artifacts": report}

    def runner(self, runtime: str | None = None, *, entry: mf.Artifact | None = None, threads: int | None = None,
               model_bytes: bytes | None = None) -> Runner:
        """A runner for one artifact (the fastest, unless `runtime` or `entry` names one), with the session
        settings its manifest recorded: from memory for an encrypted package (or given `model_bytes`), else from
        its file. The one place an artifact becomes a runner (predict, verify, serve)."""
        from ..runtimes import load_runner, runner_from_bytes

        entry = entry if entry is not None else self.artifact(runtime)
        if model_bytes is None and self._sealed is not None:
            model_bytes = self.read(entry)
        if model_bytes is not None:
            return runner_from_bytes(Repr(entry["format"]), model_bytes, self.signature, threads, entry.get("session"))
        return load_runner(self.model_ref(entry), self.signature, threads=threads)

    def predict(self, inputs: Any, runtime: str | None = None) -> dict[str, Any]:
        """Run an artifact (the fastest, unless `runtime` names one) on `inputs`: a dict of arrays by input
        name, or one array for a single-input model. Returns the outputs by name, as numpy arrays."""
        import numpy as np

        from ..data import _select_inputs

        entry = self.artifact(runtime)
        runner = self._runners.get(entry["path"])
        if runner is None:
            runner = self._runners[entry["path"]] = self.runner(entry=entry)
        arrays = ({str(k): np.asarray(v) for k, v in inputs.items()} if isinstance(inputs, dict)
                  else {"x": np.asarray(inputs)})
        return dict(runner.run(_select_inputs(arrays, self.signature, f"{self.name}.predict")))

    def _load(self, entry: mf.Artifact) -> str:
        if self._sealed is not None and Repr(entry["format"]) not in MEMORY_LOADABLE:
            return "skipped (loads from files only)"
        try:
            self.runner(entry=entry)
        except Exception as exc:  # a domain error or the runtime's own: either way it does not load
            raise IntegrityError(f"{self.source}: artifact '{entry['path']}' does not load: {exc}") from exc
        return "ok (in memory)" if self._sealed is not None else "ok"


class ArtifactCheck(TypedDict):
    path: str
    format: str
    size: int
    checksum: str
    load: NotRequired[str]


class Verified(TypedDict):
    signature: dict[str, Any] | None
    encrypted: bool
    artifacts: list[ArtifactCheck]


EXTRACT_PREFIX = "modelpack-x"  # + the pid of the process that extracted it


def extracted(archive_path: Path) -> Path:
    """Extract a plain `.mpk` into a new temporary directory (the caller removes it)."""
    from . import archive

    sweep_extractions()
    tmp = Path(tempfile.mkdtemp(prefix=f"{EXTRACT_PREFIX}{os.getpid()}-"))
    try:
        archive.extract(archive_path, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


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
