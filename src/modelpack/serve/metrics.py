"""Prometheus metrics in the text exposition format: counters and histograms, no dependency.

With --workers N each process keeps its own numbers; a scrape reaches one worker.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Connections and requests the transports refused below the app, by (protocol, reason): a header, body, write or
# idle deadline, a head over --max-header-kb, --max-connections, a malformed frame or request, an abusive client.
# One per process, like the rest of the metrics; the transports count into it directly.
REFUSED: Counter[tuple[str, str]] = Counter()


class Histogram:
    def __init__(self, buckets: Iterable[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        wrap = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{wrap} {self.total:.6f}")
        out.append(f"{name}_count{wrap} {self.n}")
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self, model: str, version: str) -> None:
        self.labels = f'model="{_escape(model)}",version="{_escape(version)}"'
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.key_requests: dict[str, int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch = Histogram(BATCH_BUCKETS)
        self.load_seconds = 0.0
        self.queue_depth: Callable[[], int] = lambda: 0
        self.inflight_bytes: Callable[[], int] = lambda: 0

    def observe(self, route: str, status: int, seconds: float, key: str | None = None) -> None:
        self.requests[(route, status)] += 1
        if key is not None:
            self.key_requests[key] += 1
        hist = self.latency.get(route)
        if hist is None:
            hist = self.latency[route] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)

    def render(self) -> str:
        lines = [
            "# HELP modelpack_requests_total Requests by route and HTTP status.",
            "# TYPE modelpack_requests_total counter",
        ]
        for (route, status), count in sorted(self.requests.items()):
            lines.append(f'modelpack_requests_total{{{self.labels},route="{_escape(route)}",status="{status}"}} '
                         f"{count}")
        lines += ["# HELP modelpack_request_duration_seconds Request latency by route.",
                  "# TYPE modelpack_request_duration_seconds histogram"]
        for route, hist in sorted(self.latency.items()):
            lines += hist.lines("modelpack_request_duration_seconds", f'{self.labels},route="{_escape(route)}"')
        lines += ["# HELP modelpack_batch_size Rows per model call (dynamic batching).",
                  "# TYPE modelpack_batch_size histogram"]
        lines += self.batch.lines("modelpack_batch_size", self.labels)
        lines += ["# HELP modelpack_queue_depth Requests waiting for the model.",
                  "# TYPE modelpack_queue_depth gauge",
                  f"modelpack_queue_depth{{{self.labels}}} {self.queue_depth()}",
                  "# HELP modelpack_inflight_request_bytes Request body bytes held, all connections together.",
                  "# TYPE modelpack_inflight_request_bytes gauge",
                  f"modelpack_inflight_request_bytes{{{self.labels}}} {self.inflight_bytes()}",
                  "# HELP modelpack_model_load_seconds Time to load the model at startup.",
                  "# TYPE modelpack_model_load_seconds gauge",
                  f"modelpack_model_load_seconds{{{self.labels}}} {self.load_seconds:.6f}"]
        if REFUSED:
            lines += ["# HELP modelpack_refused_total Connections and requests refused below the API: deadlines, "
                      "limits, malformed or abusive clients.",
                      "# TYPE modelpack_refused_total counter"]
            for (protocol, reason), count in sorted(REFUSED.items()):
                lines.append(f'modelpack_refused_total{{protocol="{protocol}",reason="{reason}"}} {count}')
        if self.key_requests:
            lines += ["# HELP modelpack_key_requests_total Requests by API key name.",
                      "# TYPE modelpack_key_requests_total counter"]
            for key, count in sorted(self.key_requests.items()):
                lines.append(f'modelpack_key_requests_total{{{self.labels},key="{_escape(key)}"}} {count}')
        return "\n".join(lines) + "\n"
