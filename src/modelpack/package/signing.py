"""Package signatures: Ed25519 over the manifest's exact bytes, in a detached `modelpack.sig`.

The manifest lists every artifact's sha256, so checking the signature and then the
checksums covers every byte of the package. The signature file is JSON, so people
and tools can read which key signed it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, IntegrityError, UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from . import manifest as mf

SIGNATURE_NAME = "modelpack.sig"
ALGORITHM = "ed25519"


def _serialization() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization


def keygen(out: Path, force: bool = False) -> tuple[Path, Path]:
    """Write private.pem (mode 0600) and public.pem into `out`."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ser = _serialization()
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / "private.pem", out / "public.pem"
    for path in (private, public):
        if path.exists() and not force:
            raise UsageError(f"'{path}' exists; pass --force to replace the key pair.")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def fingerprint(public_key: Any) -> str:
    ser = _serialization()
    raw = public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


def load_private(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = _serialization().load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"--key '{path}': not a readable unencrypted PEM private key ({exc}).") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"--key '{path}': an Ed25519 key is expected (make one with 'modelpack keygen').")
    return key


def load_public(path: Path, option: str = "--pubkey") -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = _serialization().load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"{option} '{path}': not a readable PEM public key ({exc}).") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{option} '{path}': an Ed25519 public key is expected (from 'modelpack keygen').")
    return key


def sign(package_dir: Path, key_path: Path) -> dict[str, Any]:
    """Write `modelpack.sig` beside the manifest; the manifest is validated first."""
    from ..atomic import atomic_file

    key = load_private(key_path)
    manifest_path = package_dir / mf.MANIFEST_NAME
    data = manifest_path.read_bytes()
    mf.validate(json.loads(data), str(manifest_path))
    record = {"algorithm": ALGORITHM, "key": fingerprint(key.public_key()),
              "manifest_sha256": hashlib.sha256(data).hexdigest(),
              "signature": base64.b64encode(key.sign(data)).decode()}
    with atomic_file(package_dir / SIGNATURE_NAME, force=True) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def check(manifest_bytes: bytes, signature_bytes: bytes | None, public_key: Any, where: str) -> dict[str, Any]:
    """Raise IntegrityError unless `signature_bytes` is a valid signature of the manifest by `public_key`."""
    from cryptography.exceptions import InvalidSignature

    if signature_bytes is None:
        raise IntegrityError(f"{where}: the package is not signed (no {SIGNATURE_NAME}); sign it with "
                             f"'modelpack sign PKG --key private.pem'.")
    try:
        record = json.loads(signature_bytes)
        signature = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{where}: {SIGNATURE_NAME} is malformed ({exc}).") from exc
    if record.get("algorithm") != ALGORITHM:
        raise IntegrityError(f"{where}: {SIGNATURE_NAME} uses '{record.get('algorithm')}', expected {ALGORITHM}.")
    expected = fingerprint(public_key)
    if record.get("key") != expected:
        raise IntegrityError(f"{where}: signed by key {record.get('key')}, not by the given public key ({expected}).")
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature as exc:
        raise IntegrityError(f"{where}: the signature does not match the manifest; the package was modified "
                             f"after signing.") from exc
    return dict(record)

