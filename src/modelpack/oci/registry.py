"""An OCI distribution client: references, credentials, token auth, blobs and manifests over HTTP(S).

Only the standard library: `urllib` for HTTP, the docker config file (and its credential helpers) or
environment variables for credentials. It speaks the parts of the OCI distribution spec that push and pull
need: `HEAD`/`GET` blobs, a monolithic upload (`POST` then `PUT ?digest=`), `PUT`/`GET` manifests, with Basic
or Bearer-token authentication as the registry's `WWW-Authenticate` challenge asks.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

from ..errors import InputError, IntegrityError, RegistryError, UsageError

MAX_MANIFEST = 4 * 1024 * 1024  # what the distribution spec asks clients to accept
RESUMES = 3  # a blob download that breaks off resumes from where it stopped, at most this many times
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Reference:
    """`oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST]`."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str, option: str = "REFERENCE") -> Reference:
        usage = (f"{option} '{text}': expected oci://HOST[:PORT]/REPOSITORY[:TAG] or ...@sha256:DIGEST, "
                 "e.g. oci://registry.example.com/models/digits:1.0.")
        rest = text.removeprefix("oci://")
        if "/" not in rest:
            raise UsageError(usage)
        registry, path = rest.split("/", 1)
        digest = None
        if "@" in path:
            path, digest = path.split("@", 1)
            if not DIGEST.match(digest):
                raise UsageError(f"{option} '{text}': the digest must be sha256: and 64 hex digits.")
        tag = None
        if ":" in path.rsplit("/", 1)[-1]:
            path, tag = path.rsplit(":", 1)
            if not _TAG.match(tag):
                raise UsageError(f"{option} '{text}': tag '{tag}' is not valid (letters, digits, _ . -; up to 128).")
        if not registry or not _REPO.match(path):
            raise UsageError(usage + " Repository names are lowercase.")
        return cls(registry, path, tag, digest)

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, self.digest)

    @property
    def target(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag (default `latest`)."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return (f"oci://{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- credentials ----------------------------------------------------------------------------------------------


class Login(NamedTuple):
    """A user name and password, or (`identity`) an OAuth2 refresh token that `docker login` kept instead."""

    user: str
    secret: str
    identity: bool = False


_TOKEN_USER = "<token>"  # a credential helper's user name for an identity token


def credentials(registry: str) -> Login | None:
    """The login for `registry`: MODELPACK_REGISTRY_USERNAME/_PASSWORD, else the docker config
    (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`): `auths` (with `identitytoken`), `credHelpers`,
    `credsStore`."""
    user, password = os.environ.get("MODELPACK_REGISTRY_USERNAME"), os.environ.get("MODELPACK_REGISTRY_PASSWORD")
    if user and password:
        return Login(user, password)
    config_path = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(f"docker config '{config_path}' cannot be read ({exc}); fix or move it.") from exc
    names = [registry, f"https://{registry}", f"http://{registry}"]
    if registry in ("docker.io", "registry-1.docker.io"):
        names.append("https://index.docker.io/v1/")
    helper = next((config.get("credHelpers", {}).get(n) for n in names if config.get("credHelpers", {}).get(n)),
                  config.get("credsStore"))
    for name in names:
        entry = config.get("auths", {}).get(name)
        if isinstance(entry, dict):
            if entry.get("identitytoken"):  # e.g. Azure: `auth` then holds a placeholder user and no password
                return Login(_TOKEN_USER, str(entry["identitytoken"]), identity=True)
            if entry.get("auth"):
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                return Login(user, password)
            if entry.get("username") and entry.get("password"):
                return Login(str(entry["username"]), str(entry["password"]))
    if helper:
        return _from_helper(str(helper), registry)
    return None


def _from_helper(helper: str, registry: str) -> Login | None:
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        raise UsageError(f"the docker config names the credential helper '{helper}', but docker-credential-{helper} "
                         "is not on PATH; install it, or set MODELPACK_REGISTRY_USERNAME and _PASSWORD.")
    proc = subprocess.run([program, "get"], input=registry, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return None  # the helper has nothing for this registry
    data = json.loads(proc.stdout)
    user = str(data.get("Username", ""))
    return Login(user, str(data.get("Secret", "")), identity=user == _TOKEN_USER)


# --- HTTP -----------------------------------------------------------------------------------------------------


class _NoAuthOnRedirect(urllib.request.HTTPRedirectHandler):
    """Blob downloads may redirect to storage elsewhere; the registry's credentials must not follow."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_NoAuthOnRedirect)


class Registry:
    """One repository on one registry, authenticated on the first challenge and reused."""

    def __init__(self, ref: Reference, *, plain_http: bool = False, push: bool = False) -> None:
        self.ref = ref
        http = plain_http or ref.registry.split(":")[0] in _LOOPBACK or ref.registry.startswith("[::1]")
        self.base = f"{'http' if http else 'https'}://{ref.registry}"
        self.scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        self._auth: str | None = None
        self._creds = credentials(ref.registry)

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.ref.repository}/{path}"

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                body: bytes | Path | None = None, ok: tuple[int, ...] = (200,)) -> Any:
        """Send a request (again, authenticated, after a 401 challenge); return the open response."""
        for attempt in range(2):
            stream: IO[bytes] | None = body.open("rb") if isinstance(body, Path) else None
            data = stream if stream is not None else body if isinstance(body, bytes) else None
            req = urllib.request.Request(url, data=data, method=method,
                                         headers=dict(headers or {}))
            if isinstance(body, Path):
                req.add_header("Content-Length", str(body.stat().st_size))
            if self._auth:
                req.add_header("Authorization", self._auth)
            try:
                response = _OPENER.open(req, timeout=300)
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 0:
                    self._authenticate(exc.headers.get("WWW-Authenticate", ""))
                    continue
                if exc.code in ok:
                    return exc
                raise self._failure(method, url, exc) from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise RegistryError(f"cannot reach {self.base} ({reason}); check the address, or use "
                                              "--plain-http for a registry without TLS.") from None
            finally:
                if stream is not None:
                    stream.close()
            if response.status not in ok:
                raise RegistryError(f"{method} {url} answered {response.status}, expected {ok[0]}.")
            return response
        raise AssertionError("unreachable")

    def _failure(self, method: str, url: str, exc: urllib.error.HTTPError) -> Exception:
        try:
            errors = json.loads(exc.read(65536) or b"{}").get("errors", [])
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)[:300]
        except (ValueError, AttributeError):
            detail = ""
        where = f"{self.ref.registry}/{self.ref.repository}"
        if exc.code == 401 and self._creds and self._auth and self._auth.startswith("Bearer "):
            # The token service accepted the credentials but granted less than this request needs.
            wanted = "push to" if self.scope.endswith("push") else "pull from"
            who = "this identity token" if self._creds.identity else f"user '{self._creds.user}'"
            return UsageError(f"{where}: {who} may not {wanted} this repository ({detail or 'denied'});"
                              " ask for access, or use other credentials.")
        if exc.code == 401:
            return UsageError(f"{where}: not authorized ({detail or 'no credentials'}); log in with docker login, or "
                              "set MODELPACK_REGISTRY_USERNAME and MODELPACK_REGISTRY_PASSWORD.")
        if exc.code == 403:
            return UsageError(f"{where}: access denied ({detail or exc.reason}); these credentials cannot do this.")
        if exc.code == 404:
            return InputError(f"{where}: {self.ref.target} not found ({detail or 'no such repository or tag'}).")
        return RegistryError(f"{method} {url} failed: {exc.code} {detail or exc.reason}.")

    def _authenticate(self, challenge: str) -> None:
        scheme, _, params = challenge.partition(" ")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        login = self._creds
        basic = (f"Basic {base64.b64encode(f'{login.user}:{login.secret}'.encode()).decode()}"
                 if login and not login.identity else None)
        if scheme.lower() == "basic":
            if login and login.identity:
                raise UsageError(f"{self.ref.registry} asks for a password, but the docker config holds an identity "
                                 "token for it; set MODELPACK_REGISTRY_USERNAME and MODELPACK_REGISTRY_PASSWORD.")
            if basic is None:
                raise UsageError(f"{self.ref.registry} asks for a login; run docker login {self.ref.registry}, or set "
                                 "MODELPACK_REGISTRY_USERNAME and MODELPACK_REGISTRY_PASSWORD.")
            self._auth = basic
            return
        if scheme.lower() != "bearer" or "realm" not in fields:
            raise RegistryError(f"{self.ref.registry} asks for an authentication it does not describe "
                                          f"({challenge[:100]!r}).")
        # Ask at once for everything this operation needs on our repository (a push's first HEAD is challenged
        # for pull only), so a push takes one token, not two; other scopes the registry names are kept.
        ours = f"repository:{self.ref.repository}:"
        scopes = [s for s in fields.get("scope", "").split(" ") if s and not s.startswith(ours)] + [self.scope]
        service = fields.get("service", "")
        if login and login.identity:  # OAuth2: trade the refresh token for an access token
            form = {"grant_type": "refresh_token", "refresh_token": login.secret, "service": service,
                    "scope": " ".join(scopes), "client_id": "modelpack"}
            req = urllib.request.Request(fields["realm"], data=urllib.parse.urlencode(form).encode(), method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        else:
            query = [("service", service)] + [("scope", s) for s in scopes]
            req = urllib.request.Request(f"{fields['realm']}?{urllib.parse.urlencode(query)}")
            if basic:
                req.add_header("Authorization", basic)
        try:
            with _OPENER.open(req, timeout=60) as response:
                token = json.loads(response.read(1 << 20))
        except urllib.error.HTTPError as exc:
            if exc.code in (400, 401, 403):
                raise UsageError(f"{self.ref.registry}: the token service refused ({exc.code}); check the credentials "
                                 "(docker login, or MODELPACK_REGISTRY_USERNAME and _PASSWORD).") from None
            raise RegistryError(f"{self.ref.registry}: the token service {fields['realm']} failed ({exc.code} "
                                f"{exc.reason}); try again later.") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            token = {"error": str(getattr(exc, "reason", exc))[:200]}
        value = token.get("token") or token.get("access_token") if isinstance(token, dict) else None
        if not isinstance(value, str) or not value:
            why = token.get("error", "no token in its answer") if isinstance(token, dict) else "no token in its answer"
            raise RegistryError(f"{self.ref.registry}: cannot get a token from {fields['realm']} ({why}); check that "
                                "the registry's token service is reachable.")
        self._auth = f"Bearer {value}"

    # --- blobs and manifests ---

    def has_blob(self, digest: str) -> bool:
        with self.request("HEAD", self.url(f"blobs/{digest}"), ok=(200, 404)) as response:
            return bool(response.status == 200)

    def upload_blob(self, digest: str, body: bytes | Path) -> bool:
        """Upload unless the registry has it already; returns whether bytes were sent."""
        if self.has_blob(digest):
            return False
        with self.request("POST", self.url("blobs/uploads/"), ok=(202,)) as response:
            location = urllib.parse.urljoin(self.base, response.headers["Location"])
        separator = "&" if urllib.parse.urlsplit(location).query else "?"
        put = f"{location}{separator}digest={urllib.parse.quote(digest)}"
        self.request("PUT", put, headers={"Content-Type": "application/octet-stream"}, body=body, ok=(201,)).close()
        return True

    def put_manifest(self, tag: str, media_type: str, data: bytes) -> str:
        with self.request("PUT", self.url(f"manifests/{tag}"), headers={"Content-Type": media_type}, body=data,
                          ok=(201,)) as response:
            reported = response.headers.get("Docker-Content-Digest")
        digest = sha256_digest(data)
        if reported and reported != digest:
            raise RegistryError(f"the registry stored the manifest as {reported}, but its bytes are {digest}.")
        return digest

    def get_manifest(self, accept: str) -> tuple[bytes, str]:
        """The manifest's bytes, checked against the reference's digest; and their digest."""
        with self.request("GET", self.url(f"manifests/{self.ref.target}"), headers={"Accept": accept}) as response:
            data = response.read(MAX_MANIFEST + 1)
        if len(data) > MAX_MANIFEST:
            raise InputError(f"{self.ref}: the manifest is over {MAX_MANIFEST >> 20} MiB; refusing it.")
        digest = sha256_digest(data)
        if self.ref.digest and digest != self.ref.digest:
            raise IntegrityError(f"{self.ref}: the registry sent a manifest whose digest is {digest}; refusing it.")
        return data, digest

    def download_blob(self, digest: str, size: int, out: IO[bytes]) -> None:
        """Stream a blob into `out` (seekable), never more than `size` bytes, and check its sha256. A download
        that breaks off resumes where it stopped (an HTTP range request), up to RESUMES times."""
        h = hashlib.sha256()
        start, got = out.tell(), 0
        for attempt in range(RESUMES + 1):
            if attempt:
                time.sleep(0.25 * 2 ** (attempt - 1))
            headers = {"Range": f"bytes={got}-"} if got else None
            with self.request("GET", self.url(f"blobs/{digest}"), headers=headers, ok=(200, 206)) as response:
                if got and response.status != 206:  # the registry sends the whole blob again: start over
                    out.seek(start)
                    out.truncate()
                    h, got = hashlib.sha256(), 0
                got = self._stream(response, digest, size, got, h, out)
            if got == size:
                break
        else:
            raise RegistryError(f"{self.ref}: the download of blob {digest} broke off after {got} of {size} bytes, "
                                f"{RESUMES} times resumed; try again later.")
        if f"sha256:{h.hexdigest()}" != digest:
            raise IntegrityError(f"{self.ref}: blob {digest} arrived as {got} bytes with digest sha256:{h.hexdigest()}; "
                             "refusing it.")

    def _stream(self, response: Any, digest: str, size: int, got: int, h: Any, out: IO[bytes]) -> int:
        """Copy the response's body until it ends or breaks off; return the blob's bytes received so far."""
        while True:
            try:
                chunk = response.read(min(1 << 20, size - got + 1))
            except (OSError, http.client.HTTPException):
                return got
            if not chunk:
                return got
            got += len(chunk)
            if got > size:
                raise IntegrityError(f"{self.ref}: blob {digest} is larger than the {size} bytes its descriptor says.")
            h.update(chunk)
            out.write(chunk)
