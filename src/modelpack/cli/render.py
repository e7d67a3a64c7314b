"""Presentation: rich tables on stdout, progress on stderr, JSON for machines."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def human_size(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover


def fmt_num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) < 1e-3 or abs(value) >= 1e6:
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*(fmt_num(c) if not isinstance(c, str) else c for c in row))
    return t


def signature_table(signature: dict[str, Any]) -> Table:
    rows = [(kind, t["name"], t["dtype"], str(t["shape"]))
            for kind, key in (("input", "inputs"), ("output", "outputs")) for t in signature[key]]
    return table("Signature", ("", "name", "dtype", "shape (-1 = dynamic)"), rows)


def artifacts_table(artifacts: list[dict[str, Any]]) -> Table:
    rows = []
    for a in artifacts:
        parity = a.get("parity", {})
        rows.append((a["format"], a["path"], human_size(a["size"]), a["sha256"][:12],
                     fmt_num(parity.get("max_abs_diff")), fmt_num(parity.get("accuracy"))))
    return table("Artifacts", ("format", "path", "size", "sha256", "max abs diff", "accuracy %"), rows)


def lineage_table(lineage: dict[str, Any]) -> Table:
    src = lineage["source"]
    rows: list[tuple[Any, ...]] = [("source", src["format"], "-", src["path"], _metrics_text(src.get("metrics", {})))]
    for rec in lineage["stages"]:
        params = ", ".join(f"{k}={v}" for k, v in rec["params"].items() if v not in (None, [], ""))
        status = "" if rec.get("status", "ok") == "ok" else f" [{rec['status']}]"
        rows.append((rec["name"] + status, f"{rec.get('input_format', '?')} -> {rec.get('output_format', '?')}",
                     f"{rec['duration_s']:.2f}s", params, _metrics_text(rec["metrics"])))
    return table("Lineage", ("step", "formats", "time", "parameters", "metrics"), rows)


SHORT = {"max_abs_diff": "diff", "top1_agreement": "agree%", "accuracy": "acc%"}


def _metrics_text(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{SHORT.get(k, k)} {fmt_num(v)}" for k, v in value.items()
                              if not isinstance(v, (dict, list)))
            parts.append(f"{key}: {inner}")
        elif not isinstance(value, list):
            parts.append(f"{SHORT.get(key, key)} {fmt_num(value)}")
    return "; ".join(parts)


class RichReporter:
    """Per-stage progress with elapsed time, on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._status: Any = None
        self._t0 = 0.0
        self._label = ""

    def stage_started(self, index: int, total: int, name: str) -> None:
        self._t0 = time.perf_counter()
        self._label = f"[{index}/{total}] {name}"
        if not self.quiet:
            self._status = err.status(f"{self._label} …")
            self._status.start()

    def stage_finished(self, record: dict[str, Any]) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if not self.quiet:
            err.print(f"[green]✓[/] {self._label} [dim]{record['duration_s']:.2f}s[/]  {_metrics_text(record['metrics'])}")

    def note(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self._t0
            err.print(f"  [dim]{self._label} +{elapsed:.1f}s {message}[/]")

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
