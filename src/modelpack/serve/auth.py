"""API keys: who may call, what they may call (scopes), and how often (a token bucket per key).

Keys come from --api-key / MODELPACK_API_KEY (every scope, no limit) and from a keys
file, one key per line:

    # name:key[:scopes[:rate]]
    ci:4f1c…e9:infer,metadata:20/s
    digits-app:9b2e…70:infer@digits,infer@mnist-*
    ops:77aa…01:admin
    legacy-bare-key-without-a-name

Scopes: `infer` (the inference routes), `metadata` (model and server metadata, the
OpenAPI document and docs), `admin` (everything, including /metrics). `SCOPE@MODEL`
grants a scope on the models whose name matches MODEL (a name, or a shell pattern
such as `team-a-*`) and nothing server-wide: `infer@digits` may infer with digits
(and ask for its readiness and metadata), and gets 403 on every other model. A rate is
N/s or N/m: a bucket of N tokens refilled continuously; an empty bucket answers 429
with Retry-After. Keys are compared in constant time, and every key is compared on
every check, so timing reveals neither which key matched nor how many exist.
"""

from __future__ import annotations

import fnmatch
import hmac
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Forbidden, InputError, RateLimited, Unauthorized

SCOPES = ("infer", "metadata", "admin")
ALL_SCOPES = frozenset(SCOPES)
RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*$")


@dataclass(frozen=True)
class Rate:
    tokens: float  # bucket size: the burst
    per_second: float  # refill

    @classmethod
    def parse(cls, text: str, where: str) -> Rate:
        match = RATE_RE.match(text)
        if not match or float(match[1]) <= 0:
            raise InputError(f"{where}: rate '{text}' should look like 50/s or 600/m.")
        n = float(match[1])
        return cls(n, n if match[2].startswith("s") else n / 60.0)


@dataclass
class TokenBucket:
    rate: Rate
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def take(self) -> float:
        """0 when a token was taken; else the seconds until one is available."""
        now = time.monotonic()
        if self.tokens < 0:
            self.tokens = self.rate.tokens
        self.tokens = min(self.rate.tokens, self.tokens + (now - self.stamp) * self.rate.per_second)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate.per_second


# What a scope grants beside itself: a model's readiness and metadata ("model") are open to whoever may infer with
# it or read metadata (tritonclient asks before it infers); admin grants everything.
_SATISFIES = {"model": ("model", "infer", "metadata", "admin")}


@dataclass(frozen=True)
class ApiKey:
    name: str
    secret: bytes
    scopes: frozenset[str] = ALL_SCOPES  # unqualified scopes: every model, and the server-wide routes
    rate: Rate | None = None
    models: tuple[tuple[str, str], ...] = ()  # (scope, model name or pattern): `infer@digits` in the keys file

    def _granting(self, scope: str) -> tuple[str, ...]:
        return _SATISFIES.get(scope, (scope, "admin"))

    def allows(self, scope: str, model: str | None = None) -> bool:
        """Whether the key has `scope` server-wide, or (with `model`) on that model."""
        scopes = self.scopes
        if scope in scopes or "admin" in scopes:  # the common case, first: every request asks
            return True
        granting = self._granting(scope)
        if any(s in self.scopes for s in granting):
            return True
        return model is not None and any(s in granting and fnmatch.fnmatchcase(model, pattern)
                                         for s, pattern in self.models)

    def may_name_a_model(self, scope: str) -> bool:
        """Whether some model could be allowed: a call that names its model is checked again once it is known."""
        return self.allows(scope) or any(s in self._granting(scope) for s, _ in self.models)

    def describe(self) -> str:
        return ", ".join(sorted(self.scopes) + [f"{s}@{m}" for s, m in self.models]) or "none"


class KeyRing:
    def __init__(self, keys: list[ApiKey], keys_file: Path | None = None, default_rate: Rate | None = None,
                 api_key: str | None = None) -> None:
        self.keys = keys
        self.keys_file = keys_file
        self.default_rate = default_rate
        self._api_key = api_key
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def build(cls, api_key: str | None, keys_file: Path | None, rate_limit: str | None = None) -> KeyRing:
        default_rate = Rate.parse(rate_limit, "--rate-limit") if rate_limit else None
        return cls(_keys(api_key, keys_file, default_rate), keys_file, default_rate, api_key)

    def reload(self) -> int:
        """Re-read the keys file (on SIGHUP). A bad file keeps the current keys and raises InputError."""
        keys = _keys(self._api_key, self.keys_file, self.default_rate)
        with self._lock:
            self.keys = keys  # one assignment: a request sees the old ring or the new one, never half
            self._buckets = {n: b for n, b in self._buckets.items() if any(k.name == n for k in keys)}
        return len(keys)

    def check(self, header: str | None) -> ApiKey:
        """The key in an `Authorization: Bearer KEY` header; Unauthorized otherwise."""
        if not header or header[:7].lower() != "bearer ":  # auth schemes are case-insensitive (RFC 9110)
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'.",
                               headers={"WWW-Authenticate": "Bearer"})
        given = header[7:].strip().encode()
        found = None
        for key in self.keys:
            if hmac.compare_digest(given, key.secret) and found is None:
                found = key
        if found is None:
            raise Unauthorized("invalid API key.", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return found

    def named(self, name: str) -> ApiKey | None:
        """The key of this name now (names are unique in a ring); None after a reload removed it."""
        return next((k for k in self.keys if k.name == name), None)

    def authorize(self, key: ApiKey, scope: str, path: str, per_model: bool = False) -> None:
        """Forbidden unless the key has `scope` for `path`; a call that names a model (`per_model`) passes here
        when the key has the scope on some model, and `authorize_model` checks the model it names."""
        if key.allows(scope) or (per_model and key.may_name_a_model(scope)):
            return
        shown = "infer' or 'metadata" if scope == "model" else scope
        raise Forbidden(f"API key '{key.name}' lacks the '{shown}' scope needed for {path} "
                        f"(it has: {key.describe()}).")

    def authorize_model(self, key: ApiKey, scope: str, model: str) -> None:
        if not key.allows(scope, model):
            shown = "infer' or 'metadata" if scope == "model" else scope
            raise Forbidden(f"API key '{key.name}' lacks the '{shown}' scope on model {model!r} "
                            f"(it has: {key.describe()}).")

    def throttle(self, key: ApiKey) -> None:
        rate = key.rate or self.default_rate
        if rate is None:
            return
        with self._lock:
            bucket = self._buckets.get(key.name)
            if bucket is None or bucket.rate != rate:
                bucket = self._buckets[key.name] = TokenBucket(rate)
            wait = bucket.take()
        if wait > 0:
            raise RateLimited(f"API key '{key.name}' is over its rate limit ({rate.tokens:g} per "
                              f"{'second' if rate.tokens == rate.per_second else 'minute'}); retry later.",
                              headers={"Retry-After": str(max(1, math.ceil(wait)))})


def _keys(api_key: str | None, keys_file: Path | None, default_rate: Rate | None) -> list[ApiKey]:
    keys = [ApiKey("default", api_key.encode(), ALL_SCOPES, None)] if api_key else []
    if keys_file is not None:
        keys += read_keys_file(keys_file)
    return keys


def read_keys_file(path: Path) -> list[ApiKey]:
    """`name:key[:scopes[:rate]]` per line, or a bare key; blank lines and # comments are ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"--api-keys-file '{path}': cannot read it ({exc.strerror}).") from exc
    keys: list[ApiKey] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"--api-keys-file '{path}' line {number}"
        parts = [p.strip() for p in line.split(":")]
        if len(parts) == 1:
            parts = [f"key{number}", parts[0]]
        if len(parts) > 4:
            raise InputError(f"{where}: expected name:key[:scopes[:rate]].")
        name, secret = parts[0], parts[1]
        if len(secret) < 8:
            raise InputError(f"{where}: a key must be at least 8 characters.")
        scopes, models = ALL_SCOPES, tuple[tuple[str, str], ...]()
        if len(parts) >= 3 and parts[2] not in ("", "*", "all"):
            scopes, models = _scopes(parts[2], where)
        rate = Rate.parse(parts[3], where) if len(parts) == 4 and parts[3] else None
        if any(k.name == name for k in keys):
            raise InputError(f"{where}: the name '{name}' is used twice.")
        keys.append(ApiKey(name, secret.encode(), scopes, rate, models))
    if not keys:
        raise InputError(f"--api-keys-file '{path}': no keys in it.")
    return keys


def _scopes(text: str, where: str) -> tuple[frozenset[str], tuple[tuple[str, str], ...]]:
    """`infer,metadata` and `infer@digits` (a scope on the models a name or shell pattern matches)."""
    plain: set[str] = set()
    models: list[tuple[str, str]] = []
    for item in (s.strip() for s in text.split(",")):
        scope, at, model = item.partition("@")
        if scope not in ALL_SCOPES:
            raise InputError(f"{where}: unknown scope {scope!r}; use {', '.join(SCOPES)}, each optionally "
                             "@MODEL (e.g. infer@digits).")
        if not at:
            plain.add(scope)
        elif not model:
            raise InputError(f"{where}: {item!r} names no model; write {scope}@NAME (a name or a pattern like "
                             "team-*).")
        else:
            models.append((scope, model))
    return frozenset(plain), tuple(models)
