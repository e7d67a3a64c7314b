"""HTTP/2 for gRPC on the server's own event loop: framing, flow control, and the limits of `--grpc-port`.

Why not grpc.aio: its C core counts a call against the server's concurrency limit from its first HEADERS
frame, reads and decodes the message before the application sees the call's metadata, and offers no cap on
connections and no deadline on a stream that never sends its message. One connection opening streams it
never finished locked every client out; unauthenticated 15 MB messages grew the process by gigabytes. It
also moves every call through two threads of its own. Here the server owns the wire, so:

- **Before any message is read**, a call's `authorization` metadata is checked (and its rate limit): a
  caller without a valid key is answered from its HEADERS frame, and whatever DATA it sends is dropped
  as it arrives, never buffered.
- **Message bytes are held in the in-flight budget** (`--max-inflight-mb`) shared with HTTP bodies, as
  they arrive, and again for what a compressed message inflates to. A message over `--max-body-mb` is
  refused from its 5-byte length prefix, before its bytes arrive.
- **Streams**: at most `--max-streams` open per connection (SETTINGS_MAX_CONCURRENT_STREAMS; more are
  refused with REFUSED_STREAM); a call whose message has not arrived within `--body-timeout-s` of its
  headers gets DEADLINE_EXCEEDED and its stream is reset. Nothing counts against the batcher's queue
  until its message is complete, authorized and decoded.
- **Connections**: at most `--max-connections` on the port (past it, GOAWAY and close); the preface and
  every header block must arrive within `--header-timeout-s`, which is also how long a connection may
  idle with no call open; an answer the client does not drain (the socket's buffer, or the HTTP/2 flow
  control window the client never opens) within `--write-timeout-s` closes the connection.
- **Abuse** that costs the client nothing and the server something (rapid reset, PING, SETTINGS and
  PRIORITY floods, empty DATA frames, streams refused past the limit) draws on a per-connection allowance
  of `CALM_BURST` events, refilled at `CALM_PER_S` a second; past it, GOAWAY ENHANCE_YOUR_CALM.
- **Header blocks** are limited to `--max-header-kb`, compressed (HEADERS with its CONTINUATION frames)
  and decoded (an HPACK bomb); past it the connection is closed with GOAWAY: a header block that is not
  decoded leaves the HPACK state unknown, so the connection cannot go on.
- A malformed message is INVALID_ARGUMENT; corrupt compression is INVALID_ARGUMENT, as HTTP answers 400;
  an unknown compression is UNIMPLEMENTED with `grpc-accept-encoding`; nothing a client sends is logged
  as a traceback.

Answers are written with HPACK literals that never touch the dynamic table, so the server keeps no
encoder state; request headers are decoded with the `hpack` package (the one `h2` uses).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import InputError, RequestError
from .limits import ENCODINGS, Budget, inflate
from .metrics import REFUSED

log = logging.getLogger("modelpack.serve")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x6, 0x7, 0x8, 0x9, 0xB
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
MAX_WINDOW = 2**31 - 1
FRAME_SIZE = 16384  # what the server accepts (the protocol's default) and its default for sending
STREAM_WINDOW = 1 << 20  # what a stream may send before the server acknowledges it
CONNECTION_WINDOW = 16 << 20
# A well-behaved client spends a few of these a second (a keep-alive PING, a cancelled call); a rapid-reset
# attack spent the whole allowance on full calls the server decoded and queued, 1,000 of them (45 ms of the
# event loop) per connection when the burst was 1,000.
CALM_BURST = 200  # abusive events a connection may spend at once ...
CALM_PER_S = 100.0  # ... refilled at this rate

# gRPC status codes, and the HTTP statuses of modelpack's errors they stand for.
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 1, 2, 3, 4, 5
PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 7, 8, 12, 13, 14, 16
CODE_OF_STATUS = {400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: NOT_FOUND,
                  408: DEADLINE_EXCEEDED, 413: RESOURCE_EXHAUSTED, 415: UNIMPLEMENTED, 429: RESOURCE_EXHAUSTED,
                  503: UNAVAILABLE, 504: DEADLINE_EXCEEDED}
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

_FRAME_HEAD = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _FRAME_HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as an HPACK literal without indexing, with a literal name: no dynamic-table state."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def _status_line(status: int) -> bytes:
    # :status 200 is static entry 8; other statuses are literals on static name 8.
    return b"\x88" if status == 200 else b"\x08" + _hpack_int(3, 7) + str(status).encode()


_CONTENT_TYPE = b"\x0f\x10" + _hpack_int(16, 7) + b"application/grpc"  # static name 31, content-type
RESPONSE_HEAD = _status_line(200) + _CONTENT_TYPE
TRAILERS_OK = _literal(b"grpc-status", b"0")
ACCEPT_ENCODING = _literal(b"grpc-accept-encoding", ",".join(ENCODINGS).encode())


def _percent(message: str) -> bytes:
    """grpc-message's encoding: printable ASCII but '%' as it is, everything else percent-encoded."""
    out = bytearray()
    for byte in message.encode("utf-8", "replace"):
        out += bytes((byte,)) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte
    return bytes(out)


def status_trailers(code: int, message: str) -> bytes:
    return _literal(b"grpc-status", str(code).encode()) + _literal(b"grpc-message", _percent(message[:1024]))


def grpc_timeout(value: str | None) -> float | None:
    """A `grpc-timeout` header (e.g. '500m', '3S') in seconds; None when absent or unreadable."""
    if not value or len(value) > 9 or value[-1] not in _TIMEOUT_UNITS or not value[:-1].isascii() \
            or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]


@dataclass(frozen=True)
class Method:
    """One RPC: who may call it (an API-key scope, or None for public), how its request is read, what it does."""

    name: str  # e.g. ModelInfer; the metrics route is "grpc <name>"
    scope: str | None
    decode: Callable[[bytes | memoryview], Any]
    call: Callable[[Any, Call], Awaitable[bytes]]  # the request -> the serialized response


@dataclass
class Call:
    """What a method may know about its call besides the request."""

    timeout_s: float | None  # the client's grpc-timeout, if any
    key: str | None  # the API key's name
    traceparent: str | None = None  # the W3C trace context in the call's metadata


class Service(Protocol):
    """What the transport needs from the server: its methods, the guard, the budget and the metrics."""

    service_name: str
    methods: dict[str, Method]  # by :path, e.g. /inference.GRPCInferenceService/ModelInfer
    budget: Budget
    max_message_bytes: int
    max_message_mb: float

    def admit(self, authorization: str | None, scope: str, target: str) -> str | None:
        """The API key's name if the caller may use `scope`; raises RequestError (401, 403, 429) otherwise."""

    def observe(self, route: str, status: int, seconds: float, key: str | None) -> None:
        """Count a finished call (its HTTP-equivalent status) in the metrics."""


@dataclass(frozen=True)
class Limits:
    max_connections: int = 1000
    max_streams: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    write_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024


class _ConnectionError(Exception):
    """A protocol error that ends the connection with GOAWAY(code)."""

    def __init__(self, code: int, reason: str, metric: str = "protocol_error") -> None:
        super().__init__(reason)
        self.code, self.reason, self.metric = code, reason, metric


class _Stream:
    __slots__ = ("id", "method", "key", "buffer", "held", "deadline", "encoding", "timeout_s", "task",
                 "send_window", "recv_unacked", "pending", "trailers", "start", "status", "ended", "finished",
                 "traceparent")

    def __init__(self, stream_id: int, method: Method, key: str | None, encoding: str, timeout_s: float | None,
                 send_window: int, deadline: float) -> None:
        self.id = stream_id
        self.method = method
        self.key = key
        self.buffer = bytearray()
        self.held = 0  # bytes of this call in the in-flight budget
        self.deadline: float | None = deadline  # for the message to arrive
        self.encoding = encoding
        self.timeout_s = timeout_s
        self.task: asyncio.Task[None] | None = None
        self.send_window = send_window
        self.recv_unacked = 0
        self.pending: memoryview | None = None  # answer bytes waiting for flow-control window
        self.trailers = b""
        self.start = time.perf_counter()
        self.status = 200  # the HTTP status the outcome stands for, for the metrics
        self.ended = False  # the client's half is closed
        self.finished = False  # released and counted
        self.traceparent: str | None = None


class Connection(asyncio.Protocol):
    """One client connection: HTTP/2 frames in, gRPC calls dispatched, answers out within flow control."""

    def __init__(self, server: Http2Server) -> None:
        from hpack import Decoder

        self.server = server
        self.service = server.service
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.inbuf = bytearray()
        self.preface = False  # the client's preface has arrived
        self.settings_seen = False  # and its first SETTINGS frame
        self.decoder = Decoder()
        self.decoder.max_header_list_size = self.limits.max_header_bytes
        self.streams: dict[int, _Stream] = {}
        self.last_stream_id = 0
        self.block: bytearray | None = None  # a header block still waiting for CONTINUATION frames
        self.block_stream = 0
        self.block_end_stream = False
        self.send_window = 65535  # the connection's window the client grants
        self.peer_window = 65535  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_frame = FRAME_SIZE
        self.recv_window = CONNECTION_WINDOW
        self.recv_unacked = 0
        self.blocked: list[_Stream] = []  # answers waiting for window, oldest first
        self.blocked_since: float | None = None
        self.paused_since: float | None = None  # the socket's buffer is over its high-water mark
        self.idle_since: float = self.loop.time()
        self.header_since: float | None = None
        self.calm = float(CALM_BURST)
        self.calm_stamp = self.loop.time()
        self.going_away = False
        self.out: list[bytes] = []

    # -- the connection ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        server = self.server
        server.connections.add(self)
        if len(server.connections) > self.limits.max_connections:
            self._server_preface()
            self._close(ENHANCE_YOUR_CALM, "the server has --max-connections connections open; retry shortly",
                        "max_connections")

    def _server_preface(self) -> None:
        """The server's SETTINGS, sent once the client's preface shows it speaks HTTP/2 (an HTTP/1.1 client
        gets a readable answer instead, see `_not_http2`)."""
        settings = struct.pack(">HIHIHIHI", S_MAX_CONCURRENT_STREAMS, self.limits.max_streams,
                               S_INITIAL_WINDOW_SIZE, STREAM_WINDOW, S_MAX_HEADER_LIST_SIZE,
                               self.limits.max_header_bytes, S_ENABLE_PUSH, 0)
        self.out += [frame(SETTINGS, 0, 0, settings),
                     frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", CONNECTION_WINDOW - 65535))]

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            self._forget(stream, cancel=True)
        self.blocked.clear()

    def pause_writing(self) -> None:
        self.paused_since = self.loop.time()
        if self.transport is not None:
            self.transport.pause_reading()  # no new calls while the client does not read its answers

    def resume_writing(self) -> None:
        self.paused_since = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(self.out) if len(self.out) > 1 else self.transport.write(self.out[0])
        self.out.clear()

    def _close(self, code: int, reason: str, metric: str) -> None:
        """GOAWAY with `code`, then close; what the client has not read is dropped."""
        REFUSED["grpc", metric] += 1
        self.going_away = True
        if self.transport is None or self.transport.is_closing():
            return
        self.out.append(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, code) + reason.encode()[:256]))
        self._flush()
        self.transport.close()
        for stream in list(self.streams.values()):
            self._forget(stream, cancel=True)

    def go_away(self) -> None:
        """The server is stopping: no new calls; the ones open finish, then the connection closes."""
        if self.going_away or self.transport is None or self.transport.is_closing():
            return
        self.going_away = True
        self.out.append(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, NO_ERROR)))
        self._flush()
        if not self.streams:
            self.transport.close()

    def sweep(self, now: float) -> None:
        """Close or reset what is past a deadline (the server calls this periodically)."""
        limits = self.limits
        if self.paused_since is not None and now - self.paused_since > limits.write_timeout_s or \
                self.blocked_since is not None and now - self.blocked_since > limits.write_timeout_s:
            REFUSED["grpc", "write_timeout"] += 1
            if self.transport is not None:
                self.transport.abort()
            return
        if not self.preface or not self.settings_seen:
            if now - self.idle_since > limits.header_timeout_s:
                self._close(PROTOCOL_ERROR, "the connection preface took too long", "header_timeout")
            return
        if self.header_since is not None and now - self.header_since > limits.header_timeout_s:
            self._close(PROTOCOL_ERROR, "a header block took too long", "header_timeout")
            return
        for stream in [s for s in self.streams.values() if s.deadline is not None and s.deadline <= now]:
            REFUSED["grpc", "body_timeout"] += 1
            stream.status = 408
            self._fail(stream, DEADLINE_EXCEEDED, f"the request message did not arrive within "
                       f"{limits.body_timeout_s:g} s of its headers (--body-timeout-s)")
            self._flush()
        if not self.streams and self.header_since is None and now - self.idle_since > limits.header_timeout_s:
            self._close(NO_ERROR, "idle", "idle_timeout")

    # -- reading frames ----------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buf = self.inbuf
        buf += data
        try:
            if not self.preface:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise _ConnectionError(PROTOCOL_ERROR, "not HTTP/2", "not_http2")
                    return
                if buf[:len(PREFACE)] != PREFACE:
                    raise _ConnectionError(PROTOCOL_ERROR, "not HTTP/2", "not_http2")
                del buf[:len(PREFACE)]
                self.preface = True
                self._server_preface()
            offset, size = 0, len(buf)
            while size - offset >= 9:
                length = (buf[offset] << 16) | (buf[offset + 1] << 8) | buf[offset + 2]
                if length > FRAME_SIZE:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"a frame of {length} bytes is over {FRAME_SIZE}")
                if size - offset < 9 + length:
                    break
                kind, flags = buf[offset + 3], buf[offset + 4]
                stream_id = int.from_bytes(buf[offset + 5:offset + 9], "big") & 0x7FFFFFFF
                payload = bytes(buf[offset + 9:offset + 9 + length])
                offset += 9 + length
                self._frame(kind, flags, stream_id, payload)
                if self.transport is None or self.transport.is_closing():
                    return
            del buf[:offset]
        except _ConnectionError as exc:
            if exc.metric == "not_http2" and self.transport is not None:
                self._not_http2()
                return
            self._close(exc.code, exc.reason, exc.metric)
            return
        self._flush()

    def _not_http2(self) -> None:
        """An HTTP/1.1 request (or anything else) on the gRPC port: a plain answer saying what the port speaks."""
        REFUSED["grpc", "not_http2"] += 1
        assert self.transport is not None
        body = b'{"error": "this port speaks gRPC (HTTP/2 with prior knowledge); use a gRPC client."}'
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()

    def _spend(self, what: str) -> None:
        """One abusive-looking event; past the allowance the connection is closed."""
        now = self.loop.time()
        self.calm = min(CALM_BURST, self.calm + (now - self.calm_stamp) * CALM_PER_S)
        self.calm_stamp = now
        self.calm -= 1
        if self.calm < 0:
            raise _ConnectionError(ENHANCE_YOUR_CALM, f"too many {what}", "abuse")

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if not self.settings_seen:
            if kind != SETTINGS or flags & ACK:
                raise _ConnectionError(PROTOCOL_ERROR, "the connection must start with SETTINGS")
            self.settings_seen = True
        if self.block is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise _ConnectionError(FRAME_SIZE_ERROR, "a PING frame carries 8 bytes on stream 0")
            if not flags & ACK:
                self._spend("PING frames")
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if len(payload) != 4 or not stream_id:
                raise _ConnectionError(FRAME_SIZE_ERROR, "a RST_STREAM frame carries 4 bytes on a stream")
            self._spend("stream resets")
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.status = 499  # the client cancelled
                self._forget(stream, cancel=True)
            elif stream_id > self.last_stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        elif kind == PRIORITY:
            if len(payload) != 5:
                raise _ConnectionError(FRAME_SIZE_ERROR, "a PRIORITY frame carries 5 bytes")
            self._spend("PRIORITY frames")
        elif kind == GOAWAY:
            self.going_away = True
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "a client cannot push")
        else:
            self._spend("unknown frames")  # extension frames are ignored, but not for free

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "a SETTINGS acknowledgement carries nothing")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS entries are 6 bytes each")
        self._spend("SETTINGS frames")
        for index in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, index)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                delta, self.peer_window = value - self.peer_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == S_MAX_FRAME_SIZE:
                if not FRAME_SIZE <= value <= 16777215:
                    raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.peer_frame = value
            elif key == S_ENABLE_PUSH and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH is 0 or 1")
        self.out.append(frame(SETTINGS, ACK, 0))
        if self.blocked:
            self._send_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "a WINDOW_UPDATE frame carries 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "the connection window is over 2^31-1")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            if increment == 0 or stream.send_window + increment > MAX_WINDOW:
                self.out.append(frame(RST_STREAM, 0, stream_id, struct.pack(">I", FLOW_CONTROL_ERROR)))
                self._forget(stream, cancel=True)
                return
            stream.send_window += increment
        if self.blocked:
            self._send_blocked()

    def _strip(self, flags: int, payload: bytes, priority: bool) -> bytes:
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise _ConnectionError(PROTOCOL_ERROR, "a padded frame without its pad length")
            start, end = 1, end - payload[0]
        if priority and flags & PRIORITY_FLAG:
            start += 5
        if end < start:
            raise _ConnectionError(PROTOCOL_ERROR, "the padding is longer than the frame")
        return payload[start:end]

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "a client's streams have odd numbers")
        fragment = self._strip(flags, payload, priority=True)
        self.block, self.block_stream, self.block_end_stream = bytearray(fragment), stream_id, bool(flags & END_STREAM)
        self.header_since = self.loop.time()
        if len(fragment) > self.limits.max_header_bytes:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "a header block over --max-header-kb", "header_too_large")
        if flags & END_HEADERS:
            self._header_block()

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self.block is None or stream_id != self.block_stream:
            raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION without a header block")
        if not payload and not flags & END_HEADERS:
            self._spend("empty CONTINUATION frames")
        self.block += payload
        if len(self.block) > self.limits.max_header_bytes:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "a header block over --max-header-kb", "header_too_large")
        if flags & END_HEADERS:
            self._header_block()

    def _header_block(self) -> None:
        from hpack import HPACKError

        assert self.block is not None
        block, stream_id, end_stream = bytes(self.block), self.block_stream, self.block_end_stream
        self.block, self.header_since = None, None
        try:
            headers = self.decoder.decode(block, raw=True)
        except HPACKError as exc:  # OversizedHeaderListError among them: the decoder's state is lost either way
            raise _ConnectionError(COMPRESSION_ERROR, f"the header block does not decode ({type(exc).__name__})",
                                   "header_too_large" if "Oversized" in type(exc).__name__ else "malformed") from None
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: they only end its half
            if not end_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "a second header block that does not end the stream")
            self._end_of_request(stream)
            return
        if stream_id <= self.last_stream_id:  # a stream already answered and closed: nothing to do
            self._spend("header blocks on closed streams")
            return
        self.last_stream_id = stream_id
        if self.going_away:
            self.out.append(frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        if len(self.streams) >= self.limits.max_streams:
            self._spend("streams past SETTINGS_MAX_CONCURRENT_STREAMS")
            REFUSED["grpc", "max_streams"] += 1
            self.out.append(frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        self._open(stream_id, {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}, end_stream)

    def _open(self, stream_id: int, headers: dict[str, str], end_stream: bool) -> None:
        """A new call: checked (method, content type, encoding, key) before any of its message is read."""
        service = self.service
        start = time.perf_counter()
        if headers.get(":method") != "POST":
            self._answer_http(stream_id, 405, end_stream)
            return
        if not headers.get("content-type", "").startswith("application/grpc"):
            self._answer_http(stream_id, 415, end_stream)
            return
        method = service.methods.get(headers.get(":path", ""))
        route, key, status = "grpc unmatched", None, 200
        try:
            if method is None:
                raise RequestError(f"unknown method {headers.get(':path', '')[:200]!r}; this server implements "
                                   f"{service.service_name}.", status=404)
            route = f"grpc {method.name}"
            encoding = headers.get("grpc-encoding", "identity").strip().lower()
            if encoding not in ENCODINGS:
                raise RequestError(f"grpc-encoding {encoding[:40]!r} is not supported; use "
                                   f"{', '.join(ENCODINGS)}.", status=415)
            if method.scope is not None:
                target = f"/{service.service_name}/{method.name}"
                key = service.admit(headers.get("authorization"), method.scope, target)
        except RequestError as exc:
            status = exc.status
            code = UNIMPLEMENTED if method is None else CODE_OF_STATUS.get(status, INVALID_ARGUMENT)
            self._trailers_only(stream_id, code, str(exc), end_stream, accept=status == 415)
            service.observe(route, status, time.perf_counter() - start, key)
            return
        assert method is not None
        stream = _Stream(stream_id, method, key, encoding, grpc_timeout(headers.get("grpc-timeout")),
                         self.peer_window, self.loop.time() + self.limits.body_timeout_s)
        stream.start = start
        stream.traceparent = headers.get("traceparent")
        self.streams[stream_id] = stream
        if end_stream:
            self._end_of_request(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        if stream_id > self.last_stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA past the connection's window")
        self.recv_unacked += size
        if self.recv_unacked >= CONNECTION_WINDOW // 2:  # what was read (or dropped) is acknowledged in bulk
            self.out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.recv_unacked)))
            self.recv_window += self.recv_unacked
            self.recv_unacked = 0
        end = bool(flags & END_STREAM)
        if not size and not end:
            self._spend("empty DATA frames")
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended:  # answered already (refused, failed) or closed: dropped unread
            return
        data = self._strip(flags, payload, priority=False)
        if data:
            try:
                self._take(stream, data)
            except RequestError as exc:
                stream.status = exc.status
                self._fail(stream, CODE_OF_STATUS.get(exc.status, INVALID_ARGUMENT), str(exc))
                return
        if end:
            self._end_of_request(stream)
        elif size:
            stream.recv_unacked += size
            if stream.recv_unacked >= STREAM_WINDOW // 2:
                self.out.append(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", stream.recv_unacked)))
                stream.recv_unacked = 0

    def _take(self, stream: _Stream, data: bytes) -> None:
        """Message bytes into the budget as they arrive; an oversized message is refused by its prefix."""
        service = self.service
        service.budget.hold(len(data))
        stream.held += len(data)
        stream.buffer += data
        buffer = stream.buffer
        if len(buffer) >= 5 and len(buffer) - len(data) < 5:  # the prefix has just arrived
            length = int.from_bytes(buffer[1:5], "big")
            if length > service.max_message_bytes:
                raise RequestError(f"a request message of {length} bytes is over the {service.max_message_mb:g} "
                                   "MB limit (--max-body-mb).", status=413)
            if length + 5 - len(buffer) > service.budget.room():
                raise service.budget.overloaded()
        if len(buffer) >= 5 and len(buffer) > 5 + int.from_bytes(buffer[1:5], "big"):
            raise RequestError(f"{stream.method.name} takes one request message; more followed.")

    def _end_of_request(self, stream: _Stream) -> None:
        stream.ended = True
        stream.deadline = None
        buffer = stream.buffer
        length = int.from_bytes(buffer[1:5], "big") if len(buffer) >= 5 else -1
        if len(buffer) < 5 or len(buffer) != 5 + length:
            got = max(0, len(buffer) - 5)
            message = "the call ended without a request message" if not buffer else \
                f"the request message ended after {got} of its {length} bytes" if length >= 0 else \
                "the call ended inside a message's 5-byte prefix"
            stream.status = 400
            self._fail(stream, INVALID_ARGUMENT, message)
            return
        stream.task = self.loop.create_task(self._run(stream, bool(buffer[0]), memoryview(buffer)[5:]))

    # -- running a call ----------------------------------------------------------------------------------------

    async def _run(self, stream: _Stream, compressed: bool, message: memoryview) -> None:
        service = self.service
        method = stream.method
        try:
            try:
                payload: bytes | memoryview = message
                if compressed:
                    if stream.encoding == "identity":
                        raise RequestError("the request message is marked compressed but the call has no "
                                           "grpc-encoding.")
                    payload = inflate(bytes(message), stream.encoding, service.max_message_bytes,
                                      service.max_message_mb, service.budget, "request message")
                    stream.held += len(payload)
                try:
                    request = method.decode(payload)
                except Exception as exc:  # DecodeError, or anything protobuf raises on hostile bytes
                    raise RequestError(f"malformed {method.name}Request message ({type(exc).__name__}: "
                                       f"{str(exc)[:200]}).") from None
                finally:
                    del payload
                    message.release()
                answer = await method.call(request, Call(stream.timeout_s, stream.key, stream.traceparent))
            except RequestError as exc:
                stream.status = exc.status
                self._fail(stream, CODE_OF_STATUS.get(exc.status, INVALID_ARGUMENT), str(exc))
                return
            except InputError as exc:
                stream.status = 400
                self._fail(stream, INVALID_ARGUMENT, str(exc))
                return
            self._answer(stream, answer)
        except asyncio.CancelledError:  # the client reset the stream, or the connection is gone
            stream.status = 499 if stream.status == 200 else stream.status
        except Exception:  # a bug in the server or the model runtime, never the client's input
            stream.status = 500
            log.exception("internal error on gRPC %s", method.name)
            self._fail(stream, INTERNAL, "internal server error; see the server log.")
        finally:
            self._finish(stream)
            self._flush()

    def _finish(self, stream: _Stream) -> None:
        """Give the call's bytes back to the budget and count it, once."""
        if stream.finished:
            return
        stream.finished = True
        if stream.held:
            self.service.budget.release(stream.held)
            stream.held = 0
        stream.buffer = bytearray()
        self.service.observe(f"grpc {stream.method.name}", stream.status, time.perf_counter() - stream.start,
                             stream.key)

    def _answer(self, stream: _Stream, answer: bytes) -> None:
        body = memoryview(b"\x00" + len(answer).to_bytes(4, "big") + answer)
        self.out.append(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEAD))
        stream.pending, stream.trailers = body, TRAILERS_OK
        if not self._send_pending(stream):
            self.blocked.append(stream)
            if self.blocked_since is None:
                self.blocked_since = self.loop.time()

    def _send_pending(self, stream: _Stream) -> bool:
        """Send what the windows allow of a stream's answer; True once all of it (trailers too) is out."""
        body = stream.pending
        assert body is not None
        while body:
            room = min(self.send_window, stream.send_window, self.peer_frame)
            if room <= 0:
                stream.pending = body
                return False
            chunk = body[:room]
            self.out.append(frame(DATA, 0, stream.id, bytes(chunk)))
            self.send_window -= len(chunk)
            stream.send_window -= len(chunk)
            body = body[len(chunk):]
        stream.pending = None
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, stream.trailers))
        self._done(stream)
        return True

    def _send_blocked(self) -> None:
        self.blocked = [s for s in self.blocked if s.id in self.streams and not self._send_pending(s)]
        self.blocked_since = (self.blocked_since or self.loop.time()) if self.blocked else None

    def _done(self, stream: _Stream) -> None:
        """The answer is out: the stream closes (after telling a client still sending to stop)."""
        if not stream.ended:
            self.out.append(frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR)))
        self._forget(stream, cancel=False)

    def _forget(self, stream: _Stream, cancel: bool) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        stream.ended = True
        running = stream.task is not None and not stream.task.done()
        if cancel and running:
            assert stream.task is not None
            stream.task.cancel()  # a task cancelled before its first step never runs its finally: finish here
        if cancel or not running:
            self._finish(stream)
        if not self.streams:
            self.idle_since = self.loop.time()
            if self.going_away and self.transport is not None and not self.blocked:
                self._flush()
                self.transport.close()

    def _fail(self, stream: _Stream, code: int, message: str) -> None:
        if stream.id not in self.streams:
            return
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id,
                              RESPONSE_HEAD + status_trailers(code, message)))
        self._done(stream)

    def _trailers_only(self, stream_id: int, code: int, message: str, end_stream: bool, accept: bool = False) -> None:
        block = RESPONSE_HEAD + status_trailers(code, message) + (ACCEPT_ENCODING if accept else b"")
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
        if not end_stream:
            self.out.append(frame(RST_STREAM, 0, stream_id, struct.pack(">I", NO_ERROR)))

    def _answer_http(self, stream_id: int, status: int, end_stream: bool) -> None:
        REFUSED["grpc", "not_grpc"] += 1
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, _status_line(status)))
        if not end_stream:
            self.out.append(frame(RST_STREAM, 0, stream_id, struct.pack(">I", NO_ERROR)))


class Http2Server:
    """The listening socket, its connections and the sweep of their deadlines."""

    def __init__(self, service: Service, limits: Limits) -> None:
        self.service = service
        self.limits = limits
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.address = ""

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, ssl=ssl_context, reuse_port=True, backlog=1024,
            ssl_handshake_timeout=self.limits.header_timeout_s if ssl_context else None)
        sock = self._server.sockets[0].getsockname()
        self.address = f"{host}:{sock[1]}"
        self._schedule()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def _schedule(self) -> None:
        limits = self.limits
        interval = max(0.01, min(1.0, limits.header_timeout_s / 5, limits.body_timeout_s / 5,
                                 limits.write_timeout_s / 5))
        self._timer = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        now = asyncio.get_running_loop().time()
        for connection in list(self.connections):
            connection.sweep(now)
        self._schedule()

    async def stop(self, grace_s: float) -> None:
        """Refuse new connections and calls; let open calls finish within `grace_s`; then close everything."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.go_away()
        deadline = time.monotonic() + grace_s
        while any(c.streams for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        if self._timer is not None:
            self._timer.cancel()
        self._server = None


def server_ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["h2"])
    return context
