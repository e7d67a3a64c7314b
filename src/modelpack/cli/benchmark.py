"""`modelpack benchmark`, `report` and `compare`: measure packages, gate CI on them, show them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..bench.measure import BenchmarkRecord
    from ..package import Package
    from ..package.manifest import Manifest

from ..errors import GateFailed, UsageError
from . import render, want_json


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(path_type=Path),
              help="Model to compare against.  [default: the package's original model, when it is still there]")
@click.option("--runtime", "formats", multiple=True,
              help="Measure only this artifact: onnx, tflite, savedmodel or keras (repeatable).")
@click.option("--eval-data", type=click.Path(path_type=Path),
              help="An .npz (x, and y for accuracy) to time on and to measure accuracy and fidelity with.")
@click.option("--batch-sizes", default="1", show_default=True, help="Comma-separated batch sizes, e.g. 1,8,32.")
@click.option("--threads", type=click.IntRange(1, 256), help="Intra-op threads of each runtime.")
@click.option("--duration", type=click.FloatRange(0.01, 3600), help="Timed seconds per model and batch size. "
              "[default: 1]")
@click.option("--iterations", type=click.IntRange(1, 10_000_000), help="Timed calls per model and batch size, "
              "instead of --duration.")
@click.option("--repeats", type=click.IntRange(2, 1000), default=5, show_default=True,
              help="Rounds the timed calls are split into, interleaving the models; their spread flags noise.")
@click.option("--warmup", type=click.IntRange(0, 100000), default=10, show_default=True,
              help="Untimed calls per model and batch size first.")
@click.option("--no-memory", is_flag=True, help="Skip peak memory (measured in one fresh process per model).")
@click.option("--fail-if", multiple=True, metavar="EXPR",
              help="Fail (exit 1) when EXPR holds, e.g. 'p99_ms > 20', 'accuracy_drop > 0.5', 'onnx.size_mb > 5'. "
                   "Repeatable.")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Store the results in the package's manifest (package directories only).")
@click.option("--unsafe-load", is_flag=True, help="Allow Keras Lambda layers (runs code from the model file).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def benchmark(ctx: click.Context, target: Path, baseline: Path | None, formats: tuple[str, ...],
              eval_data: Path | None, batch_sizes: str, threads: int | None, duration: float | None,
              iterations: int | None, repeats: int, warmup: int, no_memory: bool, fail_if: tuple[str, ...],
              record: bool, unsafe_load: bool, as_json: bool) -> None:
    """Measure latency, throughput, load time, memory, size and accuracy of a package or model."""
    from ..bench import gates
    from ..bench.measure import BenchSpec
    from ..bench.run import BenchRequest, parse_batch_sizes, run
    from ..bench.targets import check_formats

    if as_json:
        want_json(ctx)
    if duration is not None and iterations is not None:
        raise UsageError("--duration and --iterations both set: give one.")
    gates.parse_all(fail_if)  # a bad gate is a usage error before anything is measured
    spec = BenchSpec(batch_sizes=parse_batch_sizes(batch_sizes), threads=threads, duration_s=duration,
                     iterations=iterations, repeats=repeats, warmup=warmup, memory=not no_memory,
                     safe=not unsafe_load)
    request = BenchRequest(target, spec, baseline, check_formats(formats), eval_data, fail_if, record)
    with render.err.status("benchmark …") as status:
        result = run(request, progress=lambda message: status.update(f"benchmark: {message}"))
    failed = gates.failures(result["gates"])
    if as_json:
        render.print_json({"status": "failed" if failed else "ok", **result, "failed_gates": failed})
    else:
        show(result)
        render.out.print(f"[bold]{render.benchmark_headline(result)}[/]")
    for message in result["notes"] + result["warnings"]:
        render.err.print(f"[yellow]note:[/] {message}")
    if failed:
        if as_json:
            render.err.print("[red]failed gates:[/] " + "; ".join(failed))
            ctx.exit(1)
        raise GateFailed(f"{len(failed)} gate check(s) failed: " + "; ".join(failed))


def show(result: BenchmarkRecord) -> None:
    base = result["baseline"]
    rows: list[tuple[Any, ...]] = []
    for rec in result["targets"]:
        for lat in rec["latency"]:
            ratio = lat.get("latency_ratio")
            rows.append((rec["name"] + ("*" if rec["name"] == base else ""), str(lat["batch_size"]),
                         f"{lat['p50_ms']:.3f}", f"{lat['p90_ms']:.3f}", f"{lat['p99_ms']:.3f}",
                         f"{lat['mean_ms']:.3f}±{lat['std_ms']:.3f}", f"{lat['throughput']:.0f}",
                         "baseline" if rec["name"] == base else render.faster_ratio(ratio),
                         ("[yellow]noisy [/]" if lat["noisy"] else "") + f"{lat['round_spread'] * 100:.1f}%"))
    render.out.print(render.table(f"Latency, ms per call (* baseline; {result['data']})",
                                  ("model", "batch", "p50", "p90", "p99", "mean±std", "rows/s", "vs base",
                                   "spread"), rows))
    rows = []
    for rec in result["targets"]:
        rows.append((rec["name"], rec["runtime"], f"{rec['load_ms']:.1f}",
                     "-" if "peak_rss_mb" not in rec else f"{rec['peak_rss_mb']:.0f}",
                     render.human_size(rec["size_bytes"]), render.human_size(rec["compressed_bytes"]),
                     "baseline" if rec["baseline"] else render.smaller(1.0, rec.get("size_ratio")),
                     render.quality_cell(rec)))
    render.out.print(render.table("Models", ("model", "runtime", "load ms", "peak MiB", "size", "compressed",
                                             "vs base", "accuracy"), rows))
    if result["gates"]:
        render.out.print(render.table("Gates", ("gate", "model", "batch", "value", "result"), [
            (c["gate"], c["model"], "-" if c["batch_size"] is None else str(c["batch_size"]), f"{c['value']:g}",
             "[green]pass[/]" if c["passed"] else "[red]FAIL[/]") for c in result["gates"]]))


@click.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The .html file to write.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def report(ctx: click.Context, package: Path, output: Path, force: bool, as_json: bool) -> None:
    """Write a self-contained HTML report: sizes, latency, accuracy and lineage of a package."""
    from ..atomic import atomic_file
    from ..bench.report import render as render_html
    from ..package import open_any
    from ..stages import registry

    if as_json:
        want_json(ctx)
    if output.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"-o '{output}': the report is HTML; name it with .html.")
    with open_any(package, need="manifest") as pkg:
        html = render_html(pkg.manifest, registry.defaults_of(pkg.manifest["lineage"]))
    with atomic_file(output, force=force) as tmp:
        tmp.write_text(html, encoding="utf-8")
    if as_json:
        render.print_json({"status": "ok", "output": str(output), "bytes": len(html.encode())})
        return
    render.out.print(f"[bold green]report:[/] {output} ({render.human_size(len(html.encode()))})")


@click.command()
@click.argument("package_a", type=click.Path(path_type=Path))
@click.argument("package_b", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def compare(ctx: click.Context, package_a: Path, package_b: Path, as_json: bool) -> None:
    """Show two packages' metrics side by side, with the ratio B / A."""
    from ..bench.compare import compare as compare_manifests
    from ..package import open_any

    if as_json:
        want_json(ctx)
    with open_any(package_a) as a, open_any(package_b) as b:
        codec = a.manifest.get("archive", {}).get("compression", "deflate")
        rows = compare_manifests(_with_codec(a, codec), _with_codec(b, codec))
    if as_json:
        render.print_json({"status": "ok", "a": str(package_a), "b": str(package_b), "metrics": rows})
        return
    render.out.print(render.table(f"A = {package_a}, B = {package_b} (compressed sizes in {codec})",
                                  ("metric", "A", "B", "B against A"),
                                  [(r["metric"], *_compared(r["metric"], r["a"], r["b"])) for r in rows]))


def _compared(metric: str, a: float | None, b: float | None) -> tuple[str, str, str]:
    """Two values as people read them, and how B compares in the one convention modelpack prints."""
    if metric.endswith("bytes"):
        return render.human_size(a), render.human_size(b), render.smaller(a, b)
    if metric.endswith(("accuracy", "top1_agreement")):
        diff = None if a is None or b is None else b - a
        return (f"{a:.2f}%" if a is not None else "-", f"{b:.2f}%" if b is not None else "-", render.points(diff))
    cell = (render.fmt_num(a), render.fmt_num(b))
    if metric.endswith("_ms"):
        return (*cell, render.faster(a, b))
    if metric.endswith("throughput"):
        return (*cell, render.faster(b, a))
    if metric.endswith("_mb"):
        return (*cell, render.smaller(a, b))
    return (*cell, "-")


def _with_codec(pkg: Package, codec: str) -> Manifest:
    """The package's manifest with every compressed size as `codec` would store it, so two packages
    built with different archive codecs compare on one codec."""
    import copy

    from ..package.archive import compressed_size

    manifest = pkg.manifest
    if manifest.get("archive", {}).get("compression", "deflate") == codec:
        return manifest
    manifest = copy.deepcopy(manifest)
    total = 0
    for entry in manifest["artifacts"]:
        entry["compressed_size"] = compressed_size(pkg.path_of(entry), codec)
        total += entry["compressed_size"]
    manifest["archive"] = {**manifest.get("archive", {}), "compression": codec, "compressed_bytes": total}
    return manifest
