"""The protocol-neutral inference core every protocol sits on: find the model, validate, batch, run.

A protocol module decodes its own wire format into `{input name: array}`, calls `Core.infer`, and
encodes the outputs its own way. The core holds the one `Guard` (keys, scopes, rate limits, the in-flight
budget, metrics) and the one list of protocol extensions, so HTTP and gRPC apply and announce the same ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..errors import InputError, RequestError, reason
from .asgi import capped
from .auth import KeyRing
from .config import ServeConfig
from .guard import Caller, Guard
from .limits import Budget
from .metrics import Metrics
from .model import ServedModel
from .repository import Repository

if TYPE_CHECKING:
    from .tracing import Tracer

log = logging.getLogger("modelpack.serve")

# The protocol extensions the server announces, over HTTP (GET /v2) and gRPC (ServerMetadata) alike.
EXTENSIONS = ["binary_tensor_data", "tfserving_rest", "simple_predict", "model_repository"]


def _tracer(option: str | None) -> Tracer | None:
    """The OTLP tracer with --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT); None, importing nothing, without."""
    if option is None and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    from .tracing import Tracer, endpoint_from

    url = endpoint_from(option)
    assert url is not None
    try:
        tracer = Tracer(url)
    except InputError as exc:
        if option is not None:
            raise
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but requests are not traced: %s", exc)
        return None
    log.info("tracing requests to %s (OTLP/HTTP)", url)
    return tracer


class Core:
    """The repository of served models with their batchers, and the keys and metrics every protocol applies.

    `startup()` loads and warms; `shutdown()` drains."""

    def __init__(self, config: ServeConfig, model: ServedModel | None = None) -> None:
        self.config = config
        self.ready = False
        self.metrics = Metrics()
        budget = Budget(config.max_inflight_mb)  # request bytes held, HTTP and gRPC together
        self.guard = Guard.build(config.api_key, config.api_keys_file, config.rate_limit, config.model_rate_limit,
                                 budget, self.metrics)
        self.metrics.inflight_bytes = lambda: budget.held
        self.repository = Repository(config, self.metrics, model)
        self.metrics.unlabelled = self.repository.fallback_labels
        self._rescan: asyncio.Task[None] | None = None  # the SIGHUP re-read, kept so it is not collected
        self.tracer: Tracer | None = _tracer(config.otlp_endpoint)

    @property
    def keys(self) -> KeyRing:
        return self.guard.keys

    @property
    def budget(self) -> Budget:
        return self.guard.budget

    def server_metadata(self) -> dict[str, object]:
        return {"name": "modelpack", "version": __version__, "extensions": EXTENSIONS}

    @property
    def model(self) -> ServedModel | None:
        """The model a request without a name goes to (the one model of `serve PKG`), when there is one."""
        return self.repository.primary()

    async def startup(self) -> None:
        """Load, warm up and start batching; the caller sets `ready` once every listener is up."""
        await self.repository.startup()
        self.repository.start_polling()
        self._watch_sighup()

    def begin_drain(self) -> None:
        """SIGTERM: answer not-ready from now on, and run queued batches at once instead of waiting to fill them."""
        self.ready = False
        self.repository.begin_drain()

    async def shutdown(self) -> None:
        self.ready = False
        await self.repository.shutdown()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # the spans still buffered are sent

    def _watch_sighup(self) -> None:
        """SIGHUP re-reads the keys file and the repository; requests in flight are not disturbed."""
        if self.config.api_keys_file is None and self.config.repository is None:
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._sighup)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), or no signals
            pass

    def _sighup(self) -> None:
        if self.config.api_keys_file is not None:
            self.reload_keys()
        if self.config.repository is not None:
            log.info("SIGHUP: re-reading the repository %s", self.config.repository)
            self._rescan = asyncio.get_running_loop().create_task(self.repository.rescan())

    def reload_keys(self) -> None:
        try:
            count = self.keys.reload()
        except InputError as exc:
            log.error("keys file not reloaded, the previous keys stay in force: %s", exc)
            return
        log.info("reloaded %d API key(s) from %s", count, self.config.api_keys_file)

    async def model_for(self, caller: Caller, name: str | None, version: str | None,
                        label: str | None = None) -> ServedModel:
        """The model a request names (its default version without `version` or `label`), if the caller may use
        it, it is loaded and the server is ready; every protocol asks. The version is held until the request is
        answered. The caller's scope and the model's rate limit are checked before the model is looked up, so a
        key limited to some models learns nothing about the others. Under a memory budget, a version not loaded
        yet is loaded here (503 if it cannot fit)."""
        if not self.ready:
            raise RequestError("the model is not ready yet.", status=503, headers={"Retry-After": "1"})
        guard = self.guard
        if guard.model_rates or (caller.key is not None and caller.key.models):
            model = self.repository.name_of(name)
            guard.check_model(caller, model, model in self.repository.models)
        return (await self.repository.acquire(name, version, label)).model

    async def load(self, caller: Caller, name: str) -> None:
        """The repository API's load, for a caller allowed to administer this model."""
        self.guard.check_model(caller, name)
        await self.repository.load(name)

    async def unload(self, caller: Caller, name: str) -> None:
        self.guard.check_model(caller, name)
        await self.repository.unload(name)

    async def infer(self, model: ServedModel, feeds: dict[str, np.ndarray], eager: bool = False,
                    timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Validate against the signature, batch, run: the inference path every protocol shares.

        `eager` runs the request at once when there is nothing to batch it with (see `Batcher.run_now`);
        `timeout_s` is the client's own deadline (gRPC's grpc-timeout), when shorter than --timeout-s."""
        rows = model.validate(feeds)
        batcher = self.repository.loaded_of(model).batcher
        try:
            if eager and (outputs := batcher.run_now(feeds, rows)) is not None:
                return outputs
            limit = self.config.timeout_s if timeout_s is None else min(timeout_s, self.config.timeout_s)
            return await batcher.submit(feeds, rows, limit)
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
