"""Dynamic batching: merge concurrent requests into one model call, then split the results back.

A batch takes whatever is queued (up to --max-batch-size rows), waiting at most
--batch-timeout-ms for more; with a timeout of 0 it never waits, so a lone request
pays no delay and a busy server still batches. Requests merge only when their
non-batch dimensions agree. The queue is bounded: past it a request gets 503 with
Retry-After instead of growing memory. A model slower than `inline_below_ms` runs on
one worker thread, so the event loop keeps reading requests meanwhile; a faster one
runs inline, because the thread hop would cost more than the model.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import ClientGone, Overloaded, RequestTimeout
from .lifecycle import LIFE, RequestLife

Tensors = dict[str, np.ndarray]


@dataclass(eq=False)  # compared by identity: the queue removes one by `is`, never by comparing arrays
class _Item:
    feeds: Tensors
    rows: int
    future: asyncio.Future[Tensors]
    key: tuple[tuple[int, ...], ...] = field(default=())
    life: RequestLife | None = None


class Batcher:
    def __init__(self, run: Callable[[Tensors], Tensors], *, max_batch_size: int, timeout_ms: float,
                 max_queue: int, on_batch: Callable[[int], None] | None = None, inline: bool = False,
                 mergeable: bool = True) -> None:
        self._run = run
        # Requests merge along axis 0; a model with a state batched on another axis, or a shared scalar, runs
        # each request on its own.
        self.mergeable = mergeable
        self.inline = inline
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch or (lambda rows: None)
        self._pending: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelpack-model")
        self.in_flight = 0
        self.draining = False
        self.dropped = 0  # requests whose client went away while they waited: never run

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def drain(self) -> None:
        """The server is stopping: run what is queued now, without waiting --batch-timeout-ms for fuller batches."""
        self.draining = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def stop(self) -> None:
        """Finish every queued request, then stop."""
        self.drain()
        while self._pending or self.in_flight:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, feeds: Tensors, rows: int, timeout_s: float) -> Tensors:
        if len(self._pending) >= self.max_queue:
            raise Overloaded(f"the server is at capacity ({self.max_queue} requests queued); retry shortly.",
                             headers={"Retry-After": "1"})
        life = LIFE.get()
        if life is not None and life.gone:  # the client left while the request was being decoded
            self.dropped += 1
            raise ClientGone("the client went away before its request ran.")
        loop = asyncio.get_running_loop()
        key = tuple(v.shape[1:] for v in feeds.values())
        item = _Item(feeds, rows, loop.create_future(), key, life)
        self._pending.append(item)
        assert self._wakeup is not None
        self._wakeup.set()
        # One timer per request (cheaper than wait_for, which wraps the future in tasks).
        timer = loop.call_later(timeout_s, _expire, item.future, timeout_s)
        if life is not None:
            life.queued = time.perf_counter()
            life.waiting(self, item)
        try:
            return await item.future
        except asyncio.CancelledError:  # gRPC: the call was reset, which cancels its task and this future
            self.drop(item)
            raise
        finally:
            timer.cancel()
            if life is not None:
                life.waiting(None, None)

    def drop(self, item: _Item) -> None:
        """Take a request whose client went away out of the queue, if it has not run yet, and count it."""
        try:
            self._pending.remove(item)  # O(queue); only on a hang-up
        except ValueError:
            return  # running or done already: it finishes, its answer goes nowhere
        self.dropped += 1
        if not item.future.done():
            item.future.set_exception(ClientGone("the client went away before its request ran."))

    def run_now(self, feeds: Tensors, rows: int) -> Tensors | None:
        """Run a request at once, in the caller's turn of the event loop, when there is nothing to batch it
        with: the model runs inline, nothing is queued or running, and no --batch-timeout-ms asks to wait.
        None when the request should queue instead.

        This skips the batching task's turns of the loop. gRPC needs it: each turn lets grpc.aio's poller
        thread take the GIL, and the hand-back costs more than the model on a busy machine."""
        if not self.inline or self._pending or self.in_flight or self.timeout_s > 0:
            return None
        self._on_batch(rows)
        life = LIFE.get()
        if life is None:
            return self._run(feeds)
        life.queued = life.batched = life.started = time.perf_counter()
        life.rows = rows
        outputs = self._run(feeds)
        life.ran = time.perf_counter()
        return outputs

    def _take(self) -> list[_Item]:
        """Pop a batch: same-shaped requests, oldest first, up to max_batch_size rows."""
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()  # timed out while queued
        if not self._pending:
            return []
        first = self._pending.popleft()
        if not self.mergeable:
            return [first]
        batch, rows, skipped = [first], first.rows, []
        while self._pending and rows < self.max_batch_size:
            item = self._pending.popleft()
            if item.future.done():
                continue
            if item.key != first.key or rows + item.rows > self.max_batch_size:
                skipped.append(item)
                if rows + item.rows > self.max_batch_size:
                    break
                continue
            batch.append(item)
            rows += item.rows
        self._pending.extendleft(reversed(skipped))
        return batch

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.timeout_s > 0 and not self.draining and sum(i.rows for i in self._pending) < self.max_batch_size:
                deadline = time.perf_counter() + self.timeout_s
                while (time.perf_counter() < deadline and not self.draining
                       and sum(i.rows for i in self._pending) < self.max_batch_size):
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), deadline - time.perf_counter())
                    except TimeoutError:
                        break
            batch = self._take()
            if not batch:
                continue
            self.in_flight = len(batch)
            try:
                await self._execute(batch, loop)
            finally:
                self.in_flight = 0

    async def _execute(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        batched = time.perf_counter()
        rows = sum(i.rows for i in batch)
        self._on_batch(rows)
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = {name: np.concatenate([i.feeds[name] for i in batch]) for name in batch[0].feeds}
        started = time.perf_counter()
        try:
            if self.inline:
                outputs = self._run(feeds)
            else:
                outputs = await loop.run_in_executor(self._executor, self._run, feeds)
        except Exception as exc:  # the model failed: every request in the batch hears about it
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        ran = time.perf_counter()
        for item in batch:
            if item.life is not None:
                life = item.life
                life.batched, life.started, life.ran, life.rows = batched, started, ran, rows
        start = 0
        for item in batch:
            if not item.future.done():
                item.future.set_result({k: v[start:start + item.rows] for k, v in outputs.items()})
            start += item.rows


def _expire(future: asyncio.Future[Tensors], timeout_s: float) -> None:
    """Fail a request that outlived --timeout-s; the batcher skips it if it has not run yet."""
    if not future.done():
        future.set_exception(RequestTimeout(f"the request took longer than --timeout-s {timeout_s:g}s."))
