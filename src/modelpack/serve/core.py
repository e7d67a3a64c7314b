"""The protocol-neutral inference core every protocol sits on: find the model, validate, batch, run.

A protocol module decodes its own wire format into `{input name: array}`, calls `Core.infer`, and
encodes the outputs its own way. Keys, scopes, rate limits and metrics live here too, so HTTP and
gRPC apply the same ones.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import numpy as np

from ..errors import InputError, NotFound, RequestError, reason
from .asgi import capped
from .auth import ApiKey, KeyRing
from .batcher import Batcher
from .config import ServeConfig
from .limits import Budget
from .metrics import Metrics
from .model import ServedModel
from .tensors import clip

log = logging.getLogger("modelpack.serve")
# A model faster than this (batch 1, measured at warm-up) runs on the event loop: a thread hop costs more.
INLINE_BELOW_MS = 0.5


class Core:
    """The served model with its batcher, keys and metrics. `startup()` loads and warms; `shutdown()` drains."""

    def __init__(self, config: ServeConfig, model: ServedModel | None = None) -> None:
        self.config = config
        self.model = model
        self.ready = False
        self.keys = KeyRing.build(config.api_key, config.api_keys_file, config.rate_limit)
        self.budget = Budget(config.max_inflight_mb)  # request bytes held, HTTP and gRPC together
        self.metrics: Metrics | None = None
        self.batcher: Batcher | None = None

    async def startup(self) -> None:
        """Load, warm up and start batching; the caller sets `ready` once every listener is up."""
        if self.model is None:
            self.model = self.config.load_model()
        model = self.model
        self.metrics = Metrics(model.name, model.version)
        self.metrics.load_seconds = model.load_seconds
        self.metrics.inflight_bytes = lambda: self.budget.held
        inline = model.warm_up() < INLINE_BELOW_MS  # batch-1 latency in ms
        if inline and self.config.threads is None and model.prefer_one_thread():
            log.info("one intra-op thread: it runs this model faster than a thread pool (--threads overrides)")
        self.batcher = Batcher(model.runner.run, max_batch_size=self.config.max_batch_size,
                               timeout_ms=self.config.batch_timeout_ms, max_queue=self.config.max_queue,
                               on_batch=self.metrics.batch.observe, inline=inline,
                               mergeable=model.signature.simple_batch)
        self.batcher.start()
        self.metrics.queue_depth = lambda: self.batcher.depth if self.batcher else 0
        self._watch_sighup()

    def begin_drain(self) -> None:
        """SIGTERM: answer not-ready from now on, and run queued batches at once instead of waiting to fill them."""
        self.ready = False
        if self.batcher is not None:
            self.batcher.drain()

    async def shutdown(self) -> None:
        self.ready = False
        if self.batcher is not None:
            await self.batcher.stop()

    def _watch_sighup(self) -> None:
        """SIGHUP re-reads the keys file; requests in flight are not disturbed."""
        if self.config.api_keys_file is None:
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_keys)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), or no signals
            pass

    def reload_keys(self) -> None:
        try:
            count = self.keys.reload()
        except InputError as exc:
            log.error("keys file not reloaded, the previous keys stay in force: %s", exc)
            return
        log.info("reloaded %d API key(s) from %s", count, self.config.api_keys_file)

    def identify(self, authorization: str | None) -> ApiKey | None:
        """The API key an `Authorization` value holds (None when the server has no keys); 401 otherwise."""
        return self.keys.check(authorization) if self.keys.enabled else None

    def permit(self, api_key: ApiKey | None, scope: str, target: str) -> None:
        """403 unless the key has `scope` for `target`; 429 when the key is over its rate limit."""
        if api_key is not None:
            self.keys.authorize(api_key, scope, target)
            self.keys.throttle(api_key)

    def model_for(self, name: str | None, version: str | None) -> ServedModel:
        """The served model, if `name` (and `version`, when given) name it and it is ready; every protocol asks."""
        model = self.model
        if model is None or not self.ready:
            raise RequestError("the model is not ready yet.", status=503, headers={"Retry-After": "1"})
        if name is not None and name != model.name:
            raise NotFound(f"unknown model {clip(name)}; this server serves '{model.name}'.")
        model.check_version(version)
        return model

    async def infer(self, model: ServedModel, feeds: dict[str, np.ndarray], eager: bool = False,
                    timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Validate against the signature, batch, run: the inference path every protocol shares.

        `eager` runs the request at once when there is nothing to batch it with (see `Batcher.run_now`);
        `timeout_s` is the client's own deadline (gRPC's grpc-timeout), when shorter than --timeout-s."""
        rows = model.validate(feeds)
        assert self.batcher is not None
        try:
            if eager and (outputs := self.batcher.run_now(feeds, rows)) is not None:
                return outputs
            limit = self.config.timeout_s if timeout_s is None else min(timeout_s, self.config.timeout_s)
            return await self.batcher.submit(feeds, rows, limit)
        except (RequestError, asyncio.CancelledError):
            raise
        except Exception as exc:
            # The inputs matched the signature, so a runtime that refuses them (a dynamic dimension the graph
            # constrains, a value out of a model's range) is answering the client's input: a 400 with its reason.
            if _from_runtime(exc):
                raise RequestError(f"the model rejected the input: {capped(reason(exc, 400), 400)}") from None
            raise


def _from_runtime(exc: BaseException) -> bool:
    """An exception raised by onnxruntime or the TFLite interpreter while running a request."""
    module = type(exc).__module__ or ""
    return module.startswith(("onnxruntime", "tensorflow", "ai_edge_litert")) or isinstance(exc, (ValueError,
                                                                                                  RuntimeError))
