"""Checking a package end to end: signature (with a public key), checksums, and that artifacts load.

Works on a directory, a `.mpk`, and an encrypted `.mpk` (decrypted in memory only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import IntegrityError, ModelpackError
from .formats import Repr

MEMORY_LOADABLE = (Repr.ONNX, Repr.TFLITE)  # runtimes that load a model from bytes


def verify(path: Path, *, pubkey: Path | None = None, key_file: Path | None = None, load: bool = True) -> dict[str, Any]:
    """Signature first (when `pubkey` is given), then every artifact's checksum, then loading each."""
    from .encryption import is_encrypted

    if path.is_file() and is_encrypted(path):
        return _verify_encrypted(path, pubkey, key_file, load)
    from .package import open_package
    from .signing import verify_dir

    with open_package(path) as pkg:
        signature = verify_dir(pkg.root, pubkey, str(path)) if pubkey else None
        report = pkg.verify(load=load)
    return {"signature": signature, "encrypted": False, "artifacts": report}


def _verify_encrypted(path: Path, pubkey: Path | None, key_file: Path | None, load: bool) -> dict[str, Any]:
    from .encryption import load_key, open_encrypted
    from .signing import check, load_public

    package = open_encrypted(path, load_key(key_file))
    signature = check(package.manifest_bytes, package.signature_bytes, load_public(pubkey), str(path)) if pubkey else None
    report = []
    for entry in package.manifest["artifacts"]:
        data = package.read(entry["path"])  # raises on a wrong key, tampering or a checksum mismatch
        row: dict[str, Any] = {"path": entry["path"], "format": entry["format"], "size": len(data), "checksum": "ok"}
        if load:
            row["load"] = _load_from_memory(path, entry, data, package.manifest)
        report.append(row)
    return {"signature": signature, "encrypted": True, "artifacts": report}


def _load_from_memory(path: Path, entry: dict[str, Any], data: bytes, manifest: dict[str, Any]) -> str:
    from .runtimes import runner_from_bytes
    from .signature import Signature

    rep = Repr(entry["format"])
    if rep not in MEMORY_LOADABLE:
        return "skipped (loads from files only)"
    try:
        runner_from_bytes(rep, data, Signature.from_dict(manifest["signature"]))
    except ModelpackError as exc:
        raise IntegrityError(f"{path}: artifact '{entry['path']}' does not load: {exc}") from exc
    return "ok (in memory)"
