"""Tiny stages written the way any third party would write one."""

from __future__ import annotations

from typing import Any

import click

from modelpack.errors import UsageError
from modelpack.formats import ModelRef, Repr
from modelpack.stages import Option, Params, Stage, StageContext, StageResult, option


class HelloParams(Params):
    greeting: str = option(str, default="hello", help="Text to stamp.")
    times: int = option(click.IntRange(1, 5), default=1, help="How often to repeat it.")


class HelloStage(Stage[HelloParams]):
    """Typed parameters, each option declared once on its Params, read as attributes."""

    params_type = HelloParams
    name = "hello"
    help = "Stamp a greeting into the ONNX model's metadata."
    accepts = (Repr.ONNX,)

    def run(self, model: ModelRef, params: HelloParams, ctx: StageContext) -> StageResult:
        import onnx

        proto = onnx.load(str(model.path))
        text = " ".join([params.greeting] * params.times)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "greeting", text
        out = ctx.scratch("hello.onnx")
        onnx.save(proto, str(out))
        return StageResult(model=ModelRef(Repr.ONNX, out), metrics={"greeting_chars": len(text)})


class ExplodeStage(Stage):
    """Untyped parameters (an options tuple on the stage), read like a dict: what a stage written before Params
    looks like still works."""

    name = "explode"
    help = "Always fails, after writing a file, to test that failures leave nothing behind."
    options = (Option("message", str, default="boom"),)

    def run(self, model: ModelRef, params: dict[str, Any], ctx: StageContext) -> StageResult:
        ctx.scratch("half-written.bin").write_bytes(b"\0" * 1024)
        raise RuntimeError(params["message"])


class NapStage(Stage):
    name = "nap"
    help = "Sleep after writing a scratch file, so tests can interrupt a run mid-stage."
    options = (Option("seconds", float, default=30.0),)

    def run(self, model: ModelRef, params: dict[str, Any], ctx: StageContext) -> StageResult:
        import time

        ctx.scratch("napping.bin").write_bytes(b"\0" * 1024)
        ctx.note("napping")
        time.sleep(params["seconds"])
        return StageResult(model=model)


class SqueezeStage(Stage):
    """The hooks a built-in stage declares itself with (compress's codec, benchmark's up-front gate check)."""

    name = "squeeze"
    help = "Pick the package's archive codec; with --need-labels, refuse a run without labelled eval data."
    options = (
        Option("codec", click.Choice(["deflate", "lzma", "bzip2"]), default="lzma"),
        Option("need-labels", is_flag=True, default=False),
    )

    def archive_compression(self, params: dict[str, Any]) -> str | None:
        return str(params["codec"])

    def check_run(self, params: dict[str, Any], *, labels: bool) -> None:
        if params["need_labels"] and not labels:
            raise UsageError("stage 'squeeze': --need-labels: give --eval-data with labels (array 'y').")

    def run(self, model: ModelRef, params: dict[str, Any], ctx: StageContext) -> StageResult:
        return StageResult(model=model)


class CrashStage(Stage):
    name = "crash"
    help = "Kill its own process with SIGKILL after writing a scratch file, as a framework crash (or the OOM killer) would."

    def run(self, model: ModelRef, params: dict[str, Any], ctx: StageContext) -> StageResult:
        import os
        import signal

        ctx.scratch("half-written.bin").write_bytes(b"\0" * 1024)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")
