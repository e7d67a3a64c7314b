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
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple
from weakref import WeakSet

from ..errors import InputError, IntegrityError, RegistryError, UsageError, printable

MAX_MANIFEST = 4 * 1024 * 1024  # what the distribution spec asks clients to accept
RESUMES = 3  # a blob download that breaks off resumes from where it stopped, at most this many times
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
READ_TIMEOUT = 300.0  # seconds one read may wait for the registry's next byte
HOST_VARIABLE = "MODELPACK_REGISTRY_HOST"  # the registries (and token services) the environment's login is for


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
    """A user name and password, or (`identity`) an OAuth2 refresh token that `docker login` kept instead.
    `hosts` is None for the docker config's logins (each kept for one registry); for the environment's login it
    is what MODELPACK_REGISTRY_HOST names, and empty when that is unset (the login is then never sent)."""

    user: str
    secret: str
    identity: bool = False
    hosts: tuple[str, ...] | None = None


_TOKEN_USER = "<token>"  # a credential helper's user name for an identity token


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, the port filled in from the scheme: what "the same server" means here."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return (parts.scheme.lower(), "", -1)
    scheme = parts.scheme.lower()
    return (scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80))


def scoped_hosts() -> tuple[str, ...]:
    """MODELPACK_REGISTRY_HOST: HOST[:PORT], comma-separated; the only hosts the environment's login goes to."""
    return tuple(h.strip().lower() for h in os.environ.get(HOST_VARIABLE, "").split(",") if h.strip())


def host_allowed(hosts: tuple[str, ...], url: str) -> bool:
    """Whether `url`'s server is one of `hosts` (an entry without a port means the scheme's default port)."""
    scheme, host, port = origin(url)
    for entry in hosts:
        named = urllib.parse.urlsplit(f"//{entry}")
        try:
            wanted = named.port or (443 if scheme == "https" else 80)
        except ValueError:
            continue
        if host and (named.hostname or "") == host and wanted == port:
            return True
    return False


def credentials(registry: str, base: str | None = None) -> Login | None:
    """The login for `registry` (spoken to at `base`): MODELPACK_REGISTRY_USERNAME/_PASSWORD when
    MODELPACK_REGISTRY_HOST names it, else the docker config (`$DOCKER_CONFIG/config.json` or
    `~/.docker/config.json`): `auths` (with `identitytoken`), `credHelpers`, `credsStore`."""
    user, password = os.environ.get("MODELPACK_REGISTRY_USERNAME"), os.environ.get("MODELPACK_REGISTRY_PASSWORD")
    if user and password:
        hosts = scoped_hosts()
        if not hosts:
            return Login(user, password, hosts=())  # refused when a registry asks for it: see _login
        if host_allowed(hosts, base or f"https://{registry}"):
            return Login(user, password, hosts=hosts)
        # a login for other hosts: this registry gets the docker config's, or none
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
    """Blob downloads may redirect to storage elsewhere; the registry's credentials must not follow, and a
    redirect leads only to http(s)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise RegistryError(f"the registry redirected {req.full_url} to {printable(newurl[:200])}, which is not "
                                "http(s); refusing it.")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(newurl) != origin(req.full_url):
            new.remove_header("Authorization")
        return new


class _Sockets:
    """Every socket a Registry's requests open, so that its deadline can cut them all, wherever they block
    (a registry that sends a byte just before each read would time out, else, never)."""

    def __init__(self) -> None:
        self.open: WeakSet[socket.socket] = WeakSet()
        self.expired = False
        self.lock = threading.Lock()

    def add(self, sock: socket.socket) -> None:
        with self.lock:
            self.open.add(sock)
            if self.expired:
                _cut(sock)

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in list(self.open):
                _cut(sock)


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv, which then reads the end of the stream
    except OSError:
        pass


def _opener(sockets: _Sockets) -> urllib.request.OpenerDirector:
    """http and https only: no file://, ftp:// or data: URLs, whatever a registry names."""

    class Http(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            sockets.add(self.sock)

    class Https(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            sockets.add(self.sock)

    class HttpHandler(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(Http, req)

    class HttpsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(Https, req, context=ssl.create_default_context())

    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), HttpHandler(), HttpsHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), _NoAuthOnRedirect(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def base_url(ref: Reference, plain_http: bool = False) -> str:
    """Where the registry is spoken to: HTTP with --plain-http or on loopback, else HTTPS."""
    http = plain_http or ref.registry.split(":")[0] in _LOOPBACK or ref.registry.startswith("[::1]")
    return f"{'http' if http else 'https'}://{ref.registry}"


class Registry:
    """One repository on one registry, authenticated on the first challenge and reused. With `timeout_s`, every
    request after that many seconds fails, and those under way are cut (`close()` stops the clock)."""

    def __init__(self, ref: Reference, *, plain_http: bool = False, push: bool = False,
                 timeout_s: float | None = None) -> None:
        self.ref = ref
        self.base = base_url(ref, plain_http)
        self.scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        self._auth: str | None = None
        self._creds = credentials(ref.registry, self.base)
        self._sockets = _Sockets()
        self._opener = _opener(self._sockets)
        self.timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        self._timer: threading.Timer | None = None
        if timeout_s is not None:
            self._timer = threading.Timer(timeout_s, self._sockets.expire)
            self._timer.daemon = True
            self._timer.start()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_deadline(self) -> None:
        if self._sockets.expired or (self._deadline is not None and time.monotonic() >= self._deadline):
            raise RegistryError(f"{self.ref}: the pull did not finish within --timeout-s {self.timeout_s:g} s (the "
                                "registry is slow or stalls); try again later, or raise --timeout-s.")

    def _timeout(self, limit: float = READ_TIMEOUT) -> float:
        if self._deadline is None:
            return limit
        return max(0.001, min(limit, self._deadline - time.monotonic()))

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.ref.repository}/{path}"

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                body: bytes | Path | None = None, ok: tuple[int, ...] = (200,)) -> Any:
        """Send a request (again, authenticated, after a 401 challenge); return the open response."""
        for attempt in range(2):
            self.check_deadline()
            stream: IO[bytes] | None = body.open("rb") if isinstance(body, Path) else None
            data = stream if stream is not None else body if isinstance(body, bytes) else None
            req = urllib.request.Request(url, data=data, method=method,
                                         headers=dict(headers or {}))
            if isinstance(body, Path):
                req.add_header("Content-Length", str(body.stat().st_size))
            if self._auth:
                req.add_header("Authorization", self._auth)
            try:
                response = self._opener.open(req, timeout=self._timeout())
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and origin(exc.geturl()) != origin(self.base):
                    # A redirect target (blob storage elsewhere) asking for credentials: they are the registry's,
                    # and so is the choice of a token service (the class of containerd's CVE-2020-15157).
                    exc.close()
                    raise RegistryError(f"{self.ref}: {printable(exc.geturl()[:200])}, where the registry "
                                        "redirected this download, asks for authentication; modelpack "
                                        f"authenticates only with the registry itself ({self.base}), refusing it.") from None
                if exc.code == 401 and attempt == 0:
                    challenge = exc.headers.get("WWW-Authenticate", "")
                    exc.close()
                    self._authenticate(challenge)
                    continue
                if exc.code in ok:
                    return exc
                raise self._failure(method, url, exc) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                self.check_deadline()
                reason = printable(str(getattr(exc, "reason", exc))[:200])
                raise RegistryError(f"cannot reach {self.base} ({reason}); check the address, or use "
                                    "--plain-http for a registry without TLS.") from None
            finally:
                if stream is not None:
                    stream.close()
            if response.status not in ok:
                response.close()
                raise RegistryError(f"{method} {printable(url)} answered {response.status}, expected {ok[0]}.")
            return response
        raise AssertionError("unreachable")

    def _failure(self, method: str, url: str, exc: urllib.error.HTTPError) -> Exception:
        try:
            errors = json.loads(exc.read(65536) or b"{}").get("errors", [])
            detail = printable("; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)[:300])
        except (ValueError, AttributeError, TypeError, RecursionError, OSError, http.client.HTTPException):
            detail = ""
        exc.close()
        status = printable(str(exc.reason)[:100])
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
            return UsageError(f"{where}: access denied ({detail or status}); these credentials cannot do this.")
        if exc.code == 404:
            return InputError(f"{where}: {self.ref.target} not found ({detail or 'no such repository or tag'}).")
        return RegistryError(f"{method} {printable(url)} failed: {exc.code} {detail or status}.")

    def _login(self, url: str) -> Login | None:
        """The login to send to `url` (the registry, or the token service its own challenge names): the
        environment's only where MODELPACK_REGISTRY_HOST allows it."""
        login = self._creds
        if login is None or login.hosts is None:
            return login
        if not login.hosts:
            raise UsageError(f"{self.ref.registry} asks for a login, and MODELPACK_REGISTRY_USERNAME and _PASSWORD "
                             f"are set, but not {HOST_VARIABLE}: set it to the registry they are for "
                             f"(e.g. {HOST_VARIABLE}={self.ref.registry}), so they are never sent elsewhere.")
        if not host_allowed(login.hosts, url):
            _, host, port = origin(url)
            raise UsageError(f"{self.ref.registry} sends its logins to {printable(host)}:{port}, which "
                             f"{HOST_VARIABLE} does not name; add it (comma-separated) if you trust it with "
                             "MODELPACK_REGISTRY_USERNAME and _PASSWORD.")
        return login

    def _authenticate(self, challenge: str) -> None:
        scheme, _, params = challenge.partition(" ")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        if scheme.lower() == "basic":
            login = self._login(self.base)
            if login and login.identity:
                raise UsageError(f"{self.ref.registry} asks for a password, but the docker config holds an identity "
                                 "token for it; set MODELPACK_REGISTRY_USERNAME and MODELPACK_REGISTRY_PASSWORD.")
            if login is None:
                raise UsageError(f"{self.ref.registry} asks for a login; run docker login {self.ref.registry}, or set "
                                 f"MODELPACK_REGISTRY_USERNAME, MODELPACK_REGISTRY_PASSWORD and {HOST_VARIABLE}.")
            self._auth = f"Basic {base64.b64encode(f'{login.user}:{login.secret}'.encode()).decode()}"
            return
        if scheme.lower() != "bearer" or "realm" not in fields:
            raise RegistryError(f"{self.ref.registry} asks for an authentication it does not describe "
                                f"({printable(challenge[:100])!r}).")
        realm = fields["realm"]
        realm_scheme = urllib.parse.urlsplit(realm).scheme.lower()
        tls = self.base.startswith("https:")
        if realm_scheme not in (("https",) if tls else ("http", "https")) or not origin(realm)[1]:
            raise RegistryError(f"{self.ref.registry} names the token service {printable(realm[:200])!r}; modelpack "
                                f"asks only {'an https' if tls else 'an http(s)'} URL for a token, refusing it.")
        login = self._creds and self._login(realm)
        basic = (f"Basic {base64.b64encode(f'{login.user}:{login.secret}'.encode()).decode()}"
                 if login and not login.identity else None)
        # Ask at once for everything this operation needs on our repository (a push's first HEAD is challenged
        # for pull only), so a push takes one token, not two; other scopes the registry names are kept.
        ours = f"repository:{self.ref.repository}:"
        scopes = [s for s in fields.get("scope", "").split(" ") if s and not s.startswith(ours)] + [self.scope]
        service = fields.get("service", "")
        if login and login.identity:  # OAuth2: trade the refresh token for an access token
            form = {"grant_type": "refresh_token", "refresh_token": login.secret, "service": service,
                    "scope": " ".join(scopes), "client_id": "modelpack"}
            req = urllib.request.Request(realm, data=urllib.parse.urlencode(form).encode(), method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        else:
            query = [("service", service)] + [("scope", s) for s in scopes]
            req = urllib.request.Request(f"{realm}?{urllib.parse.urlencode(query)}")
            if basic:
                req.add_header("Authorization", basic)
        shown = printable(realm[:200])
        try:
            with self._opener.open(req, timeout=self._timeout(60)) as response:
                token = json.loads(response.read(1 << 20))
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in (400, 401, 403):
                raise UsageError(f"{self.ref.registry}: the token service refused ({exc.code}); check the credentials "
                                 "(docker login, or MODELPACK_REGISTRY_USERNAME and _PASSWORD).") from None
            raise RegistryError(f"{self.ref.registry}: the token service {shown} failed ({exc.code} "
                                f"{printable(str(exc.reason)[:100])}); try again later.") from None
        except (urllib.error.URLError, OSError, ValueError, RecursionError, http.client.HTTPException) as exc:
            self.check_deadline()
            token = {"error": str(getattr(exc, "reason", exc))[:200]}
        value = token.get("token") or token.get("access_token") if isinstance(token, dict) else None
        if not isinstance(value, str) or not value:
            why = token.get("error", "no token in its answer") if isinstance(token, dict) else "no token in its answer"
            raise RegistryError(f"{self.ref.registry}: cannot get a token from {shown} ({printable(str(why)[:200])}); "
                                "check that the registry's token service is reachable.")
        if not value.isascii() or printable(value) != value:
            raise RegistryError(f"{self.ref.registry}: the token service {shown} sent a token with control or "
                                "non-ASCII characters; refusing it.")
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
        self.check_deadline()  # a cut connection reads as a short manifest
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
                self.check_deadline()
                time.sleep(min(0.25 * 2 ** (attempt - 1), self._timeout()))
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
            self.check_deadline()
            raise RegistryError(f"{self.ref}: the download of blob {digest} broke off after {got} of {size} bytes, "
                                f"{RESUMES} times resumed; try again later.")
        if f"sha256:{h.hexdigest()}" != digest:
            raise IntegrityError(f"{self.ref}: blob {digest} arrived as {got} bytes with digest sha256:{h.hexdigest()}; "
                             "refusing it.")

    def _stream(self, response: Any, digest: str, size: int, got: int, h: Any, out: IO[bytes]) -> int:
        """Copy the response's body until it ends or breaks off; return the blob's bytes received so far."""
        while True:
            try:  # read1: whatever has arrived, so the deadline is checked between reads however slow they are
                chunk = response.read1(min(1 << 20, size - got + 1))
            except (OSError, http.client.HTTPException):
                return got
            if not chunk:
                return got
            got += len(chunk)
            if got > size:
                raise IntegrityError(f"{self.ref}: blob {digest} is larger than the {size} bytes its descriptor says.")
            h.update(chunk)
            out.write(chunk)
