"""Writing the package, and the background work the run settles before it writes.

A model's archive-compressed size is measured on a worker thread (zlib lets go of the GIL) while the run goes on;
the records hold futures until `settled()` waits for them, just before the manifest is written.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..formats import PACKAGE_NAMES, ModelRef, Repr
from ..package import copy_artifact, digest
from ..package import manifest as mf
from ..package.archive import compressed_size, file_compressed_size
from ..signature import Signature
from .spec import PipelineSpec, default_name


class Sizes:
    """Archive-compressed sizes, each computed once on a worker thread, so that compressing a big model overlaps
    the conversions and measurements that follow."""

    def __init__(self, compression: str) -> None:
        self.compression = compression
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelpack-sizes", initializer=_background)
        self._sizes: dict[tuple[Path, str], Future[int]] = {}

    def future(self, path: Path, compression: str | None = None) -> Future[int]:
        key = (path, compression or self.compression)
        if key not in self._sizes:
            self._sizes[key] = self._pool.submit(compressed_size, *key)
        return self._sizes[key]

    def result(self, path: Path, compression: str | None = None) -> int:
        return self.future(path, compression).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _background() -> None:
    """Set up a worker thread: signals stay with the main thread, and measuring sizes yields to the work.

    Linux delivers a process's SIGINT to any thread that does not block it. Had this thread taken it, the
    main thread would sleep on in a stage and Ctrl-C would wait for the stage to end."""
    import os
    import signal
    import threading

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:  # Linux schedules threads as tasks: a lower priority for this one only
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: the sizes are measured all the same
        pass


def settled(value: Any, wait: bool = True) -> Any:
    """`value` with every Future replaced by its result; with `wait=False`, futures not done yet are left out."""
    if isinstance(value, Future):
        return value.result() if wait or value.done() else None
    if isinstance(value, dict):
        found = {k: settled(v, wait) for k, v in value.items()}
        return {k: v for k, v in found.items() if v is not None or not isinstance(value[k], Future)}
    if isinstance(value, list):
        return [settled(v, wait) for v in value]
    return value


def artifact_view(measured: dict[str, Any]) -> dict[str, Any]:
    """What a package artifact records of its measurement: quality against the source model."""
    keys = ("accuracy", "accuracy_drop", "top1_agreement", "cosine", "exact_match", "max_abs_diff", "outputs")
    return {k: measured[k] for k in keys if k in measured}


def write_package(staging: Path, spec: PipelineSpec, source: ModelRef, signature: Signature,
                  lineage: dict[str, Any], packaged: dict[Repr, tuple[ModelRef, dict[str, Any]]],
                  sizes: Sizes) -> dict[str, Any]:
    """Copy each packaged model into `staging` and write the manifest beside them; returns the manifest."""
    artifacts = [_artifact(staging, rep, *packaged[rep], sizes) for rep in Repr if rep in packaged]
    data = {
        "schema_version": mf.SCHEMA_VERSION,
        "name": spec.name or default_name(source.path),
        "version": spec.model_version,
        "signature": signature.to_dict(),
        "artifacts": artifacts,
        "lineage": lineage,
        "archive": {"compression": sizes.compression,
                    "raw_bytes": sum(a["size"] + sum(f["size"] for f in a.get("files", [])) for a in artifacts),
                    "compressed_bytes": sum(a["compressed_size"] + sum(f["compressed_size"] for f in a.get("files", []))
                                            for a in artifacts)},
        "created_by": mf.created_by(),
        "created_at": mf.now(),
    }
    mf.write(staging / mf.MANIFEST_NAME, data)
    return data


def _artifact(staging: Path, rep: Repr, ref: ModelRef, extra: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """One model copied into the package, and its manifest entry."""
    name = PACKAGE_NAMES[rep]
    if rep is Repr.KERAS and ref.container == "h5":
        name = "model.h5"
    extra_files = copy_artifact(ref.path, staging / name)
    d = digest(staging / name)
    # A plain copy holds the measured bytes, whose compressed size is known by now; a model re-laid out
    # with external data is measured as written.
    entry: dict[str, Any] = {"format": rep.value, "path": name, "size": d.size, "sha256": d.sha256, "kind": d.kind,
                             "compressed_size": file_compressed_size(staging / name, sizes.compression) if extra_files
                             else sizes.result(ref.path)}
    if extra_files:
        listed = []
        for companion in extra_files:
            e = digest(companion)
            listed.append({"path": companion.name, "size": e.size, "sha256": e.sha256,
                           "compressed_size": file_compressed_size(companion, sizes.compression)})
        entry["files"] = listed  # external data: hashed here, so a signature covers every byte loaded
    entry.update(extra)
    return entry
