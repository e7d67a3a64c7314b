"""Two packages' metrics side by side, with the ratio B / A for every number both have (the command line
prints it as "N× faster", "N× smaller" and accuracy in points)."""

from __future__ import annotations

from typing import Any

from ..package.manifest import Manifest
from .report import latest_benchmark


def _flatten(manifest: Manifest) -> dict[str, float]:
    found: dict[str, float] = {}
    archive = manifest.get("archive", {})
    if "raw_bytes" in archive:
        found["package raw bytes"] = archive["raw_bytes"]
        found[f"package compressed bytes ({archive['compression']})"] = archive["compressed_bytes"]
    for entry in manifest["artifacts"]:
        fmt = entry["format"]
        found[f"{fmt} size bytes"] = entry["size"]
        if "compressed_size" in entry:
            found[f"{fmt} compressed bytes"] = entry["compressed_size"]
        quality = entry.get("measured") or entry.get("parity") or {}
        for key in ("accuracy", "top1_agreement", "max_abs_diff"):
            if quality.get(key) is not None:
                found[f"{fmt} {key}"] = quality[key]
    bench = latest_benchmark(manifest)
    if bench:
        for target in bench["targets"]:
            for row in target["latency"]:
                prefix = f"{target['name']} @{row['batch_size']}"
                for key in ("p50_ms", "p99_ms", "throughput"):
                    found[f"{prefix} {key}"] = row[key]
            for key in ("load_ms", "peak_rss_mb"):
                if target.get(key) is not None:
                    found[f"{target['name']} {key}"] = target[key]
    return found


def compare(a: Manifest, b: Manifest) -> list[dict[str, Any]]:
    """Rows of metric, A, B and B/A; a metric only one side has shows '-' on the other."""
    fa, fb = _flatten(a), _flatten(b)
    rows = []
    for key in list(fa) + [k for k in fb if k not in fa]:
        va, vb = fa.get(key), fb.get(key)
        ratio = round(vb / va, 4) if va and vb is not None else None
        rows.append({"metric": key, "a": va, "b": vb, "ratio": ratio})
    return rows
