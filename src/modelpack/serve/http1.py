"""HTTP/1.1 below the ASGI app: uvicorn's httptools protocol with deadlines and limits for hostile clients.

uvicorn closes a keep-alive connection that idles after a response, but a connection that never sends
a request, dribbles its headers or its body, or never reads its answers, is held forever; and a request
head has no size limit (httptools accumulates a long header by concatenation, quadratic in its length).
Here every connection gets:

- a header deadline (`--header-timeout-s`): from the connection's first byte of silence, or the end of
  the previous response, to the end of the request's headers. Past it the connection is closed (an
  idle connection), or answered 408 and closed (headers under way);
- a body deadline (`--body-timeout-s`): from the end of the headers to the end of the body. Past it,
  408 and close: this is also what a Content-Length larger than the body gets;
- a write deadline (`--write-timeout-s`): an answer the client does not drain (the transport's buffer
  stays over its high-water mark, as with a client that pipelines requests and never reads) closes the
  connection, dropping what it holds;
- a head limit (`--max-header-kb`): a request line and headers larger than that are answered 431 and
  the connection is closed, before the parser sees more than one read past the limit.

A connection that closes before its answer has started abandons the request (`lifecycle.RequestLife`): still
queued, it is taken out of the batcher's queue and never runs.

The app itself caps the request bytes in flight across all connections (503 beyond them), and
uvicorn's `limit_concurrency` caps connections (`--max-connections`).

A response leaves in one write: uvicorn writes the status line and headers, then the body, which is
two send() calls and two TCP segments per answer; here the headers wait for the body (`_OneWrite`).

A deadline is a time stamped on the connection; one sweep per event loop, every fifth of the shorter
timeout (at most a second), closes the connections past theirs. Arming a timer per request instead cost
three timer operations per request, about 5% of a tiny model's throughput.

The answers uvicorn writes itself, below the app (a request its HTTP parser refuses, and the 503 past
the connection limit), are JSON `{"error": ...}` bodies here, like every answer the app gives. An
`Upgrade` request (WebSocket, h2c) is answered as plain HTTP and the connection closed after it: this
server speaks neither, and an upgrade must not reach the log as a warning per request.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .lifecycle import RequestLife
from .metrics import REFUSED


def refuse(reason: str) -> None:
    REFUSED["http", reason] += 1

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
WRITE_TIMEOUT_S = 30.0
MAX_HEADER_KB = 64.0


def _closing_response(status: bytes, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _timeout_response(what: str) -> bytes:
    return _closing_response(b"408 Request Timeout", f"{what} took too long; the connection is closed.")


OVERLOADED = json.dumps({"error": "the server has --max-connections requests open already; retry shortly."}).encode()


async def _json_service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    """uvicorn's answer past `limit_concurrency`, as JSON."""
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(OVERLOADED)).encode()),
                            (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": OVERLOADED, "more_body": False})


class _Sweeper:
    """Closes the connections of one event loop that are past a deadline, checking them periodically."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.connections: set[GuardedProtocol] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, connection: GuardedProtocol) -> None:
        self.connections.add(connection)
        if self._timer is None:
            self._timer = self.loop.call_later(GuardedProtocol.sweep_interval_s(), self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for connection in [c for c in self.connections if c.past_deadline(now)]:
            connection.expire(now)
        self._timer = self.loop.call_later(GuardedProtocol.sweep_interval_s(), self._sweep) if self.connections \
            else None


class _OneWrite:
    """A response's view of the connection's transport: its first write (the status line and headers) is
    held and sent together with the next (the body). An answer to HEAD has no body write, so it is not wrapped.
    Writes to a transport that has closed (the client hung up) are dropped, as asyncio's own transports do."""

    __slots__ = ("_transport", "_held", "_first")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._first and not data.startswith(b"HTTP/1.1 100 "):  # an interim 100 Continue goes out at once
            self._first = False
            self._held = data
            return
        if self._held is not None:
            data, self._held = self._held + data, None
        if not self._transport.is_closing():  # uvloop raises on a closed transport; the client is gone
            self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            data, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...: the transport's own
        return getattr(self._transport, name)


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = weakref.WeakKeyDictionary()


class GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with deadlines and a head limit (class attributes, set by `configure`)."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S
    write_timeout_s = WRITE_TIMEOUT_S
    max_head_bytes = int(MAX_HEADER_KB * 1024)

    @classmethod
    def sweep_interval_s(cls) -> float:
        return max(0.01, min(1.0, cls.header_timeout_s / 5, cls.body_timeout_s / 5, cls.write_timeout_s / 5))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline: float | None = None  # loop time past which the connection is closed
        self.write_deadline: float | None = None  # set while the client does not drain what it was sent
        self._what = ""  # what the deadline waits for, for the 408's message
        self._receiving = False  # some bytes of a request have arrived
        self._in_head = True  # between a request's first byte and the end of its headers
        self._head_bytes = 0  # bytes read while in a request head

    def _arm(self, seconds: float, what: str) -> None:
        self.deadline = self.loop.time() + seconds
        self._what = what

    def _disarm(self) -> None:
        self.deadline = None

    def past_deadline(self, now: float) -> bool:
        return (self.deadline is not None and self.deadline <= now) or \
            (self.write_deadline is not None and self.write_deadline <= now)

    def expire(self, now: float) -> None:
        if self.write_deadline is not None and self.write_deadline <= now:
            self.write_deadline = self.deadline = None
            refuse("write_timeout")
            self.transport.abort()  # close() would wait for a buffer the client never reads
            return
        self.deadline = None
        if self.transport.is_closing():
            return
        if self._receiving:
            refuse("header_timeout" if self._in_head else "body_timeout")
            self.transport.write(_timeout_response(self._what))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "the request headers")
        sweeper = _sweepers.get(self.loop)
        if sweeper is None:
            sweeper = _sweepers[self.loop] = _Sweeper(self.loop)
        sweeper.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.write_deadline = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:  # the client left before its answer: drop it
            life = cycle.scope.get("modelpack.life")
            if isinstance(life, RequestLife):
                life.abandon()
        sweeper = _sweepers.get(self.loop)
        if sweeper is not None:
            sweeper.connections.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._receiving = True
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after the parser has had this read, so a head that ends within it is never refused; the
        # parser sees at most one read (256 KB) past the limit, which keeps its concatenation cheap.
        if self._in_head and self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
            refuse("header_too_large")
            self.transport.write(_closing_response(
                b"431 Request Header Fields Too Large",
                f"the request line and headers are over {self.max_head_bytes // 1024} KB (--max-header-kb); "
                "the connection is closed."))
            self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.write_deadline = self.loop.time() + self.write_timeout_s

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_deadline = None

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser refuses: a JSON 400, then close (uvicorn's own is plain text)."""
        refuse("malformed")
        self.transport.write(_closing_response(
            b"400 Bad Request", "malformed HTTP/1.1 request (the parser refused it); the connection is closed."))
        self.transport.close()

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn logs two warnings per upgrade request; the request is answered as plain HTTP, then closed.
        if self.cycle is not None:
            self.cycle.keep_alive = False

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if app is service_unavailable:
            refuse("max_connections")
            app = _json_service_unavailable
        super()._start_asgi_task(cycle, app)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._arm(self.body_timeout_s, "the request body")
        super().on_headers_complete()
        # The new cycle's ASGI task has not run yet, so nothing has been written through its transport.
        if self.cycle is not None and self.cycle.transport is self.transport and self.scope["method"] != "HEAD":
            self.cycle.transport = _OneWrite(self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._disarm()
        self._receiving = False
        self._in_head = True  # what comes next is the next request's head
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            # uvicorn's keep-alive timer now runs too; this one also covers a next request that stalls.
            self._arm(self.header_timeout_s, "the request headers")


def configure(header_timeout_s: float, body_timeout_s: float, write_timeout_s: float = WRITE_TIMEOUT_S,
              max_header_kb: float = MAX_HEADER_KB) -> type[GuardedProtocol]:
    """Set the deadlines and the head limit for this process's connections (each worker process calls this)."""
    GuardedProtocol.header_timeout_s = header_timeout_s
    GuardedProtocol.body_timeout_s = body_timeout_s
    GuardedProtocol.write_timeout_s = write_timeout_s
    GuardedProtocol.max_head_bytes = int(max_header_kb * 1024)
    return GuardedProtocol
