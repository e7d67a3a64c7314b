"""Tools for the adversarial suites: a raw HTTP/2 client that can break every rule, a liveness probe, RSS.

`RawH2` writes frames itself (header blocks with the `hpack` encoder), so it can do what a well-behaved client
library refuses to: open streams it never finishes, ignore windows, flood control frames, reset at once. A
reader thread parses what the server sends back (or doesn't read at all, for slow-reader attacks).

`Probe` measures what a real user would see while an attack runs: `/v2/health/live` over HTTP and
`ServerLive` over gRPC, each on a fresh connection every round, so a locked accept queue or a stalled
event loop shows up in its latency.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from hpack import Decoder, Encoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
INFER = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"
# What every probe must stay under while an attack runs. An idle machine answers in about a millisecond; the
# failures these suites guard against took seconds (a 64 MB header held the loop 6.4 s) or for ever (a locked
# port). One second leaves a wide margin for a busy 2-core CI machine and still catches both.
PROBE_BOUND_S = 1.0


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


def grpc_message(body: bytes, compressed: bool = False) -> bytes:
    return bytes((1 if compressed else 0,)) + len(body).to_bytes(4, "big") + body


@dataclass
class StreamSeen:
    headers: list[dict[str, str]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    reset: int | None = None
    ended: bool = False

    @property
    def grpc_status(self) -> int | None:
        for block in self.headers:
            if "grpc-status" in block:
                return int(block["grpc-status"])
        return None

    @property
    def message(self) -> str:
        for block in self.headers:
            if "grpc-message" in block:
                return block["grpc-message"]
        return ""


class RawH2:
    """A hostile HTTP/2 client on one TCP connection."""

    def __init__(self, port: int, read: bool = True, preface: bool = True, settings: bytes = b"",
                 window: int | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.decoder.max_header_list_size = 1 << 30
        self.streams: dict[int, StreamSeen] = {}
        self.goaway: tuple[int, int, bytes] | None = None  # (last stream id, error code, debug data)
        self.closed = threading.Event()
        self.pings = 0
        self.next_id = 1
        self.lock = threading.Lock()
        if preface:
            self.send(PREFACE + frame(SETTINGS, 0, 0, settings))
            if window is not None:
                self.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", window)))
        self._reader = threading.Thread(target=self._read, daemon=True) if read else None
        if self._reader is not None:
            self._reader.start()

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def header_block(self, path: str = INFER, key: str | None = None, extra: list[tuple[str, str]] = ()) -> bytes:
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "127.0.0.1"),
                   ("content-type", "application/grpc"), ("te", "trailers"), *extra]
        if key:
            headers.append(("authorization", f"Bearer {key}"))
        return self.encoder.encode(headers)

    def open(self, path: str = INFER, key: str | None = None, end: bool = False, extra: list[tuple[str, str]] = (),
             message: bytes | None = None) -> int:
        """HEADERS for a new stream (and its message, if given); returns the stream id."""
        with self.lock:
            stream_id = self.next_id
            self.next_id += 2
            out = frame(HEADERS, 0x4 | (0x1 if end and message is None else 0), stream_id,
                        self.header_block(path, key, extra))
        if message is not None:
            out += self.data_frames(stream_id, message, end=end)
        self.send(out)
        return stream_id

    @staticmethod
    def data_frames(stream_id: int, payload: bytes, end: bool = True, size: int = 16384) -> bytes:
        chunks = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
        return b"".join(frame(DATA, 0x1 if end and i == len(chunks) - 1 else 0, stream_id, c)
                        for i, c in enumerate(chunks))

    def _read(self) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    kind, flags = buf[3], buf[4]
                    stream_id = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload = bytes(buf[9:9 + length])
                    del buf[:9 + length]
                    self._frame(kind, flags, stream_id, payload)
        except OSError:
            pass
        finally:
            self.closed.set()

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        seen = self.streams.setdefault(stream_id, StreamSeen()) if stream_id else None
        if kind == HEADERS and seen is not None:
            seen.headers.append({k.decode(): v.decode() for k, v in self.decoder.decode(payload, raw=True)})
            seen.ended |= bool(flags & 1)
        elif kind == DATA and seen is not None:
            seen.data += payload
            seen.ended |= bool(flags & 1)
        elif kind == RST_STREAM and seen is not None:
            seen.reset = int.from_bytes(payload, "big")
        elif kind == GOAWAY:
            self.goaway = (int.from_bytes(payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big"),
                           payload[8:])
        elif kind == PING and flags & 1:
            self.pings += 1
        elif kind == SETTINGS and not flags & 1:
            self.send(frame(SETTINGS, 1, 0))

    def answered(self, stream_id: int) -> bool:
        seen = self.streams.get(stream_id)
        return seen is not None and (seen.ended or seen.reset is not None)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def eof(sock: socket.socket) -> bool:
    """Whether the server has closed this raw connection (reads what is waiting without blocking)."""
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


class Probe:
    """A thread that times health checks, HTTP and gRPC, each on a new connection, until stopped."""

    def __init__(self, http_url: str, grpc_port: int | None = None) -> None:
        self.http_url, self.grpc_port = http_url, grpc_port
        self.http: list[float] = []
        self.grpc: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 30  # an attack over in a moment still gets a few rounds measured
        while len(self.http) < 3 and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        import grpc

        from modelpack.serve.protocols.grpc_v2 import messages

        m = messages()
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                status = httpx.get(f"{self.http_url}/v2/health/live", timeout=10).status_code
                if status != 200:
                    self.failures.append(f"HTTP live answered {status}")
            except httpx.HTTPError as exc:
                self.failures.append(f"HTTP live: {exc!r}")
            self.http.append(time.perf_counter() - start)
            if self.grpc_port is not None:
                start = time.perf_counter()
                try:
                    with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
                        call = channel.unary_unary(LIVE, request_serializer=lambda r: r.SerializeToString(),
                                                   response_deserializer=m.ServerLiveResponse.FromString)
                        if not call(m.ServerLiveRequest(), timeout=10).live:
                            self.failures.append("gRPC ServerLive answered not live")
                except grpc.RpcError as exc:
                    self.failures.append(f"gRPC ServerLive: {exc.code()} {exc.details()}")
                self.grpc.append(time.perf_counter() - start)
            self._stop.wait(0.02)

    def check(self, bound_s: float = PROBE_BOUND_S) -> None:
        """Every probe answered, each within `bound_s`; at least a few rounds ran."""
        assert not self.failures, self.failures[:5]
        assert len(self.http) >= 3, f"only {len(self.http)} probe rounds ran"
        worst = max(self.http + self.grpc)
        assert worst < bound_s, f"a health probe took {worst:.2f} s (bound {bound_s} s): " \
                                f"HTTP max {max(self.http):.3f} s, gRPC max {max(self.grpc or [0]):.3f} s"
