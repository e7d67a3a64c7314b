"""The package format: `modelpack.json` plus the artifacts it lists, as a directory, a `.mpk` zip, or an
encrypted `.mpk`.

One reader opens all three: `open_any(path, key_file=..., need=...)`. Nothing else in modelpack asks whether
a package is an archive or encrypted. Modules: `manifest` (schema and records), `dir` (the `Package` and
its checks), `archive` (`.mpk` write and safe extraction), `encryption` (AES-256-GCM at rest), `signing`
(Ed25519).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from ..errors import InputError
from . import manifest as mf
from .dir import (
    EXTRACT_PREFIX,
    MEMORY_LOADABLE,
    RUNTIME_PREFERENCE,
    ArtifactCheck,
    Digest,
    Package,
    Verified,
    copy_artifact,
    digest,
    extracted,
    model_size,
    sha256_file,
    sweep_extractions,
)
from .files import companions

__all__ = [
    "EXTRACT_PREFIX", "MEMORY_LOADABLE", "RUNTIME_PREFERENCE", "ArtifactCheck", "Digest", "Need", "Package",
    "Verified", "companions", "copy_artifact", "digest", "is_package", "model_size", "open_any", "sha256_file",
    "sweep_extractions", "verify",
]

# What the caller will do with the package, which decides how much opening it costs:
#   manifest: read the manifest (and signature) only; nothing extracted or decrypted, no key needed.
#   memory:   read artifacts as bytes; an encrypted archive is decrypted in memory with its key.
#   files:    artifacts as files on disk; a `.mpk` is extracted to a temporary directory, removed on exit;
#             an encrypted archive is refused (its plaintext never touches the disk).
Need = Literal["manifest", "memory", "files"]


def is_package(path: Path) -> bool:
    """A package directory, or an archive (plain or encrypted) holding a manifest."""
    from .archive import is_archive

    if path.is_dir():
        return (path / mf.MANIFEST_NAME).is_file()
    return path.is_file() and is_archive(path)


@contextmanager
def open_any(path: str | Path, *, key_file: Path | None = None, need: Need = "files") -> Iterator[Package]:
    """Open a package directory, a `.mpk`, or an encrypted `.mpk` (key from `key_file`, else MODELPACK_KEY)."""
    from . import encryption
    from .archive import read_head

    p = Path(path)
    if not p.exists():
        raise InputError(f"package '{p}': no such file or directory. Expected a package directory or a .mpk file.")
    if p.is_dir():
        if not (p / mf.MANIFEST_NAME).is_file():
            raise InputError(f"'{p}' is not a modelpack package (no {mf.MANIFEST_NAME}).")
        yield Package.load(p, p)
        return
    raw, signature, names = read_head(p)
    encrypted = encryption.ENC_NAME in names
    if need == "manifest":  # what the archive shows without a key, and without extracting anything
        yield Package(None, mf.parse(raw, f"{p}:{mf.MANIFEST_NAME}"), p, manifest_bytes=raw,
                      signature_bytes=signature, encrypted=encrypted)
        return
    if encrypted:
        if need == "files":
            raise InputError(f"'{p}' is encrypted: inspect, verify and serve read it (in memory, with "
                             "MODELPACK_KEY or --key-file); other commands need the unencrypted package.")
        sealed = encryption.open_encrypted(p, encryption.load_key(key_file))
        yield Package(None, sealed.manifest, p, manifest_bytes=sealed.manifest_bytes,
                      signature_bytes=sealed.signature_bytes, sealed=sealed)
        return
    tmp = extracted(p)
    try:
        yield Package.load(tmp, p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify(path: Path, *, pubkey: Path | None = None, key_file: Path | None = None, load: bool = True,
           option: str = "--pubkey") -> Verified:
    """`modelpack verify`: signature (with `pubkey`), then checksums, then that each artifact loads."""
    with open_any(path, key_file=key_file, need="memory") as pkg:
        return pkg.verify(pubkey=pubkey, load=load, option=option)
