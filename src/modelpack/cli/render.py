"""Presentation: rich tables on stdout, progress on stderr, JSON for machines."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import summary

# The commands' vocabulary lives in modelpack.summary (the report speaks it too); here under the same names.
faster, faster_ratio, smaller, points = summary.faster, summary.faster_ratio, summary.smaller, summary.points
benchmark_headline, optimize_headline = summary.benchmark_headline, summary.optimize_headline
changed_params = summary.changed_params

if TYPE_CHECKING:
    from ..package.manifest import StageRecord



def _width(stream: Any) -> int | None:
    """COLUMNS when set, else the terminal's width; without either (a pipe, a CI log), a wide 150."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if stream.isatty() else 150


out = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
err = Console(stderr=True, highlight=False, width=_width(sys.stderr))


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


def quality_cell(m: Mapping[str, Any]) -> str:
    """Accuracy with its drop, or top-1 agreement when there are no labels."""
    return _quality(m)


def _quality(m: Mapping[str, Any]) -> str:
    if "accuracy" in m:
        drop = m.get("accuracy_drop")
        return f"{m['accuracy']:.2f}%" + (f" ({points(0.0 - drop)})" if drop is not None else "")
    if "top1_agreement" in m:
        return f"agree {m['top1_agreement']:.1f}%"
    return "-"


def _size(m: dict[str, Any], raw: str = "size_bytes", packed: str = "compressed_bytes") -> str:
    if raw not in m:
        return "-"
    if m.get(packed) is None:  # still being measured (a big model's compressed size is settled at the end)
        return human_size(m[raw])
    return f"{human_size(m[raw])} -> {human_size(m[packed])}"


def artifacts_table(artifacts: list[dict[str, Any]]) -> Table:
    rows = []
    for a in artifacts:
        measured = a.get("measured", {})
        parity = a.get("parity", {})
        diff = parity.get("max_abs_diff", measured.get("max_abs_diff"))
        rows.append((a["format"], a["path"], _size({"s": a["size"], "c": a.get("compressed_size")}, "s", "c"),
                     a["sha256"][:12], _quality(measured or parity), fmt_num(diff)))
    return table("Artifacts", ("format", "path", "size -> compressed", "sha256", "accuracy (drop)",
                               "max abs diff"), rows)


# Per-stage metrics worth a glance; everything else stays in the manifest and --json.
HIGHLIGHTS: dict[str, Callable[[Any], str]] = {
    "sparsity": lambda v: f"sparsity {v:.1%}",
    "mode": lambda v: str(v),
    "method": lambda v: str(v),
    "speedup": lambda v: faster(1.0, 1.0 / v) if v else "-",
    "clusters": lambda v: f"{v} clusters",
    "nodes_after": lambda v: f"{v} nodes",
}


def _highlights(name: str, metrics: dict[str, Any]) -> str:
    parts = [fmt(metrics[k]) for k, fmt in HIGHLIGHTS.items() if k in metrics]
    if name == "export":
        parts += [f"{k} diff {fmt_num(v.get('max_abs_diff'))}" for k, v in metrics.items()
                  if isinstance(v, dict) and k in ("onnx", "savedmodel", "tflite", "keras")]
    return ", ".join(parts)


def lineage_table(lineage: dict[str, Any]) -> Table:
    from ..stages import registry

    defaults = registry.defaults_of(lineage)
    src = lineage["source"]
    sm = src.get("metrics", {})
    rows: list[tuple[Any, ...]] = [("source", src["format"], "-", _size(sm), _quality(sm), src["path"])]
    for rec in lineage["stages"]:
        # Rich would read "[skipped]" as markup and print nothing: a dropped stage must be plain to see.
        status = "" if rec.get("status", "ok") == "ok" else f" [yellow]({escape(rec['status'])}: not in the package)[/]"
        params = ", ".join(f"{k}={v}" for k, v in changed_params(rec, defaults).items())
        details = "; ".join(p for p in (_highlights(rec["name"], rec["metrics"]), params) if p)
        rows.append((rec["name"] + status, f"{rec.get('input_format', '?')} -> {rec.get('output_format', '?')}",
                     f"{rec['duration_s']:.2f}s", _size(rec["metrics"]), _quality(rec["metrics"]), details))
    return table("Lineage", ("step", "formats", "time", "size -> compressed", "accuracy (drop)", "details"), rows)


class RichReporter:
    """Per-stage progress with elapsed time, on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._status: Any = None
        self._t0 = time.perf_counter()
        self._label = ""

    def stage_started(self, index: int, total: int, name: str) -> None:
        self._t0 = time.perf_counter()
        self._label = f"[{index}/{total}] {name}"
        if not self.quiet:
            self._status = err.status(f"{self._label} …")
            self._status.start()

    def stage_finished(self, record: StageRecord) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if not self.quiet:
            m = record["metrics"]
            status = "[green]✓[/]" if record.get("status", "ok") == "ok" else "[yellow]skipped[/]"
            err.print(f"{status} {self._label} [dim]{record['duration_s']:.2f}s[/]  {_size(m)}  {_quality(m)}  "
                      f"{escape(_highlights(record['name'], m))}")

    def note(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self._t0
            err.print(f"  [dim]{self._label} +{elapsed:.1f}s {message}[/]")

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
