"""Encryption at rest: an `.mpk` whose artifacts are AES-256-GCM ciphertext.

The manifest (and signature) stay readable, byte for byte as signed. Each artifact
is compressed with the package's codec, then encrypted with its own random nonce and
its path as associated data, so ciphertexts cannot be swapped between members.
`modelpack.enc.json` records the algorithm, the key's id and the nonces. Readers
decrypt into memory only and check every artifact's sha256 against the manifest.

The key is 32 bytes, from MODELPACK_KEY or a key file (raw, hex or base64), never
from a command-line value, which other users can read in the process list.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import hashlib
import io
import json
import lzma
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_file
from ..errors import InputError, IntegrityError, UsageError
from . import manifest as mf
from .signing import SIGNATURE_NAME

KEY_ENV = "MODELPACK_KEY"
ENC_NAME = "modelpack.enc.json"
ALGORITHM = "AES-256-GCM"

_CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "deflate": (lambda b: zlib.compress(b, 9), zlib.decompress),
    "lzma": (lzma.compress, lzma.decompress),
    "bzip2": (lambda b: bz2.compress(b, 9), bz2.decompress),
    "store": (lambda b: b, lambda b: b),
}


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _parse_key(text: bytes, where: str) -> bytes:
    if len(text) == 32:
        return text
    stripped = text.strip()
    try:
        if len(stripped) == 64:
            return binascii.unhexlify(stripped)
        decoded = base64.b64decode(stripped, validate=True)
        if len(decoded) == 32:
            return decoded
    except (binascii.Error, ValueError):
        pass
    raise InputError(f"{where}: expected a 32-byte key (raw, 64 hex digits, or base64); make one with "
                     f"'modelpack keygen --symmetric'.")


def load_key(key_file: Path | None) -> bytes:
    """The AES key from --key-file, else from MODELPACK_KEY; a clear error when neither is set."""
    if key_file is not None:
        try:
            return _parse_key(Path(key_file).read_bytes(), f"--key-file '{key_file}'")
        except OSError as exc:
            raise InputError(f"--key-file '{key_file}': cannot read it ({exc.strerror}).") from exc
    value = os.environ.get(KEY_ENV)
    if not value:
        raise UsageError(f"no encryption key: set {KEY_ENV} or pass --key-file FILE (never the key itself on the "
                         f"command line).")
    return _parse_key(value.encode(), KEY_ENV)


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"modelpack-key-id\0" + key).hexdigest()[:16]


def _aad(path: str) -> bytes:
    return f"modelpack-artifact:{path}".encode()


def _directory_bytes(path: Path) -> bytes:
    """A directory artifact as one deterministic, uncompressed zip (compression comes after)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(file.relative_to(path).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, file.read_bytes())
    return buffer.getvalue()


def pack(root: Path, out: Path, key: bytes, *, compression: str = "deflate", force: bool = False) -> int:
    """Write the package at `root` as an encrypted .mpk; return the archive's size."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    manifest_bytes = (root / mf.MANIFEST_NAME).read_bytes()
    manifest = mf.validate(json.loads(manifest_bytes), str(root / mf.MANIFEST_NAME))
    if any(entry.get("files") for entry in manifest["artifacts"]):
        raise UsageError(f"{root}: an artifact keeps its weights in external data files, which encrypted archives do "
                         "not support yet; pack it unencrypted, or re-export the model into one file.")
    aes = AESGCM(key)
    compress = _CODECS[compression][0]
    record: dict[str, Any] = {"algorithm": ALGORITHM, "key_id": key_id(key), "compression": compression,
                              "artifacts": {}}
    with atomic_file(out, force=force) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(mf.MANIFEST_NAME, manifest_bytes)
            if (root / SIGNATURE_NAME).is_file():
                zf.writestr(SIGNATURE_NAME, (root / SIGNATURE_NAME).read_bytes())
            for entry in manifest["artifacts"]:
                path = root / entry["path"]
                plain = _directory_bytes(path) if path.is_dir() else path.read_bytes()
                nonce = os.urandom(12)
                member = entry["path"] + ".enc"
                zf.writestr(member, aes.encrypt(nonce, compress(plain), _aad(entry["path"])))
                record["artifacts"][entry["path"]] = {"member": member, "nonce": base64.b64encode(nonce).decode(),
                                                      "kind": "directory" if path.is_dir() else "file"}
            zf.writestr(ENC_NAME, json.dumps(record, indent=2))
    return out.stat().st_size


@dataclass
class EncryptedPackage:
    """An encrypted archive opened with its key: the manifest, and artifacts decrypted on demand, in memory."""

    path: Path
    manifest_bytes: bytes
    manifest: mf.Manifest
    signature_bytes: bytes | None
    record: dict[str, Any]
    key: bytes = field(repr=False)

    def read(self, artifact_path: str) -> bytes:
        """Decrypt one artifact and check its sha256 against the manifest."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        entry = next((a for a in self.manifest["artifacts"] if a["path"] == artifact_path), None)
        info = self.record["artifacts"].get(artifact_path)
        if entry is None or info is None:
            raise IntegrityError(f"{self.path}: no encrypted artifact '{artifact_path}'.")
        try:
            with zipfile.ZipFile(self.path) as zf:
                cipher = zf.read(info["member"])
            nonce = base64.b64decode(info["nonce"])
            packed = AESGCM(self.key).decrypt(nonce, cipher, _aad(artifact_path))
            plain = _CODECS[self.record["compression"]][1](packed)
        except InvalidTag as exc:
            raise IntegrityError(f"{self.path}: artifact '{artifact_path}' fails authentication: the ciphertext "
                                 f"was tampered with.") from exc
        except (KeyError, zipfile.BadZipFile, OSError, ValueError, lzma.LZMAError, zlib.error) as exc:
            raise IntegrityError(f"{self.path}: artifact '{artifact_path}' is corrupt ({exc}).") from exc
        digest = hashlib.sha256(plain).hexdigest() if info["kind"] == "file" else _tree_digest(plain)
        if digest != entry["sha256"]:
            raise IntegrityError(f"{self.path}: artifact '{artifact_path}' does not match the manifest's sha256.")
        return plain


def _tree_digest(zipped: bytes) -> str:
    """The package digest of a directory (sorted `path\\0sha256` lines), from its in-memory zip."""
    h = hashlib.sha256()
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        for name in sorted(zf.namelist()):
            h.update(f"{name}\0{hashlib.sha256(zf.read(name)).hexdigest()}\n".encode())
    return h.hexdigest()


def read_manifest(path: Path) -> tuple[bytes, mf.Manifest, bytes | None, dict[str, Any]]:
    """What an encrypted archive shows without a key: manifest, signature, and the encryption record."""
    from .archive import read_head

    manifest_bytes, signature, names = read_head(path)
    if ENC_NAME not in names:
        raise InputError(f"'{path}': not an encrypted .mpk (no {ENC_NAME}).")
    try:
        with zipfile.ZipFile(path) as zf:
            record = json.loads(zf.read(ENC_NAME))
    except (zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise InputError(f"'{path}': not a readable encrypted .mpk ({exc}).") from exc
    return manifest_bytes, mf.parse(manifest_bytes, f"{path}:{mf.MANIFEST_NAME}"), signature, record


def open_encrypted(path: Path, key: bytes) -> EncryptedPackage:
    manifest_bytes, manifest, signature, record = read_manifest(path)
    if record.get("algorithm") != ALGORITHM:
        raise IntegrityError(f"{path}: encrypted with '{record.get('algorithm')}', expected {ALGORITHM}.")
    if record.get("key_id") != key_id(key):
        raise IntegrityError(f"{path}: wrong key (this archive needs key id {record.get('key_id')}, the key given "
                             f"has id {key_id(key)}).")
    return EncryptedPackage(path, manifest_bytes, manifest, signature, record, key)
