"""The limits both transports share: the in-flight byte budget, bounded decompression, strict numbers.

HTTP bodies and gRPC messages draw on one `Budget` (`--max-inflight-mb`), counted as their bytes arrive and,
for a compressed request, again for what it inflates to: a small gzip body that inflates to 15 MB holds 15 MB.
"""

from __future__ import annotations

import re
import zlib

from ..errors import Overloaded, PayloadTooLarge, RequestError
from .tensors import clip

_DIGITS = re.compile(r"[0-9]{1,15}")  # ASCII only: str.isdigit() accepts '²', which int() refuses


def parse_length(text: str) -> int | None:
    """A decimal byte count as a client writes it in a header, or None if it is not one."""
    return int(text) if _DIGITS.fullmatch(text) else None


class Budget:
    """Request bytes held at once, all connections and both protocols together (`--max-inflight-mb`)."""

    def __init__(self, max_mb: float) -> None:
        self.max_mb = max_mb
        self.limit = int(max_mb * 1024 * 1024)
        self.held = 0

    def room(self) -> int:
        return max(0, self.limit - self.held)

    def overloaded(self) -> Overloaded:
        return Overloaded(f"the server holds {self.max_mb:g} MB of requests already (--max-inflight-mb); "
                          "retry shortly.", headers={"Retry-After": "1"})

    def hold(self, size: int) -> None:
        """Take `size` bytes, or raise Overloaded (503, gRPC UNAVAILABLE) and take nothing."""
        if self.held + size > self.limit:
            raise self.overloaded()
        self.held += size

    def release(self, size: int) -> None:
        self.held -= size


ENCODINGS = ("gzip", "deflate", "identity")
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def inflate(data: bytes, encoding: str, max_bytes: int, max_mb: float, budget: Budget, what: str) -> bytes:
    """`data` decompressed, never past `max_bytes` (a bomb is refused before it inflates) nor past the
    budget's room; the inflated bytes are held in the budget, and the caller releases `len(result)`.

    `encoding` is gzip, deflate or identity (identity returns `data` itself and holds nothing more)."""
    kind = encoding.strip().lower()
    if kind == "identity":
        return data
    wbits = _WBITS.get(kind)
    if wbits is None:
        raise RequestError(f"{what} encoding {clip(encoding)} is not supported; use gzip, deflate or none.",
                           status=415)
    room = budget.room()
    cap = min(max_bytes, room)
    inflater = zlib.decompressobj(wbits)
    try:
        plain = inflater.decompress(data, cap + 1)
    except zlib.error as exc:
        raise RequestError(f"the {kind} {what} is corrupt ({exc}).") from None
    if len(plain) > cap or inflater.unconsumed_tail:
        if cap < max_bytes:
            raise budget.overloaded()
        raise PayloadTooLarge(f"the {kind} {what} inflates past the {max_mb:g} MB limit (--max-body-mb).")
    if not inflater.eof:
        raise RequestError(f"the {kind} {what} is truncated.")
    budget.hold(len(plain))
    return plain
