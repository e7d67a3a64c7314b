"""A real OCI registry for tests: Debian's docker-registry (the CNCF distribution registry) on a free loopback
port, with its own config file and storage in a temporary directory.

It authenticates with htpasswd (Basic), or with bearer tokens from `TokenService`: the token server of
Docker's registry auth protocol, which the registry trusts through a CA certificate and whose signed
tokens it checks itself (issuer, audience, expiry, signature and the granted actions)."""

from __future__ import annotations

import base64
import datetime
import json
import re
import shutil
import socket
import socketserver
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conftest import wait_until
from servers import free_port

PROGRAM = "docker-registry"


def available() -> bool:
    return shutil.which(PROGRAM) is not None


SERVICE = "modelpack-tests"
ISSUER = "modelpack-tests-token-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """A token server: `GET /token?service=...&scope=...` with optional Basic credentials answers a JWT (RS256,
    signed by a leaf certificate under the CA the registry trusts) granting what the grants allow.

    `users` maps a user to (password, {repository: actions}); `anonymous` is what no credentials get.
    Wrong credentials get 401. `refresh_tokens` maps OAuth2 refresh tokens (what `docker login` keeps as an
    `identitytoken`) to users, for `POST /token` with `grant_type=refresh_token`. `requests` records
    (user or None, the scopes asked) for each token issued.
    """

    def __init__(self, workdir: Path, users: dict[str, tuple[str, dict[str, set[str]]]],
                 anonymous: dict[str, set[str]] | None = None, refresh_tokens: dict[str, str] | None = None) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users, self.anonymous, self.refresh_tokens = users, anonymous or {}, refresh_tokens or {}
        self.requests: list[tuple[str | None, list[str]]] = []
        now = datetime.datetime.now(datetime.UTC)

        def cert(subject: str, key: rsa.RSAPrivateKey, issuer: str, signer: rsa.RSAPrivateKey,
                 ca: bool) -> x509.Certificate:
            return (x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                    .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(hours=1))
                    .not_valid_after(now + datetime.timedelta(days=1))
                    .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                    .sign(signer, hashes.SHA256()))

        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_cert = cert("modelpack tests token CA", ca_key, "modelpack tests token CA", ca_key, True)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        leaf = cert(ISSUER, self._key, "modelpack tests token CA", ca_key, False)
        self._x5c = [base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()]
        self.ca_bundle = workdir / "token-ca.pem"
        self.ca_bundle.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._server: ThreadingHTTPServer | None = None

    def _granted(self, user: str | None, scopes: list[str]) -> list[dict[str, object]]:
        grants = self.users[user][1] if user else self.anonymous
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = [a for a in actions.split(",") if a in grants.get(name, set())]
            if kind == "repository" and allowed:
                access.append({"type": "repository", "name": name, "actions": allowed})
        return access

    def token(self, user: str | None, scopes: list[str], service: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": self._x5c}
        claims = {"iss": ISSUER, "sub": user or "", "aud": service, "exp": now + 300, "nbf": now - 1, "iat": now,
                  "jti": f"{now}-{len(self.requests)}", "access": self._granted(user, scopes)}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def start(self) -> TokenService:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                user = None
                header = self.headers.get("Authorization", "")
                if header.lower().startswith("basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if service.users.get(user, ("",))[0] != password or not password:
                        return self._answer(401, {"details": "wrong user name or password"})
                self._grant(url.path, query, user)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                if (self.headers.get("Content-Type") != "application/x-www-form-urlencoded"
                        or form.get("grant_type") != ["refresh_token"] or not form.get("client_id")):
                    return self._answer(400, {"error": "unsupported_grant_type"})
                user = service.refresh_tokens.get(form.get("refresh_token", [""])[0])
                if user is None:
                    return self._answer(401, {"error": "invalid_grant"})
                self._grant(urllib.parse.urlsplit(self.path).path, form, user)

            def _grant(self, path: str, query: dict[str, list[str]], user: str | None) -> None:
                if path != "/token" or query.get("service") != [SERVICE]:
                    return self._answer(400, {"details": "expected /token with service=" + SERVICE})
                scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
                service.requests.append((user, scopes))
                token = service.token(user, scopes, SERVICE)
                self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Registry:
    """`start()` then `stop()`; `address` is HOST:PORT, `storage` the blob store on disk."""

    def __init__(self, workdir: Path, htpasswd: dict[str, str] | None = None,
                 tokens: TokenService | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.storage = workdir / "storage"
        self.htpasswd = htpasswd
        self.tokens = tokens
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        self.storage.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.htpasswd:
            import bcrypt

            lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}"
                     for user, pw in self.htpasswd.items()]
            (self.workdir / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: modelpack-tests\n    path: {self.workdir / 'htpasswd'}\n"
        elif self.tokens:
            auth = (f"auth:\n  token:\n    realm: {self.tokens.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
                    f"    rootcertbundle: {self.tokens.ca_bundle}\n")
        config = self.workdir / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: "
                          f"{self.storage}\n  delete:\n    enabled: true\nhttp:\n  addr: {self.address}\n{auth}")
        log = (self.workdir / "registry.log").open("ab")
        self.proc = subprocess.Popen([PROGRAM, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._answers, 30, "the registry to answer /v2/")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(self.workdir / 'registry.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2).close()
            return True
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # up, and asking for credentials
        except OSError:
            return False

    def blob_file(self, digest: str) -> Path:
        hexdigest = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class CuttingProxy:
    """A TCP proxy in front of a registry, for reads (GET and HEAD): it passes every request through, except
    that the answer to a request whose request line contains `cut` loses its connection `keep` bytes into
    the body, as a dropped network does; only the first `times` such answers when `times` is given.
    `heads` keeps each request's head (request line and headers) in order. With `strip_range` the registry
    never sees a Range header, as behind a proxy that drops it."""

    def __init__(self, upstream: str, cut: str, keep: int = 100, times: int | None = None,
                 strip_range: bool = False) -> None:
        host, port = upstream.rsplit(":", 1)
        target = (host, int(port))
        self.heads: list[str] = []
        self.cuts = 0  # requests that matched `cut`
        lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    head += data
                cutting = cut.encode() in head.split(b"\r\n", 1)[0]
                with lock:
                    proxy.heads.append(head.decode("latin-1"))
                    if cutting:
                        proxy.cuts += 1
                        cutting = times is None or proxy.cuts <= times
                if strip_range:
                    head = re.sub(rb"(?im)^range:[^\r\n]*\r\n", b"", head)
                with socket.create_connection(target, timeout=30) as up:
                    up.sendall(head)
                    answer = b""
                    while data := up.recv(65536):
                        answer += data
                        end = answer.find(b"\r\n\r\n")
                        if cutting and end >= 0 and len(answer) > end + 4 + keep:
                            self.request.sendall(answer[:end + 4 + keep])
                            return  # closing here drops the rest of the body
                        if not cutting:
                            self.request.sendall(answer)
                            answer = b""

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
