"""What one replica sustains at a p99 target on this machine, and the autoscaler settings that follow from it.

`measure` runs the package in the very ASGI app a replica runs (`serve.app.build_app`: routes, key check, batcher,
model), in this process, with the runtime's threads set to the replica's CPUs, and drives it closed-loop: C clients
each sending a V2 request as soon as the last one is answered, for C = 1, 2, 4, ... in bounded steps. The sweep
stops at the first C whose p99 passes the target (or whose throughput no longer grows). The largest C that held the
target is the replica's capacity in requests in flight; its throughput is the replica's requests per second.

`autoscaling` turns that into Ray's and the Kubernetes autoscalers' settings: the target of in-flight requests per
replica is that C (scale out before a replica passes the point where p99 holds), the minimum and maximum replicas
come from --replicas and --max-replicas (or --peak-rps / capacity), the delays from the replica's measured start
time. The clients share the process (and on a small machine the cores) with the server, so the numbers are a lower
bound of what a replica alone sustains; there is no socket and no proxy in the path.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StageFailed

P99_MS = 100.0  # the default p99 target: a latency an interactive client still takes
LEVELS = (1, 2, 4, 8, 16, 32, 64)
STEP_S = 1.0  # timed seconds per concurrency level; the whole sweep is bounded by len(LEVELS) steps
WARMUP_S = 0.2


@dataclass(frozen=True)
class Level:
    concurrency: int
    rps: float
    p99_ms: float
    errors: int


@dataclass(frozen=True)
class Capacity:
    """One replica's measured capacity: the in-flight requests and throughput at which p99 held the target."""

    p99_target_ms: float
    concurrency: int  # requests in flight at the largest level that held the target (0: none did)
    rps: float
    p99_ms: float
    start_s: float  # load and warm-up of one replica, as measured here
    threads: int
    measured_at: str
    hardware: str
    levels: list[Level] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hardware() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:  # pragma: no cover - not Linux
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def _request_body(signature: Any) -> bytes:
    """A batch-1 V2 JSON request of zeros, from the package's signature (dynamic dims as 1)."""
    import json

    import numpy as np

    from ..serve.tensors import v2_datatype

    inputs = []
    for spec in signature.inputs:
        shape = [1 if d is None or d < 0 else int(d) for d in spec.shape]
        dtype = np.dtype(spec.dtype)
        inputs.append({"name": spec.name, "shape": shape, "datatype": v2_datatype(dtype),
                       "data": np.zeros(shape, dtype).ravel().tolist()})
    return json.dumps({"inputs": inputs}).encode()


async def _level(client: Any, url: str, body: bytes, concurrency: int, step_s: float) -> tuple[list[float], int]:
    """`concurrency` closed-loop clients for WARMUP_S untimed and `step_s` timed: the latencies and the non-200s."""
    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}
    warm_until = time.perf_counter() + WARMUP_S
    stop_at = warm_until + step_s

    async def one_client() -> None:
        nonlocal errors
        while (now := time.perf_counter()) < stop_at:
            response = await client.post(url, content=body, headers=headers)
            if now >= warm_until:
                latencies.append(time.perf_counter() - now)
                errors += response.status_code != 200

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return latencies, errors


async def _sweep(package_dir: Path, p99_ms: float, max_batch_size: int, threads: int,
                 levels: tuple[int, ...], step_s: float) -> tuple[list[Level], float, str]:
    import httpx
    import numpy as np

    from ..serve.app import build_app
    from ..serve.config import ServeConfig

    started = time.perf_counter()
    app = build_app(ServeConfig(package_dir=package_dir, max_batch_size=max_batch_size, threads=threads,
                                quiet=True, max_queue=max(256, 4 * max(levels))))
    await app.startup()
    start_s = time.perf_counter() - started
    model = app.model
    assert model is not None
    body = _request_body(model.signature)
    url = f"/v2/models/{model.name}/infer"
    results: list[Level] = []
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                                     base_url="http://replica") as client:
            for concurrency in levels:
                latencies, errors = await _level(client, url, body, concurrency, step_s)
                if not latencies:
                    break
                level = Level(concurrency, round(len(latencies) / step_s, 1),
                              round(float(np.percentile(latencies, 99)) * 1000, 2), errors)
                results.append(level)
                if level.errors or level.p99_ms > p99_ms:
                    break
                if len(results) > 1 and level.rps < results[-2].rps * 1.05:
                    break  # saturated: more clients only queue
    finally:
        await app.shutdown()
    return results, start_s, model.name


def measure(package_dir: Path, p99_ms: float = P99_MS, max_batch_size: int = 32, cpus: float = 1.0,
            levels: tuple[int, ...] = LEVELS, step_s: float = STEP_S) -> Capacity:
    """Sweep closed-loop concurrency against the package's own server app; see the module docstring."""
    threads = max(1, math.ceil(cpus))
    try:
        found, start_s, _ = asyncio.run(_sweep(package_dir, p99_ms, max_batch_size, threads, levels, step_s))
    except (OSError, RuntimeError) as exc:
        raise StageFailed("deploy", f"measuring one replica's capacity failed: {exc}; pass --no-measure to "
                                    f"write the autoscaler's defaults instead.") from exc
    held = [level for level in found if level.p99_ms <= p99_ms and not level.errors]
    best = max(held, key=lambda level: level.rps) if held else None
    return Capacity(p99_target_ms=p99_ms, concurrency=best.concurrency if best else 0,
                    rps=best.rps if best else 0.0, p99_ms=best.p99_ms if best else found[0].p99_ms if found else 0.0,
                    start_s=round(start_s, 2), threads=threads,
                    measured_at=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                    hardware=hardware(), levels=found)


@dataclass(frozen=True)
class Autoscaling:
    """The autoscaler's settings, one source for Ray's autoscaling_config and the Kubernetes HPA and KEDA."""

    min_replicas: int
    max_replicas: int
    target_ongoing: int  # requests in flight per replica the autoscaler holds
    upscale_delay_s: float
    downscale_delay_s: float
    capacity: Capacity | None  # None: not measured (--no-measure), the targets are defaults

    def comment(self, prefix: str = "# ") -> str:
        """The derivation, as comment lines (Ray config) or text (the CLI's output)."""
        c = self.capacity
        if c is None:
            return (f"{prefix}Not measured (--no-measure): target {self.target_ongoing} requests in flight per "
                    f"replica is a default, not this model's capacity.\n")
        if c.concurrency == 0:
            return (f"{prefix}Measured {c.measured_at} on {c.hardware}: no concurrency held p99 <= "
                    f"{c.p99_target_ms:g} ms (1 client: p99 {c.p99_ms:g} ms); target 1 request per replica.\n")
        return (f"{prefix}Measured {c.measured_at} on {c.hardware}, {c.threads} runtime thread(s) per replica:\n"
                f"{prefix}one replica holds p99 {c.p99_ms:g} ms <= {c.p99_target_ms:g} ms at {c.concurrency} "
                f"requests in flight, {c.rps:g} req/s (closed-loop sweep "
                + ", ".join(f"{lv.concurrency}: {lv.rps:g} req/s p99 {lv.p99_ms:g} ms" for lv in c.levels)
                + f");\n{prefix}so the target is {self.target_ongoing} in flight per replica; "
                  f"a replica starts in {c.start_s:g} s here.\n")


def autoscaling(capacity: Capacity | None, min_replicas: int, max_replicas: int | None, peak_rps: float | None,
                upscale_delay_s: float | None, downscale_delay_s: float | None,
                default_target: int = 2) -> Autoscaling:
    """Settings from a measured capacity (or defaults): see the module docstring for the rules."""
    target = max(1, capacity.concurrency) if capacity is not None else default_target
    if max_replicas is None:
        if peak_rps is not None and capacity is not None and capacity.rps > 0:
            max_replicas = math.ceil(peak_rps / capacity.rps)
        else:
            max_replicas = min_replicas * 4
    max_replicas = max(max_replicas, min_replicas)
    # Adding a replica helps only after it has started: wait at least about that long before adding another.
    start_s = capacity.start_s if capacity is not None else 10.0
    up = upscale_delay_s if upscale_delay_s is not None else max(10.0, round(3 * start_s))
    down = downscale_delay_s if downscale_delay_s is not None else max(60.0, 10 * up)
    return Autoscaling(min_replicas, max_replicas, target, up, down, capacity)


CAPACITY_FILE = "capacity.json"


def plan(package_dir: Path, options: Any, out: Path, autoscaled: bool) -> Autoscaling:
    """The autoscaling settings for a deployment, measured when `autoscaled` and options.measure; the derivation
    is also written to `out/capacity.json`, which the CLI shows."""
    import json

    from .ray import cpus

    capacity = None
    if autoscaled and options.measure:
        capacity = measure(package_dir, options.p99_ms, options.max_batch_size, cpus(options.cpu))
    settings = autoscaling(capacity, options.replicas, options.max_replicas, options.peak_rps,
                           options.upscale_delay_s, options.downscale_delay_s)
    if autoscaled:
        record = {**asdict(settings), "derivation": settings.comment(prefix="").strip().splitlines()}
        (out / CAPACITY_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return settings
