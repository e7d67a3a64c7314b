"""W3C trace context and OTLP export: each inference request a trace, with spans for its stages.

Only with `--otlp-endpoint URL` (or OTEL_EXPORTER_OTLP_ENDPOINT): then the OpenTelemetry SDK (the `otel` extra)
is imported, once, when the server starts; without it nothing here imports it. A request's span has the
incoming `traceparent` (an HTTP header, or gRPC metadata) as its parent, and five children made from the times
the batcher stamps on the request (`lifecycle.RequestLife`), so the request path pays nothing for them:

- `decode`: from the request's arrival (its body read) until it is queued (parsing, validation);
- `queue wait`: in the batcher's queue;
- `batch`: its batch being put together (the requests' arrays concatenated);
- `run`: the model call;
- `encode`: from the model's answer to the response being ready.

Each is tagged with the model and version (`modelpack.model`, `modelpack.model_version`) and the request span
with the batch's rows and the route and status. Spans are exported in batches by the SDK's own thread, over
OTLP/HTTP protobuf to `URL/v1/traces` (a URL already ending in /v1/traces is used as it is).

Making six spans costs the event loop a few hundred microseconds a request on a busy 2-core machine; the SDK's
sampler settings (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.01`) trace a share
of the requests, and a request the sampler leaves out costs one unsampled span.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..errors import InputError
from .lifecycle import RequestLife

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
SPANS = ("decode", "queue wait", "batch", "run", "encode")


def endpoint_from(option: str | None) -> str | None:
    """The traces URL from --otlp-endpoint, else the standard environment variable; None: no tracing."""
    base = option or os.environ.get(ENDPOINT_ENV) or None
    if base is None:
        return None
    if not base.startswith(("http://", "https://")):
        raise InputError(f"--otlp-endpoint {base!r}: an http:// or https:// URL of an OTLP/HTTP receiver, "
                         "e.g. http://localhost:4318.")
    return base if base.rstrip("/").endswith("/v1/traces") else base.rstrip("/") + "/v1/traces"


class Tracer:
    """The SDK's tracer provider with an OTLP/HTTP exporter; `record` turns one request into its spans."""

    def __init__(self, url: str) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            raise InputError("--otlp-endpoint needs the OpenTelemetry SDK: pip install "
                             "'modelpack-toolkit[otel]'.") from None
        from .. import __version__

        self.url = url
        self.provider = TracerProvider(resource=Resource.create({"service.name": "modelpack",
                                                                 "service.version": __version__}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        self.tracer = self.provider.get_tracer("modelpack.serve", __version__)
        self.propagator = TraceContextTextMapPropagator()

    def record(self, life: RequestLife, name: str, traceparent: str | None, model: str, version: str,
               status: int, done: float) -> None:
        """The request's span and its children, from the stamps on `life` (perf_counter seconds)."""
        from opentelemetry import trace

        # perf_counter stamps to the epoch nanoseconds spans carry, through one reading of both clocks.
        wall, perf = time.time_ns(), time.perf_counter()

        def ns(t: float) -> int:
            return wall - int((perf - t) * 1e9)

        parent = self.propagator.extract({"traceparent": traceparent}) if traceparent else None
        attributes: dict[str, Any] = {"modelpack.model": model, "modelpack.model_version": version,
                                      "modelpack.route": name, "modelpack.status": status}
        if life.rows:
            attributes["modelpack.batch_rows"] = life.rows
        root = self.tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER, start_time=ns(life.arrived),
                                      attributes=attributes)
        if not root.is_recording():  # not sampled (OTEL_TRACES_SAMPLER, or a traceparent's flags): no children
            return
        if status >= 500:
            root.set_status(trace.StatusCode.ERROR)
        inside = trace.set_span_in_context(root)
        tags = {"modelpack.model": model, "modelpack.model_version": version}
        stamps = [life.arrived, life.queued, life.batched, life.started, life.ran, done]
        for span_name, start, end in zip(SPANS, stamps, stamps[1:]):
            if start and end and end >= start:  # a stage the request did not reach has no span
                self.tracer.start_span(span_name, context=inside, start_time=ns(start),
                                       attributes=tags).end(end_time=ns(end))
        root.end(end_time=ns(done))

    def shutdown(self) -> None:
        """Export what is buffered, then stop the exporter's thread."""
        self.provider.shutdown()
