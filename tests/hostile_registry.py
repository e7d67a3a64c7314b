"""A hostile OCI registry for tests: a real threaded HTTP server on a loopback port that speaks enough of the
distribution API for `modelpack push` and `pull` (blobs, uploads, manifests), and lies as a test tells it to.

A test stores artifacts in it (`put_artifact`, or a real `modelpack push`), then sets `hook`: called with each
request before the registry answers, it returns an `Answer` to send instead (a redirect, a 401 challenge, an
error body with escape sequences, a body dripped one byte at a time) or None for the honest answer. `seen`
records every request's method, path and headers, so a test can tell whether a password ever reached a host.
The same class serves as the other hosts an attack needs (blob storage elsewhere, a token service).

Tar layers that lie are built here too: `tar_layer` (members with any name, type, PAX headers: `..` parts, NUL,
sparse maps), `gzip_bomb` (a small gzip layer that inflates to a set size), `repeated_members`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG = "application/vnd.cncf.model.config.v1+json"
FILEPATH = "org.cncf.model.filepath"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # names in lowercase


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    drip_s: float | None = None  # send the body one byte every drip_s seconds (Content-Length says it all)


@dataclass
class Layer:
    """One layer to store: its path in the package, media type, blob, and DiffID (the blob's digest if None)."""

    path: str
    media_type: str
    blob: bytes
    diff_id: str | None = None


class HostileServer:
    """`address` is 127.0.0.1:PORT; `stop()` ends it (and any drip under way)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}  # by "repository:tag" and "repository@digest"
        self.hook: Callable[[Seen], Answer | None] | None = None
        self.dripped = 0  # body bytes sent by drips so far
        self._uploads: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                with server._lock:
                    server.seen.append(seen)
                answer = (server.hook(seen) if server.hook else None) or server.answer(seen, body)
                self._send(answer)

            def _send(self, answer: Answer) -> None:
                self.send_response(answer.status)
                headers = {"Content-Length": str(len(answer.body)), **answer.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if answer.drip_s is None:
                    self.wfile.write(answer.body)
                    return
                for i in range(len(answer.body)):
                    if server._stopping.wait(answer.drip_s):
                        return
                    try:
                        self.wfile.write(answer.body[i:i + 1])
                        self.wfile.flush()
                    except OSError:
                        return  # the client gave up
                    with server._lock:
                        server.dripped += 1

            do_GET = do_HEAD = do_POST = do_PUT = _handle  # noqa: N815 (the http.server API)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self.url = f"http://{self.address}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def authorizations(self) -> list[str]:
        """Every Authorization header this server was sent."""
        with self._lock:
            return [s.headers["authorization"] for s in self.seen if "authorization" in s.headers]

    def requested(self, digest: str) -> bool:
        with self._lock:
            return any(s.method == "GET" and s.path.endswith(f"/blobs/{digest}") for s in self.seen)

    # --- the honest part: what a registry answers ---

    def answer(self, seen: Seen, body: bytes) -> Answer:
        path = seen.path.split("?", 1)[0]
        if path == "/v2/":
            return Answer(200, {"Content-Type": "application/json"}, b"{}")
        blob = re.fullmatch(r"/v2/(.+)/blobs/(sha256:[a-f0-9]{64})", path)
        if blob and seen.method in ("GET", "HEAD"):
            data = self.blobs.get(blob.group(2))
            return error(404, "BLOB_UNKNOWN", "blob unknown") if data is None else Answer(200, {}, data)
        if re.fullmatch(r"/v2/(.+)/blobs/uploads/", path) and seen.method == "POST":
            upload = uuid.uuid4().hex
            self._uploads[upload] = b""
            return Answer(202, {"Location": f"{path}{upload}"})
        upload = re.fullmatch(r"/v2/(.+)/blobs/uploads/([a-f0-9]+)", path)
        if upload and seen.method == "PUT":
            digest = re.search(r"digest=(sha256%3A|sha256:)([a-f0-9]{64})", seen.path)
            if digest is None or digest_of(body) != f"sha256:{digest.group(2)}":
                return error(400, "DIGEST_INVALID", "digest does not match")
            self.blobs[digest_of(body)] = body
            return Answer(201, {"Location": f"/v2/{upload.group(1)}/blobs/{digest_of(body)}"})
        manifest = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", path)
        if manifest and seen.method == "PUT":
            self.put_manifest(manifest.group(1), manifest.group(2), body)
            return Answer(201, {"Docker-Content-Digest": digest_of(body)})
        if manifest and seen.method in ("GET", "HEAD"):
            repo, ref = manifest.groups()
            data = self.manifests.get(f"{repo}@{ref}" if ref.startswith("sha256:") else f"{repo}:{ref}")
            if data is None:
                return error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            return Answer(200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest_of(data)}, data)
        return error(404, "NAME_UNKNOWN", f"no route for {seen.method} {path}")

    def put_manifest(self, repository: str, tag: str, data: bytes) -> str:
        self.manifests[f"{repository}:{tag}"] = data
        self.manifests[f"{repository}@{digest_of(data)}"] = data
        return digest_of(data)

    def manifest(self, repository: str, tag: str) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.manifests[f"{repository}:{tag}"])
        return data

    def put_artifact(self, repository: str, tag: str, layers: Iterable[Layer], *,
                     manifest_bytes: Callable[[dict[str, object]], bytes] | None = None) -> dict[str, object]:
        """Store a CNCF ModelPack artifact made of `layers` (the config lists their DiffIDs); `manifest_bytes`
        may turn the manifest into other bytes (say, nested 100,000 deep)."""
        layers = list(layers)
        for layer in layers:
            self.blobs[digest_of(layer.blob)] = layer.blob
        config = json.dumps({"descriptor": {"name": "hostile", "version": "1"}, "config": {"format": "onnx"},
                             "modelfs": {"type": "layers",
                                         "diffIds": [layer.diff_id or digest_of(layer.blob) for layer in layers]}},
                            separators=(",", ":")).encode()
        self.blobs[digest_of(config)] = config
        manifest: dict[str, object] = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": layer.media_type, "digest": digest_of(layer.blob), "size": len(layer.blob),
                        "annotations": {FILEPATH: layer.path}} for layer in layers]}
        self.put_manifest(repository, tag, (manifest_bytes or _compact)(manifest))
        return manifest

    def add_layers(self, repository: str, tag: str, layers: Iterable[Layer]) -> None:
        """Append layers to a stored artifact (what a real push left here), its config's DiffIDs too."""
        manifest = self.manifest(repository, tag)
        config_ref = manifest["config"]
        assert isinstance(config_ref, dict)
        config = json.loads(self.blobs[config_ref["digest"]])
        entries = manifest["layers"]
        assert isinstance(entries, list)
        for layer in layers:
            self.blobs[digest_of(layer.blob)] = layer.blob
            entries.append({"mediaType": layer.media_type, "digest": digest_of(layer.blob), "size": len(layer.blob),
                            "annotations": {FILEPATH: layer.path}})
            config["modelfs"]["diffIds"].append(layer.diff_id or digest_of(layer.blob))
        data = _compact(config)
        self.blobs[digest_of(data)] = data
        manifest["config"] = {**config_ref, "digest": digest_of(data), "size": len(data)}
        self.put_manifest(repository, tag, _compact(manifest))


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    """A distribution-spec error body; `message` goes out as it is, escape sequences and all."""
    body = json.dumps({"errors": [{"code": code, "message": message}]}, ensure_ascii=False).encode()
    return Answer(status, {"Content-Type": "application/json", **(headers or {})}, body)


# --- tar layers that lie ---


@dataclass
class Member:
    name: str
    data: bytes | None = b""  # None: a folder
    type: bytes | None = None  # a tarfile type (SYMTYPE, ...) instead of a file or folder
    pax: dict[str, str] = field(default_factory=dict)  # PAX headers, e.g. a path with a NUL, a sparse map


def tar_layer(members: Iterable[Member]) -> bytes:
    """A PAX tar of `members` exactly as given: tarfile writes any name and any PAX header."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.pax_headers = dict(m.pax)
            if m.type is not None:
                info.type = m.type
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            elif m.data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
    return out.getvalue()


def gzip_bomb(folder: str, inflated: int) -> tuple[bytes, str]:
    """A tar+gzip layer holding `folder/zeros.bin` of `inflated` bytes of zeros (a multiple of 1 MiB): (the gzip
    blob, its DiffID). gzip members concatenate, so one compressed MiB of zeros is repeated, never inflated here."""
    info = tarfile.TarInfo(f"{folder}/zeros.bin")
    info.size = inflated
    head = tarfile.TarInfo(folder)
    head.type, head.mode = tarfile.DIRTYPE, 0o755
    block = bytes(1 << 20)
    assert inflated % len(block) == 0
    headers = head.tobuf(tarfile.USTAR_FORMAT) + info.tobuf(tarfile.USTAR_FORMAT)
    total = len(headers) + inflated + 1024  # the end-of-archive blocks
    tail = bytes(1024 + (-total % tarfile.RECORDSIZE))
    h = hashlib.sha256(headers)
    for _ in range(inflated // len(block)):
        h.update(block)
    h.update(tail)
    zeros = gzip.compress(block, compresslevel=9, mtime=0)
    blob = (gzip.compress(headers, mtime=0) + zeros * (inflated // len(block)) + gzip.compress(tail, mtime=0))
    return blob, f"sha256:{h.hexdigest()}"


def repeated_members(folder: str, count: int, *, distinct_files: bool, compressed: bool = True) -> tuple[bytes, str]:
    """A tar+gzip (or plain tar) layer of `count` members: distinct empty files (`folder/f000000`, ...) or the
    same folder again and again: (the blob, its DiffID). Headers are patched from one template: fast for
    200,000."""
    if distinct_files:
        template = tarfile.TarInfo(f"{folder}/f000000").tobuf(tarfile.USTAR_FORMAT)
        at = template.index(b"f000000") + 1
        base = tarfile.calc_chksums(template)[0] - sum(b"000000")
        chunks = []
        for i in range(count):
            digits = b"%06d" % i
            chunks.append(b"".join((template[:at], digits, template[at + 6:148],
                                    b"%06o\0" % (base + sum(digits)), template[155:])))
    else:
        info = tarfile.TarInfo(folder)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        chunks = [info.tobuf(tarfile.USTAR_FORMAT)] * count
    body = b"".join(chunks)
    body += bytes(1024 + (-(len(body) + 1024) % tarfile.RECORDSIZE))
    return (gzip.compress(body, compresslevel=6, mtime=0) if compressed else body), digest_of(body)
