"""The `benchmark` stage: time the model the pipeline holds against the source model, and gate on it."""

from __future__ import annotations

from typing import Any

import click

from ..errors import GateFailed
from ..formats import ModelRef, Repr
from . import Params, Stage, StageContext, StageResult, option


class BenchmarkParams(Params):
    batch_sizes: str = option(str, default="1", help="Comma-separated batch sizes, e.g. 1,8,32.")
    threads: int | None = option(click.IntRange(1, 256), help="Intra-op threads of each runtime.")
    duration: float = option(click.FloatRange(0.01, 3600), default=1.0, help="Timed seconds per model and batch size.")
    repeats: int = option(click.IntRange(2, 1000), default=5, help="Interleaved rounds; their spread flags noise.")
    memory: bool = option(
        bool, default=False, is_flag=True, help="Also measure peak memory, in one fresh process per model.")
    fail_if: tuple[str, ...] = option(
        str, multiple=True, help="Fail the run when this holds, e.g. 'p99_ms > 20'. Repeatable.")


class BenchmarkStage(Stage[BenchmarkParams]):
    params_type = BenchmarkParams
    name = "benchmark"
    help = ("Measure latency, throughput, load time, memory, size and accuracy of the model so far against the "
            "source model, interleaved; --fail-if gates fail the run.")
    accepts = tuple(Repr)

    def plan(self, params: BenchmarkParams, rep: Repr) -> Repr:
        from ..bench import gates
        from ..bench.run import parse_batch_sizes

        parse_batch_sizes(params.batch_sizes)
        gates.parse_all(params.fail_if)
        return rep

    def check_run(self, params: BenchmarkParams, *, labels: bool) -> None:
        """--fail-if over accuracy needs labelled --eval-data, and over memory needs --memory: said up front."""
        from ..bench import gates

        gates.check_measurable(gates.parse_all(list(params.fail_if)), labels=labels, memory=params.memory,
                               where="benchmark --fail-if")

    def run(self, model: ModelRef, params: BenchmarkParams, ctx: StageContext) -> StageResult:
        from ..bench import gates
        from ..bench.measure import BenchSpec, Target, benchmark
        from ..bench.run import parse_batch_sizes

        spec = BenchSpec(batch_sizes=parse_batch_sizes(params.batch_sizes), threads=params.threads,
                         duration_s=params.duration, repeats=params.repeats, memory=params.memory,
                         safe=ctx.safe)
        targets = [Target("original", ctx.source, baseline=True)]
        if model.path != ctx.source.path:
            targets.append(Target(model.rep.value, model))
        result = benchmark(targets, ctx.signature, spec, ctx.eval_data, ctx.note)
        result["gates"] = gates.evaluate(gates.parse_all(params.fail_if), result)
        for target in result["targets"]:  # the stage's model lives in a staging directory that is then removed
            if not target["baseline"]:
                target["path"] = f"the pipeline's {model.rep.value} model at this stage"
        for warning in result["warnings"]:
            ctx.note(warning)
        failed = gates.failures(result["gates"])
        if failed:
            raise GateFailed(f"stage 'benchmark': {len(failed)} gate check(s) failed: " + "; ".join(failed))
        held = result["targets"][-1]
        first = held["latency"][0]
        metrics: dict[str, Any] = {"benchmark": result, "p50_ms": first["p50_ms"], "p99_ms": first["p99_ms"]}
        ratio = first.get("latency_ratio")
        if ratio:
            metrics["speedup"] = round(1 / ratio, 3)
        return StageResult(model=model, metrics=metrics)
