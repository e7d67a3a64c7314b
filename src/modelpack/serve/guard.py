"""Below the ASGI app: uvicorn's httptools protocol with deadlines for slow clients and one write per answer.

uvicorn closes a keep-alive connection that idles after a response, but a connection that never sends
a request, or dribbles its headers or its body, is held forever. Here every connection gets:

- a header deadline (`--header-timeout-s`): from the connection's first byte of silence, or the end of
  the previous response, to the end of the request's headers. Past it the connection is closed (an
  idle connection), or answered 408 and closed (headers under way);
- a body deadline (`--body-timeout-s`): from the end of the headers to the end of the body. Past it,
  408 and close: this is also what a Content-Length larger than the body gets.

The app itself caps the request bytes in flight across all connections (503 beyond them), and
uvicorn's `limit_concurrency` caps connections (`--max-connections`).

A response leaves in one write: uvicorn writes the status line and headers, then the body, which is
two send() calls and two TCP segments per answer; here the headers wait for the body (`_OneWrite`).

A deadline is a time stamped on the connection; one sweep per event loop, every fifth of the shorter
timeout (at most a second), closes the connections past theirs. Arming a timer per request instead cost
three timer operations per request, about 5% of a tiny model's throughput.

The answers uvicorn writes itself, below the app (a request its HTTP parser refuses, and the 503 past
the connection limit), are JSON `{"error": ...}` bodies here, like every answer the app gives.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0


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
    """Closes the connections of one event loop that are past their deadline, checking them periodically."""

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
        for connection in [c for c in self.connections if c.deadline is not None and c.deadline <= now]:
            connection.expire()
        self._timer = self.loop.call_later(GuardedProtocol.sweep_interval_s(), self._sweep) if self.connections \
            else None


class _OneWrite:
    """A response's view of the connection's transport: its first write (the status line and headers) is
    held and sent together with the next (the body). An answer to HEAD has no body write, so it is not wrapped."""

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
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            data, self._held = self._held, None
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...: the transport's own
        return getattr(self._transport, name)


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = weakref.WeakKeyDictionary()


class GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header and body deadlines (class attributes, set by `configure`)."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S

    @classmethod
    def sweep_interval_s(cls) -> float:
        return max(0.01, min(1.0, cls.header_timeout_s / 5, cls.body_timeout_s / 5))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline: float | None = None  # loop time past which the connection is closed
        self._what = ""  # what the deadline waits for, for the 408's message
        self._receiving = False  # some bytes of a request have arrived

    def _arm(self, seconds: float, what: str) -> None:
        self.deadline = self.loop.time() + seconds
        self._what = what

    def _disarm(self) -> None:
        self.deadline = None

    def expire(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        if self._receiving:
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
        sweeper = _sweepers.get(self.loop)
        if sweeper is not None:
            sweeper.connections.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._receiving = True
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser refuses: a JSON 400, then close (uvicorn's own is plain text)."""
        self.transport.write(_closing_response(
            b"400 Bad Request", "malformed HTTP/1.1 request (the parser refused it); the connection is closed."))
        self.transport.close()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        super()._start_asgi_task(cycle, _json_service_unavailable if app is service_unavailable else app)

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout_s, "the request body")
        super().on_headers_complete()
        # The new cycle's ASGI task has not run yet, so nothing has been written through its transport.
        if self.cycle is not None and self.cycle.transport is self.transport and self.scope["method"] != "HEAD":
            self.cycle.transport = _OneWrite(self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._disarm()
        self._receiving = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            # uvicorn's keep-alive timer now runs too; this one also covers a next request that stalls.
            self._arm(self.header_timeout_s, "the request headers")


def configure(header_timeout_s: float, body_timeout_s: float) -> type[GuardedProtocol]:
    """Set the deadlines for this process's connections (each worker process calls this too)."""
    GuardedProtocol.header_timeout_s = header_timeout_s
    GuardedProtocol.body_timeout_s = body_timeout_s
    return GuardedProtocol
