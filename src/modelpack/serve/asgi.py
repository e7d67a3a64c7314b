"""ASGI plumbing, apart from routing and protocols: requests, responses, bodies read within limits, JSON.

Nothing here knows a route or a tensor. `BodyReader` enforces `--max-body-mb` per request and
the shared `--max-inflight-mb` budget (`limits.Budget`), and decompresses gzip/deflate with a bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import PayloadTooLarge, RequestError
from .limits import Budget, inflate, parse_length

if TYPE_CHECKING:
    from .guard import Caller

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

    def loads(data: bytes | memoryview) -> Any:
        return orjson.loads(data)

    JSONError: tuple[type[Exception], ...] = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover - orjson is part of the serve extra
    import json

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, default=lambda o: o.tolist()).encode()

    def loads(data: bytes | memoryview) -> Any:
        return json.loads(bytes(data))

    JSONError = (json.JSONDecodeError, UnicodeDecodeError)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = dict[str, str]
Response = tuple[int, list[tuple[bytes, bytes]], bytes]
JSON_TYPE = [(b"content-type", b"application/json")]
ERROR_CHARS = 1024  # an error body never repeats more of the client's request than this
# A JSON body larger than this is parsed on a worker thread, so that health checks and small requests
# keep being answered while it is.
PARSE_INLINE_BYTES = 256 * 1024


@dataclass
class Request:
    method: str
    path: str
    headers: Headers
    params: dict[str, str | None]
    caller: Caller  # the key that was admitted and what the route needs of it (see `serve.guard`)
    body: bytes = b""


class Disconnected(Exception):
    """The client went away before its request was read: nothing to answer."""


def json_response(status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None) -> Response:
    return status, JSON_TYPE + (extra or []), dumps(payload)


def capped(message: str, limit: int = ERROR_CHARS) -> str:
    return message if len(message) <= limit else message[:limit] + "…"


def error_response(exc: RequestError) -> Response:
    return json_response(exc.status, {"error": capped(str(exc))},
                         [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()])


def parse_json(body: bytes | memoryview, what: str = "request body") -> Any:
    if not body:
        raise RequestError(f"empty {what}; expected a JSON object.")
    try:
        return loads(body)
    except JSONError as exc:
        raise RequestError(f"malformed JSON in the {what}: {exc}.") from None


async def read_json(body: bytes | memoryview, what: str = "request body") -> Any:
    """`parse_json`, on a worker thread for a large body."""
    if len(body) <= PARSE_INLINE_BYTES:
        return parse_json(body, what)
    return await asyncio.to_thread(parse_json, body, what)


async def send_response(send: Send, response: Response, head_only: bool = False) -> None:
    status, headers, body = response
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": b"" if head_only else body})


async def lifespan(receive: Receive, send: Send, startup: Callable[[], Awaitable[None]],
                   shutdown: Callable[[], Awaitable[None]], on_error: Callable[[Exception], None]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:
                on_error(exc)
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


class BodyReader:
    """Reads request bodies within `--max-body-mb` each and the shared `--max-inflight-mb` budget."""

    def __init__(self, max_body_mb: float, budget: Budget) -> None:
        self.max_body_mb = max_body_mb
        self.max_body = int(max_body_mb * 1024 * 1024)
        self.budget = budget

    def _too_large(self, size: int | None = None) -> PayloadTooLarge:
        what = f"request body of {size} bytes" if size is not None else "request body"
        return PayloadTooLarge(f"{what} is over the {self.max_body_mb:g} MB limit (--max-body-mb).")

    async def read(self, receive: Receive, headers: Headers) -> bytes:
        """The whole body; the caller gives its length back with `release` once the request is answered."""
        declared = headers.get("content-length")
        length = parse_length(declared) if declared is not None else None
        if length is not None:
            if length > self.max_body:
                raise self._too_large(length)
            if length > self.budget.room():
                raise self.budget.overloaded()
        chunks, size = [], 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Disconnected
                chunk = message.get("body", b"")
                if size + len(chunk) > self.max_body:
                    raise self._too_large()
                self.budget.hold(len(chunk))
                size += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body"):
                    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    size = 0  # from here the caller releases these bytes
                    return body
        finally:
            self.budget.release(size)  # a refused or abandoned body is released at once

    def release(self, size: int) -> None:
        self.budget.release(size)

    def decode(self, body: bytes, encoding: str) -> bytes:
        """A gzip or deflate body (tritonclient's request_compression_algorithm), decompressed within
        --max-body-mb and the in-flight budget, which holds the inflated bytes too (release them)."""
        return inflate(body, encoding, self.max_body, self.max_body_mb, self.budget, "request body")
