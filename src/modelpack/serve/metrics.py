"""Prometheus metrics in the text exposition format: counters and histograms, no dependency.

With --workers N each process keeps its own numbers; a scrape reaches one worker.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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


def model_labels(model: str, version: str) -> str:
    """The label pair every per-model series carries."""
    return f'model="{_escape(model)}",version="{_escape(version)}"'


@dataclass
class ModelGauges:
    """What each loaded version reports: its batches, its queue and its load time."""

    load_seconds: float = 0.0
    memory_bytes: int = 0  # measured after load and warm-up (serve/budget.py); 0 when not measured
    batch: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    queue_depth: Callable[[], int] = lambda: 0
    dropped: Callable[[], int] = lambda: 0  # requests taken out of its queue because their client left


class Metrics:
    """The server's metrics; request series are labelled by the model and version that answered."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)  # (model labels, route, status)
        self.key_requests: dict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.models: dict[str, ModelGauges] = {}  # by model labels, the loaded versions
        self.load_failures: Counter[tuple[str, str, str]] = Counter()  # (model, version, reason)
        self.inflight_bytes: Callable[[], int] = lambda: 0
        self.inflight_requests = 0  # HTTP requests received and not yet answered: what an autoscaler holds per replica
        self.unlabelled: Callable[[], str] = lambda: model_labels("", "")  # for requests no model answered
        self.polls: int | None = None  # repository scans so far, with --poll-s
        self.model_refusals: Counter[tuple[str, str]] = Counter()  # (model, scope | rate), counted by the guard
        self.memory_budget_bytes: int | None = None  # with a memory budget (per worker)
        self.evictions: Counter[tuple[str, str]] = Counter()  # (model, version) unloaded to fit the budget
        self.loads: Counter[tuple[str, str]] = Counter()  # (model, version) loads of a repository's versions

    def add_model(self, labels: str, load_seconds: float) -> ModelGauges:
        gauges = self.models[labels] = ModelGauges(load_seconds)
        return gauges

    def remove_model(self, labels: str) -> None:
        self.models.pop(labels, None)

    @property
    def batch(self) -> Histogram:
        """The batch sizes of the first loaded version (the one model of `serve PKG`)."""
        return next(iter(self.models.values())).batch

    def observe(self, route: str, status: int, seconds: float, key: str | None = None,
                labels: str | None = None) -> None:
        labels = labels if labels is not None else self.unlabelled()
        self.requests[(labels, route, status)] += 1
        if key is not None:
            self.key_requests[(labels, key)] += 1
        hist = self.latency.get((labels, route))
        if hist is None:
            hist = self.latency[(labels, route)] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)

    def render(self) -> str:
        lines = [
            "# HELP modelpack_requests_total Requests by model, version, route and HTTP status.",
            "# TYPE modelpack_requests_total counter",
        ]
        for (labels, route, status), count in sorted(self.requests.items()):
            lines.append(f'modelpack_requests_total{{{labels},route="{_escape(route)}",status="{status}"}} '
                         f"{count}")
        lines += ["# HELP modelpack_request_duration_seconds Request latency by model, version and route.",
                  "# TYPE modelpack_request_duration_seconds histogram"]
        for (labels, route), hist in sorted(self.latency.items()):
            lines += hist.lines("modelpack_request_duration_seconds", f'{labels},route="{_escape(route)}"')
        models = sorted(self.models.items())
        lines += ["# HELP modelpack_batch_size Rows per model call (dynamic batching).",
                  "# TYPE modelpack_batch_size histogram"]
        for labels, gauges in models:
            lines += gauges.batch.lines("modelpack_batch_size", labels)
        lines += ["# HELP modelpack_queue_depth Requests waiting for the model.",
                  "# TYPE modelpack_queue_depth gauge"]
        lines += [f"modelpack_queue_depth{{{labels}}} {gauges.queue_depth()}" for labels, gauges in models]
        lines += ["# HELP modelpack_dropped_total Requests dropped from the queue before they ran.",
                  "# TYPE modelpack_dropped_total counter"]
        lines += [f'modelpack_dropped_total{{{labels},reason="client_gone"}} {gauges.dropped()}'
                  for labels, gauges in models]
        lines += ["# HELP modelpack_inflight_request_bytes Request body bytes held, all connections together.",
                  "# TYPE modelpack_inflight_request_bytes gauge",
                  f"modelpack_inflight_request_bytes{{{self.unlabelled()}}} {self.inflight_bytes()}",
                  "# HELP modelpack_inflight_requests HTTP requests received and not yet answered, this one included.",
                  "# TYPE modelpack_inflight_requests gauge",
                  f"modelpack_inflight_requests{{{self.unlabelled()}}} {self.inflight_requests}",
                  "# HELP modelpack_model_load_seconds Time to load the model.",
                  "# TYPE modelpack_model_load_seconds gauge"]
        lines += [f"modelpack_model_load_seconds{{{labels}}} {gauges.load_seconds:.6f}" for labels, gauges in models]
        lines += ["# HELP modelpack_model_memory_bytes Memory a loaded version holds: resident memory after its "
                  "load and warm-up, less before.",
                  "# TYPE modelpack_model_memory_bytes gauge"]
        lines += [f"modelpack_model_memory_bytes{{{labels}}} {gauges.memory_bytes}" for labels, gauges in models
                  if gauges.memory_bytes]
        if self.memory_budget_bytes is not None:
            lines += ["# HELP modelpack_memory_budget_bytes The models' memory budget (per worker).",
                      "# TYPE modelpack_memory_budget_bytes gauge",
                      f"modelpack_memory_budget_bytes {self.memory_budget_bytes}",
                      "# HELP modelpack_repository_evictions_total Idle versions unloaded to fit the memory budget "
                      "(least recently used first).",
                      "# TYPE modelpack_repository_evictions_total counter"]
            lines += [f"modelpack_repository_evictions_total{{{model_labels(m, v)}}} {n}"
                      for (m, v), n in sorted(self.evictions.items())]
        if self.loads:
            lines += ["# HELP modelpack_repository_loads_total Versions loaded (start-up, polling, the repository API, "
                      "first requests under a memory budget).",
                      "# TYPE modelpack_repository_loads_total counter"]
            lines += [f"modelpack_repository_loads_total{{{model_labels(m, v)}}} {n}"
                      for (m, v), n in sorted(self.loads.items())]
        if self.load_failures:
            lines += ["# HELP modelpack_repository_load_failures_total New versions refused: failed verification, "
                      "load or warm-up (the versions being served stayed).",
                      "# TYPE modelpack_repository_load_failures_total counter"]
            for (model, version, why), count in sorted(self.load_failures.items()):
                lines.append(f"modelpack_repository_load_failures_total{{{model_labels(model, version)},"
                             f'reason="{why}"}} {count}')
        if self.polls is not None:
            lines += ["# HELP modelpack_repository_polls_total Scans of the repository (--poll-s and SIGHUP).",
                      "# TYPE modelpack_repository_polls_total counter", f"modelpack_repository_polls_total {self.polls}"]
        if REFUSED:
            lines += ["# HELP modelpack_refused_total Connections and requests refused below the API: deadlines, "
                      "limits, malformed or abusive clients.",
                      "# TYPE modelpack_refused_total counter"]
            for (protocol, reason), count in sorted(REFUSED.items()):
                lines.append(f'modelpack_refused_total{{protocol="{protocol}",reason="{reason}"}} {count}')
        if self.model_refusals:
            lines += ["# HELP modelpack_model_refused_total Calls refused on a model: a key without the scope on it "
                      "(reason scope), or the model over its rate limit (reason rate).",
                      "# TYPE modelpack_model_refused_total counter"]
            for (model, why), count in sorted(self.model_refusals.items()):
                lines.append(f'modelpack_model_refused_total{{model="{_escape(model)}",reason="{why}"}} {count}')
        if self.key_requests:
            lines += ["# HELP modelpack_key_requests_total Requests by API key name.",
                      "# TYPE modelpack_key_requests_total counter"]
            for (labels, key), count in sorted(self.key_requests.items()):
                lines.append(f'modelpack_key_requests_total{{{labels},key="{_escape(key)}"}} {count}')
        return "\n".join(lines) + "\n"
