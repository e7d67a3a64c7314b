"""API keys: from --api-key, MODELPACK_API_KEY, or a keys file; compared in constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, Unauthorized


@dataclass(frozen=True)
class ApiKey:
    name: str
    secret: bytes


class KeyRing:
    """Every key is compared on every check, so timing reveals neither which key nor how many matched."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def build(cls, api_key: str | None, keys_file: Path | None) -> "KeyRing":
        keys = [ApiKey("default", api_key.encode())] if api_key else []
        if keys_file is not None:
            keys += read_keys_file(keys_file)
        return cls(keys)

    def check(self, header: str | None) -> str:
        """The name of the key in an `Authorization: Bearer KEY` header; Unauthorized otherwise."""
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'.",
                               headers={"WWW-Authenticate": "Bearer"})
        given = header[7:].strip().encode()
        found = None
        for key in self.keys:
            if hmac.compare_digest(given, key.secret) and found is None:
                found = key.name
        if found is None:
            raise Unauthorized("invalid API key.", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return found


def read_keys_file(path: Path) -> list[ApiKey]:
    """One key per line, `name:key` or a bare key; blank lines and # comments are ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"--api-keys-file '{path}': cannot read it ({exc.strerror}).") from exc
    keys = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep:
            name, secret = f"key{number}", line
        if len(secret) < 8:
            raise InputError(f"--api-keys-file '{path}' line {number}: a key must be at least 8 characters.")
        keys.append(ApiKey(name.strip(), secret.strip().encode()))
    if not keys:
        raise InputError(f"--api-keys-file '{path}': no keys in it.")
    return keys
