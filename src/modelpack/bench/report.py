"""The HTML report: one self-contained file (inline SVG and CSS, no scripts, no network).

Charts: size per stage (raw and compressed), latency distribution per model and batch
size, accuracy per stage; then the benchmark's numbers and the lineage table. Every
string from the manifest is escaped: a package is data, not markup.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from ..package.manifest import Manifest

# One colour per chart, so a screenshot test can tell that each chart was drawn. Accuracy is a neutral
# purple: red would say "bad" about a number that may be fine.
RAW, COMPRESSED, LATENCY, ACCURACY = "#4c78a8", "#f58518", "#54a24b", "#7b4fa6"
WIDTH = 900
LABEL_W = 190
CHAR_W = 7.0  # a generous width per character at 11-12 px, to reserve room so no label is cut off


def _room(labels: list[str]) -> float:
    """Pixels to keep free right of a chart's plot for its longest value label."""
    return max((len(label) for label in labels), default=0) * CHAR_W + 12


def latest_benchmark(manifest: Manifest) -> dict[str, Any] | None:
    """The benchmark recorded by `modelpack benchmark`, else the last benchmark stage's."""
    if "benchmark" in manifest:
        found: dict[str, Any] = manifest["benchmark"]
        return found
    for record in reversed(manifest["lineage"]["stages"]):
        if record["name"] == "benchmark" and "benchmark" in record["metrics"]:
            recorded: dict[str, Any] = record["metrics"]["benchmark"]
            return recorded
    return None


def _kb(n: float) -> str:
    return f"{n / 1024:,.1f} KB" if n < 2**20 else f"{n / 2**20:,.2f} MB"


def _steps(manifest: Manifest) -> list[tuple[str, dict[str, Any]]]:
    lineage = manifest["lineage"]
    steps = [("source", lineage["source"].get("metrics", {}) | {"size_bytes": lineage["source"].get("size")})]
    for i, rec in enumerate(lineage["stages"], 1):
        suffix = " (skipped)" if rec.get("status", "ok") != "ok" else ""
        steps.append((f"{i}. {rec['name']}{suffix}", rec["metrics"]))
    return steps


def _svg(height: int, body: str, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">{body}</svg>')


def _text(x: float, y: float, s: str, anchor: str = "start", size: int = 12, fill: str = "#222") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}">'
            f"{escape(s)}</text>")


def size_chart(manifest: Manifest) -> str:
    steps = [(label, m) for label, m in _steps(manifest) if m.get("size_bytes")]
    if not steps:
        return "<p>No sizes were recorded.</p>"
    top = max(max(m["size_bytes"], m.get("compressed_bytes") or 0) for _, m in steps)
    plot = WIDTH - LABEL_W - _room([_kb(v) for _, m in steps for v in (m["size_bytes"], m.get("compressed_bytes"))
                                    if v is not None])
    bar, gap = 14, 12
    parts, y = [], 28
    parts.append(f'<rect x="{LABEL_W}" y="6" width="12" height="12" fill="{RAW}"/>' + _text(LABEL_W + 18, 16, "raw"))
    parts.append(f'<rect x="{LABEL_W + 70}" y="6" width="12" height="12" fill="{COMPRESSED}"/>'
                 + _text(LABEL_W + 88, 16, "compressed (as the archive stores it)"))
    for label, m in steps:
        parts.append(_text(LABEL_W - 8, y + bar + 4, label, "end"))
        for value, colour, dy in ((m["size_bytes"], RAW, 0), (m.get("compressed_bytes"), COMPRESSED, bar)):
            if value is None:
                continue
            w = max(plot * value / top, 1.0)
            parts.append(f'<rect x="{LABEL_W}" y="{y + dy}" width="{w:.1f}" height="{bar - 2}" fill="{colour}"/>')
            parts.append(_text(LABEL_W + w + 6, y + dy + bar - 4, _kb(value), size=11, fill="#555"))
        y += 2 * bar + gap
    return _svg(y + 4, "".join(parts), "size per stage")


def accuracy_chart(manifest: Manifest) -> str:
    """A dot per step on a labelled axis. The axis is zoomed to the values, so the chart draws dots, not bars:
    a bar's length would claim a size the zoomed axis does not have."""
    steps = [(label, m) for label, m in _steps(manifest) if m.get("accuracy") is not None]
    if not steps:
        return "<p>No accuracy was recorded: run optimize with <code>--eval-data</code> holding labels.</p>"
    from ..summary import points

    low = min(m["accuracy"] for _, m in steps)
    floor = max(0.0, math.floor(low - max(1.0, (100 - low) * 0.5)))
    notes = [f"{m['accuracy']:.2f}%" + (f" ({points(0.0 - m['accuracy_drop'])})" if m.get("accuracy_drop") is not None
                                        else "") for _, m in steps]
    plot = WIDTH - LABEL_W - _room(notes)
    span = max(100 - floor, 1e-9)

    def x(value: float) -> float:
        return float(LABEL_W + plot * (value - floor) / span)

    row = 24
    bottom = 30 + len(steps) * row
    tick = 10 ** math.floor(math.log10(span)) if span >= 1 else 0.1
    tick = tick / 2 if span / tick < 4 else tick
    parts = [_text(LABEL_W, 14, f"top-1 accuracy, % (the axis runs from {floor:g}% to 100%; dots, not bars)",
                   size=11, fill="#555")]
    value = floor
    while value <= 100 + 1e-9:
        parts.append(f'<line x1="{x(value):.1f}" y1="22" x2="{x(value):.1f}" y2="{bottom}" stroke="#e6e6e6"/>'
                     + _text(x(value), bottom + 14, f"{value:g}", "middle", 11, "#555"))
        value += tick
    y = 30
    for (label, m), note in zip(steps, notes):
        mid = y + row / 2
        parts.append(_text(LABEL_W - 8, mid + 4, label, "end"))
        parts.append(f'<line x1="{LABEL_W}" y1="{mid}" x2="{x(m["accuracy"]):.1f}" y2="{mid}" stroke="#ccc" '
                     'stroke-dasharray="2 3"/>')
        parts.append(f'<circle cx="{x(m["accuracy"]):.1f}" cy="{mid}" r="8" fill="{ACCURACY}"/>')
        parts.append(_text(x(m["accuracy"]) + 14, mid + 4, note, size=11, fill="#555"))
        y += row
    return _svg(bottom + 22, "".join(parts), "accuracy per stage")


def latency_chart(bench: dict[str, Any]) -> str:
    """Box plots on a log axis: whiskers p5-p99, box p25-p75, a tick at the median."""
    batches = sorted({row["batch_size"] for t in bench["targets"] for row in t["latency"]})
    rows = [(t, row) for bs in batches for t in bench["targets"] for row in t["latency"] if row["batch_size"] == bs]
    lows = [row["quantiles_ms"][1] for _, row in rows] + [row["min_ms"] for _, row in rows]
    highs = [row["p99_ms"] for _, row in rows]
    lo = 10 ** math.floor(math.log10(max(min(lows), 1e-4)))
    hi = 10 ** math.ceil(math.log10(max(max(highs), lo * 10)))
    plot = WIDTH - LABEL_W - _room([f"p50 {row['p50_ms']:.3g} · p99 {row['p99_ms']:.3g} ms" for _, row in rows])

    def x(v: float) -> float:
        return LABEL_W + plot * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    parts, y, h = [], 30, 16
    decade = lo
    while decade <= hi * 1.0001:
        parts.append(f'<line x1="{x(decade):.1f}" y1="22" x2="{x(decade):.1f}" y2="{22 + len(rows) * (h + 8) + 4}" '
                     f'stroke="#ddd"/>' + _text(x(decade), 16, f"{decade:g} ms", "middle", 11, "#555"))
        decade *= 10
    for target, row in rows:
        q = row["quantiles_ms"]  # 0, 5, ..., 100
        p5, p25, p50, p75, p99 = q[1], q[5], q[10], q[15], row["p99_ms"]
        label = f"{target['name']} @ batch {row['batch_size']}"
        mid = y + h / 2
        parts.append(_text(LABEL_W - 8, mid + 4, label, "end"))
        parts.append(f'<line x1="{x(p5):.1f}" y1="{mid}" x2="{x(p99):.1f}" y2="{mid}" stroke="{LATENCY}" '
                     f'stroke-width="2"/>')
        parts.append(f'<rect x="{x(p25):.1f}" y="{y}" width="{max(x(p75) - x(p25), 2):.1f}" height="{h}" '
                     f'fill="{LATENCY}" fill-opacity="0.85"/>')
        parts.append(f'<line x1="{x(p50):.1f}" y1="{y - 2}" x2="{x(p50):.1f}" y2="{y + h + 2}" stroke="#111" '
                     f'stroke-width="2"/>')
        parts.append(_text(x(p99) + 6, mid + 4, f"p50 {p50:.3g} · p99 {p99:.3g} ms", size=11, fill="#555"))
        y += h + 8
    return _svg(y + 6, "".join(parts), "latency distribution")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def lineage_table(manifest: Manifest, defaults: Mapping[str, Mapping[str, Any]]) -> str:
    """Each step; of its parameters, only those that differ from the stage's defaults (the ones it used)."""
    from ..summary import changed_params

    src = manifest["lineage"]["source"]
    sm = src.get("metrics", {})
    rows = [("source", src["format"], "-", _kb(src["size"]) if src.get("size") else "-",
             _kb(sm["compressed_bytes"]) if sm.get("compressed_bytes") else "-", _fmt(sm.get("accuracy")),
             src["path"])]
    for rec in manifest["lineage"]["stages"]:
        m = rec["metrics"]
        params = ", ".join(f"{k}={v}" for k, v in changed_params(rec, defaults).items())
        rows.append((rec["name"] + ("" if rec.get("status", "ok") == "ok" else f" ({rec['status']})"),
                     f"{rec.get('input_format', '?')} → {rec.get('output_format', '?')}", f"{rec['duration_s']:.2f} s",
                     _kb(m["size_bytes"]) if m.get("size_bytes") else "-",
                     _kb(m["compressed_bytes"]) if m.get("compressed_bytes") else "-", _fmt(m.get("accuracy")), params))
    return _table(("step", "formats", "time", "raw", "compressed", "accuracy %", "parameters"), rows)


def bench_tables(bench: dict[str, Any]) -> str:
    from ..summary import faster_ratio

    lat = [(t["name"], row["batch_size"], _fmt(row["p50_ms"]), _fmt(row["p90_ms"]), _fmt(row["p99_ms"]),
            f"{row['mean_ms']:.4g} ± {row['std_ms']:.2g}", f"{row['throughput']:.0f}",
            "baseline" if t["baseline"] else faster_ratio(row.get("latency_ratio")),
            f"{row['round_spread'] * 100:.1f}%" + (" noisy" if row["noisy"] else ""))
           for t in bench["targets"] for row in t["latency"]]
    models = [(t["name"], t["runtime"], t["path"], _fmt(t["load_ms"]), _fmt(t.get("peak_rss_mb")),
               _kb(t["size_bytes"]), _kb(t["compressed_bytes"]), _fmt(t.get("accuracy")), _fmt(t.get("top1_agreement")))
              for t in bench["targets"]]
    gates = bench.get("gates") or []
    out = _table(("model", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± std", "rows/s", "p50 vs baseline",
                  "round spread"), lat)
    out += _table(("model", "runtime", "path", "load ms", "peak RSS MiB", "raw", "compressed", "accuracy %",
                   "top-1 agreement %"), models)
    if gates:
        out += _table(("gate", "model", "batch", "value", "result"),
                      [(g["gate"], g["model"], _fmt(g["batch_size"]), _fmt(g["value"]), "pass" if g["passed"] else "FAIL")
                       for g in gates])
    return out


CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:960px;color:#222}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #eee}
.meta{color:#666} table{border-collapse:collapse;margin:8px 0 16px;font-size:12.5px}
th,td{border:1px solid #e3e3e3;padding:3px 8px;text-align:left} th{background:#f6f6f6}
.warn{color:#a15c00} code{background:#f3f3f3;padding:0 3px}
.headline{font-size:17px;font-weight:600;margin:8px 0 4px}
"""


def render(manifest: Manifest, stage_defaults: Mapping[str, Mapping[str, Any]]) -> str:
    """The HTML report; `stage_defaults` (`stages.registry.defaults_of`) says which parameters were changed."""
    from ..summary import optimize_headline

    bench = latest_benchmark(manifest)
    headline = optimize_headline(dict(manifest)) or "no measurements recorded"
    archive = manifest.get("archive", {})
    latency = (latency_chart(bench) + bench_tables(bench)) if bench else (
        "<p>No benchmark recorded yet: run <code>modelpack benchmark PKG</code>, then the report again.</p>")
    warnings = "".join(f'<p class="warn">{escape(w)}</p>' for w in (bench or {}).get("warnings", []))
    settings = ""
    if bench:
        s = bench["settings"]
        settings = (f'<p class="meta">Baseline: {escape(bench["baseline"])}; data: {escape(str(bench["data"]))}; '
                    f'batch sizes {escape(str(s["batch_sizes"]))}, {s["repeats"]} interleaved rounds; measured '
                    f'{escape(bench["started_at"])} on {escape(str(bench["host"].get("platform")))}, '
                    f'{bench["host"].get("cpus")} CPUs.</p>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modelpack report: {escape(manifest['name'])}</title>
<style>{CSS}</style></head><body>
<h1>{escape(manifest['name'])} <span class="meta">version {escape(manifest['version'])}</span></h1>
<p class="headline" id="headline">{escape(headline)} <span class="meta">(against {escape(
    str(manifest['lineage']['source']['path']))})</span></p>
<p class="meta">Built {escape(manifest['created_at'])} by modelpack {escape(manifest['created_by']['modelpack'])}.
Artifacts: {escape(', '.join(a['format'] for a in manifest['artifacts']))}.
Archive: {escape(str(archive.get('compression', 'deflate')))}{
    f", {_kb(archive['raw_bytes'])} raw, {_kb(archive['compressed_bytes'])} compressed" if 'raw_bytes' in archive else ''}.</p>
<h2>Size per stage</h2>
<div class="chart" id="size-chart">{size_chart(manifest)}</div>
<h2>Latency distribution per model and batch size</h2>
{settings}{warnings}
<div class="chart" id="latency-chart">{latency}</div>
<h2>Accuracy per stage</h2>
<div class="chart" id="accuracy-chart">{accuracy_chart(manifest)}</div>
<h2>Lineage</h2>
{lineage_table(manifest, stage_defaults)}
</body></html>
"""
