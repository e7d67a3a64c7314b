"""ASGI plumbing, apart from routing and protocols: requests, responses, bodies read within limits, JSON.

Nothing here knows a route or a tensor. `BodyReader` enforces `--max-body-mb` per request and
`--max-inflight-mb` across all connections, and decompresses gzip/deflate with a bound.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import Overloaded, PayloadTooLarge, RequestError
from .tensors import clip

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
    """Reads request bodies within `--max-body-mb` each and `--max-inflight-mb` for all requests at once."""

    def __init__(self, max_body_mb: float, max_inflight_mb: float) -> None:
        self.max_body_mb, self.max_inflight_mb = max_body_mb, max_inflight_mb
        self.max_body = int(max_body_mb * 1024 * 1024)
        self.max_inflight = int(max_inflight_mb * 1024 * 1024)
        self.inflight = 0  # request body bytes being read or held, all connections together

    def _too_large(self, size: int | None = None) -> PayloadTooLarge:
        what = f"request body of {size} bytes" if size is not None else "request body"
        return PayloadTooLarge(f"{what} is over the {self.max_body_mb:g} MB limit (--max-body-mb).")

    def _overloaded(self) -> Overloaded:
        return Overloaded(f"the server holds {self.max_inflight_mb:g} MB of requests already "
                          "(--max-inflight-mb); retry shortly.", headers={"Retry-After": "1"})

    async def read(self, receive: Receive, headers: Headers) -> bytes:
        """The whole body; the caller gives its length back with `release` once the request is answered."""
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_body:
                raise self._too_large(int(declared))
            if self.inflight + int(declared) > self.max_inflight:
                raise self._overloaded()
        chunks, size = [], 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Disconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                self.inflight += len(chunk)
                if size > self.max_body:
                    raise self._too_large()
                if self.inflight > self.max_inflight:
                    raise self._overloaded()
                chunks.append(chunk)
                if not message.get("more_body"):
                    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    size = 0  # from here the caller releases these bytes
                    return body
        finally:
            self.inflight -= size  # a refused or abandoned body is released at once

    def release(self, size: int) -> None:
        self.inflight -= size

    def decode(self, body: bytes, encoding: str) -> bytes:
        """A gzip or deflate body (tritonclient's request_compression_algorithm), decompressed with a bound:
        one that would inflate past --max-body-mb (a gzip bomb) is refused before it is."""
        kind = encoding.strip().lower()
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "identity": None}.get(kind, -1)
        if wbits is None:
            return body
        if wbits == -1:
            raise RequestError(f"Content-Encoding {clip(encoding)} is not supported; use gzip, deflate or none.",
                               status=415)
        inflater = zlib.decompressobj(wbits)
        try:
            plain = inflater.decompress(body, self.max_body + 1)
        except zlib.error as exc:
            raise RequestError(f"the {kind} request body is corrupt ({exc}).") from None
        if len(plain) > self.max_body or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the {kind} request body inflates past the {self.max_body_mb:g} MB limit "
                                  "(--max-body-mb).")
        return plain
