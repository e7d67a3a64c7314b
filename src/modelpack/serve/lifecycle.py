"""One request's life below the protocols: whether its client is still there, and when it was queued and run.

A transport makes a `RequestLife` per inference request and sets it in `LIFE` for the request's task. When the
client goes away (HTTP/1: the connection closes before the answer starts; gRPC: RST_STREAM or the connection
closes, which cancels the call's task), a request still waiting in the batcher's queue is taken out of it and
never runs; one that is decoding is refused when it reaches the queue. Either way it is counted in
`modelpack_dropped_total{reason="client_gone"}`. A request whose batch is already running finishes; its answer
is dropped.

The batcher also stamps the times the tracing spans need (queued, batch started, model done, batch rows), so
a trace costs the request path nothing when tracing is off.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batcher import Batcher


class RequestLife:
    __slots__ = ("gone", "arrived", "queued", "batched", "started", "ran", "rows", "_batcher", "_item")

    def __init__(self, arrived: float = 0.0) -> None:
        self.gone = False
        # time.perf_counter() stamps, 0.0 until they happen: the request read, queued, taken into a batch,
        # the model called, the model done.
        self.arrived = arrived
        self.queued = 0.0
        self.batched = 0.0
        self.started = 0.0
        self.ran = 0.0
        self.rows = 0  # rows of the batch it ran in
        self._batcher: Batcher | None = None
        self._item: Any = None

    def waiting(self, batcher: Batcher | None, item: Any) -> None:
        """The batcher holds the request in its queue (or, with None, no longer)."""
        self._batcher, self._item = batcher, item

    def abandon(self) -> None:
        """The client went away: drop the request if it is still queued (the transport calls this)."""
        self.gone = True
        if self._batcher is not None:
            self._batcher.drop(self._item)


LIFE: contextvars.ContextVar[RequestLife | None] = contextvars.ContextVar("modelpack_life", default=None)
