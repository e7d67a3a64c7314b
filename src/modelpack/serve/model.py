"""The model a server serves: loaded once, checked against the package signature, warmed up."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import random_inputs
from ..errors import RequestError, reason
from ..formats import Repr
from ..package import Package
from ..runtimes import Runner
from ..signature import DYNAMIC, Signature
from .tensors import clip, json_array, v2_datatype

log = logging.getLogger("modelpack.serve")
WARM_UP_FAILED_MS = 1e3  # unknown latency: treat the model as slow (run it off the event loop)

PLATFORMS = {Repr.ONNX: "onnxruntime_onnx", Repr.TFLITE: "tflite", Repr.SAVEDMODEL: "tensorflow_savedmodel",
             Repr.KERAS: "keras"}


@dataclass
class ServedModel:
    name: str
    version: str
    signature: Signature
    runtime: Repr
    runner: Runner
    max_batch_size: int
    load_seconds: float = 0.0
    _dtypes: dict[str, np.dtype] = field(default_factory=dict)
    _axes: dict[str, int | None] = field(default_factory=dict)  # each input's batch axis (None: shared)

    @classmethod
    def load(cls, pkg: Package, runtime: str | None, max_batch_size: int, threads: int | None = None,
             model_bytes: bytes | None = None) -> ServedModel:
        """Load the package's best artifact (or `runtime`'s) once; `model_bytes` loads ONNX from memory."""
        start = time.perf_counter()
        entry = pkg.artifact(runtime)
        rep = Repr(entry["format"])
        runner = pkg.runner(entry=entry, threads=threads, model_bytes=model_bytes)
        model = cls(pkg.name, pkg.version, pkg.signature, rep, runner, max_batch_size,
                    time.perf_counter() - start)
        model._dtypes = {t.name: np.dtype(t.dtype) for t in pkg.signature.inputs}
        model._axes = {t.name: pkg.signature.batch_axis(t.name) for t in pkg.signature.inputs}
        return model

    @property
    def platform(self) -> str:
        return PLATFORMS[self.runtime]

    def warm_up(self, rounds: int = 5) -> float:
        """Run the model at batch 1 and at the largest batch, so the first request is not slow.

        Returns the median batch-1 latency in ms.
        """
        timings = []
        for batch in sorted({1, self.max_batch_size}):
            feeds = random_inputs(self.signature, batch=batch)
            for _ in range(rounds):
                start = time.perf_counter()
                try:
                    self.runner.run(feeds)
                except Exception as exc:  # some models refuse random values (a sample rate of 0): skip warm-up
                    log.warning("warm-up on random inputs failed (%s); the first requests will be slower", reason(exc))
                    return WARM_UP_FAILED_MS
                if batch == 1:
                    timings.append((time.perf_counter() - start) * 1e3)
        return float(np.median(timings))

    def prefer_one_thread(self, rounds: int = 20) -> bool:
        """Switch to a one-thread onnxruntime session when it runs this model faster; True if it switched.

        For a model that takes microseconds, the intra-op pool's wake-ups and spinning cost more than the
        parallel work wins, and the spinning takes CPU from the server's own threads (gRPC's pollers above all).
        Both sessions are timed here, at batch 1 and at the largest batch, rather than guessed from the size."""
        from ..runtimes import OnnxRunner

        runner = self.runner
        if not isinstance(runner, OnnxRunner) or runner.threads is not None or runner.source is None:
            return False
        single = OnnxRunner(runner.source, self.signature, threads=1)
        from ..timing import interleaved_latencies

        total = np.zeros(2)
        for batch in sorted({1, self.max_batch_size}):
            # interleaved, after one warm-up call each (the first call allocates), compared by medians
            pooled, one = interleaved_latencies([runner, single], random_inputs(self.signature, batch=batch),
                                                iterations=rounds, warmup=1)
            total += [float(np.median(pooled)), float(np.median(one))]
        if total[1] < total[0]:
            self.runner = single
            return True
        return False

    def check_version(self, version: str | None) -> None:
        if version is not None and version != self.version:
            from ..errors import NotFound

            raise NotFound(f"model '{self.name}' has no version '{version}' (this server has version {self.version}).")

    def validate(self, feeds: dict[str, np.ndarray]) -> int:
        """Check names, dtypes and shapes against the signature; return the batch size."""
        expected = self.signature.input_names
        unknown = sorted(set(feeds) - set(expected))
        if unknown:
            raise RequestError(f"unknown input '{unknown[0]}'; this model takes {', '.join(expected)}.")
        missing = [n for n in expected if n not in feeds]
        if missing:
            raise RequestError(f"missing input '{missing[0]}'; this model takes {', '.join(expected)}.")
        batch = None
        for spec in self.signature.inputs:
            value = feeds[spec.name]
            if value.dtype != self._dtypes[spec.name]:
                raise RequestError(f"input '{spec.name}': datatype {v2_datatype(value.dtype.name)}, expected "
                                   f"{v2_datatype(spec.dtype)}.")
            if value.ndim != len(spec.shape) or any(d != DYNAMIC and d != v for d, v in zip(spec.shape, value.shape)):
                raise RequestError(f"input '{spec.name}': shape {list(value.shape)}, expected {list(spec.shape)} "
                                   "(-1 = any).")
            axis = self._axes[spec.name]
            if axis is None:
                continue  # shared by every example (a scalar such as a sample rate)
            rows = value.shape[axis]
            if batch is not None and rows != batch:
                raise RequestError(f"input '{spec.name}': batch {rows} differs from the other inputs' {batch}.")
            batch = rows
        if batch == 0:
            raise RequestError("the request holds an empty batch (0 rows).")
        if batch is not None and batch > self.max_batch_size:
            raise RequestError(f"batch of {batch} exceeds the server's --max-batch-size {self.max_batch_size}; "
                               "split the request.")
        return batch or 1

    def check_declared(self, name: Any, shape: Any) -> None:
        """Refuse a batch over --max-batch-size from a declared shape alone, before any data is converted.

        Converting a 300,000-row JSON array costs seconds of CPU; its shape says it will be refused anyway.
        Anything not recognisable here is left to the full checks that follow."""
        if not isinstance(name, str) or name not in self._dtypes or not isinstance(shape, list) \
                or not all(type(d) is int for d in shape):
            return
        axis = self._axes[name]
        if axis is not None and axis < len(shape) and shape[axis] > self.max_batch_size:
            raise RequestError(f"input '{name}': batch of {shape[axis]} exceeds the server's --max-batch-size "
                               f"{self.max_batch_size}; split the request.")

    def check_rows(self, rows: Any, name: str | None = None) -> None:
        """The same early refusal for the row formats (TF Serving, /predict): a list's length is its batch.

        With `name`, `rows` is that input's value, and counts only if it is nested as deep as the input's
        rank (a single example without its batch dimension is not a batch)."""
        if not isinstance(rows, list) or len(rows) <= self.max_batch_size or not self.signature.simple_batch:
            return
        if name is not None:
            spec = next((t for t in self.signature.inputs if t.name == name), None)
            depth, item = 0, rows
            while isinstance(item, list) and item:
                depth, item = depth + 1, item[0]
            if spec is None or depth != len(spec.shape):
                return
        raise RequestError(f"batch of {len(rows)} exceeds the server's --max-batch-size {self.max_batch_size}; "
                           "split the request.")

    def metadata(self) -> dict[str, Any]:
        """V2 model metadata, from the package signature (-1 marks dynamic dimensions)."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [{"name": t.name, "datatype": v2_datatype(t.dtype), "shape": list(t.shape)}
                       for t in self.signature.inputs],
            "outputs": [{"name": t.name, "datatype": v2_datatype(t.dtype), "shape": list(t.shape)}
                        for t in self.signature.outputs],
        }

    def coerce_inputs(self, value: Any, field: str, reject_unknown: bool = True) -> dict[str, np.ndarray]:
        """The inputs of a JSON request field (TF Serving's 'inputs', /predict's 'input_data'): an object keyed
        by input name, or, for a one-input model, that input's value alone. Oversized batches are refused
        before any value is converted."""
        names = self.signature.input_names
        if isinstance(value, dict):
            extra = sorted(set(value) - set(names)) if reject_unknown else []
            if extra:
                raise RequestError(f"unknown input {clip(extra[0])}; this model takes {', '.join(names)}.")
            missing = next((n for n in names if n not in value), None)
            if missing is not None:
                raise RequestError(f"missing input '{missing}'; this model takes {', '.join(names)}.")
            for name in names:
                self.check_rows(value[name], name)
            return {n: self.coerce(n, value[n]) for n in names}
        if len(names) == 1:
            self.check_rows(value, names[0])
            return {names[0]: self.coerce(names[0], value)}
        raise RequestError(f"'{field}' must be an object keyed by input name ({', '.join(names)}).")

    def coerce(self, name: str, value: Any) -> np.ndarray:
        """A JSON value for input `name` as an array of the expected dtype (TF Serving and /predict formats)."""
        dtype = self._dtypes.get(name)
        if dtype is None:
            raise RequestError(f"unknown input '{name}'; this model takes {', '.join(self.signature.input_names)}.")
        return json_array(value, dtype, f"input '{name}'")
