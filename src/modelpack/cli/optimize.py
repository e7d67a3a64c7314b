"""`modelpack optimize INPUT -o OUT STAGE [opts] STAGE [opts] ...` and `modelpack stages`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import click
from rich.markup import escape

from ..errors import UsageError
from ..pipeline import SPEC_OPTIONS, PipelineSpec, StageSpec
from ..pipeline.spec import override
from ..stages import Stage, registry
from . import render, want_json


def stage_command(stage: Stage[Any]) -> click.Command:
    """A click subcommand built from a stage's declared options; it returns a StageSpec."""

    def callback(**values: Any) -> StageSpec:
        ctx = click.get_current_context()
        given = {k: v for k, v in values.items()
                 if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
        return StageSpec(stage.name, given)

    accepts = ", ".join(str(r) for r in stage.accepts)
    return click.Command(stage.name, params=[o.click_option() for o in stage.options], callback=callback,
                         help=f"{stage.help}\n\nWorks on: {accepts}.", short_help=stage.help)


def unknown_stage(name: str) -> str:
    import difflib

    names = registry.names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown stage '{name}'; {hint}available stages: {', '.join(names)}. See 'modelpack stages'."


class StageGroup(click.Group):
    """The stages come from the `modelpack.stages` entry points, built-in and third-party alike."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return registry.names()

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in registry.names():
            return None
        return stage_command(registry.get(name))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Accept `INPUT -o OUT [global options]` in any order, up to the first stage name.

        click stops parsing a chain group's options at its first positional argument, and the documented syntax
        puts options after INPUT: so the tokens before the first stage are reordered, options first, INPUT last,
        and click parses that as usual.
        """
        takes_value = {opt for p in self.params if isinstance(p, click.Option) and not p.is_flag
                       for opt in p.opts + p.secondary_opts}
        stage_names = set(registry.names())
        options: list[str] = []
        positionals: list[str] = []
        split = len(args)
        index = 0
        while index < len(args):
            token = args[index]
            if token in stage_names:
                split = index
                break
            if token == "--config":
                raise click.UsageError("a pipeline file holds its own input: run it with 'modelpack run FILE' "
                                       "(INPUT and stages given here override nothing in it).", ctx)
            if token.startswith("-") and token != "-":
                options.append(token)
                if token in takes_value and index + 1 < len(args):
                    options.append(args[index + 1])
                    index += 1
            else:
                positionals.append(token)
                if len(positionals) > 1:  # INPUT is the only positional before the stages: this was meant as one
                    raise click.UsageError(unknown_stage(token), ctx)
            index += 1
        if not positionals and split < len(args) and not ctx.resilient_parsing:
            raise click.UsageError("no input model: give INPUT, the model to optimize, before the first stage, e.g. "
                                   "'modelpack optimize model.keras -o out export'.", ctx)
        return super().parse_args(ctx, options + positionals + args[split:])

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0]
        if self.get_command(ctx, name) is None:
            if name.startswith("-"):
                raise click.UsageError(f"no such option: {name}. Global options go before the first stage.", ctx)
            raise click.UsageError(unknown_stage(name), ctx)
        return super().resolve_command(ctx, args)


def _run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say how to run a pipeline, shared by `optimize` and `run`."""
    for option in reversed((
        click.option("--dry-run", is_flag=True, help="Print the resolved pipeline and exit without running it."),
        click.option("--force", is_flag=True, help="Replace an existing output."),
        click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result on stdout."),
        click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors."),
        click.option("-v", "--verbose", is_flag=True,
                     help="Also show the frameworks' own output (TensorFlow, tf2onnx, absl), hidden by default."),
    )):
        command = option(command)
    return command


@click.group(cls=StageGroup, chain=True, invoke_without_command=True, no_args_is_help=True,
             subcommand_metavar="STAGE [STAGE OPTIONS]... [STAGE ...]")
@click.argument("input", required=True, type=click.Path(path_type=Path))
@click.option("--save-config", type=click.Path(path_type=Path), help="Write the pipeline as TOML to this file.")
@_run_options
@click.pass_context
def optimize(ctx: click.Context, /, **_: Any) -> None:
    """Run a pipeline of stages over a model and write one verified package.

    \b
    modelpack optimize model.keras -o build/pkg --eval-data eval.npz \\
        export --format onnx --format tflite
    """
    if ctx.params["as_json"]:
        want_json(ctx)



@optimize.result_callback()
@click.pass_context
def _optimize_stages(ctx: click.Context, /, stage_specs: list[StageSpec], input: Path, save_config: Path | None, dry_run: bool,
         force: bool, as_json: bool, quiet: bool, verbose: bool, **settings: Any) -> None:
    """Compile the command line into a PipelineSpec, then run it."""
    if not stage_specs:
        raise UsageError("no stages: name at least one after the options, e.g. 'export --format onnx' "
                         "(see 'modelpack stages').")
    spec = PipelineSpec(input=input, output=None, stages=list(stage_specs))
    execute(ctx, override(spec, settings), save_config=save_config, dry_run=dry_run, force=force,
            as_json=as_json, quiet=quiet, verbose=verbose)


@click.command("run")
@click.argument("pipeline_file", metavar="PIPELINE.toml", type=click.Path(path_type=Path))
@_run_options
@click.pass_context
def run_file(ctx: click.Context, /, pipeline_file: Path, dry_run: bool, force: bool, as_json: bool, quiet: bool,
        verbose: bool, **settings: Any) -> None:
    """Run a pipeline file (as written by `optimize --save-config`); options given here override its values.

    \b
    modelpack run build/pipeline.toml
    modelpack run build/pipeline.toml -o build/pkg-2 --eval-data other.npz --force
    """
    from ..pipeline import file as config

    if as_json:
        want_json(ctx)
    spec = config.load(pipeline_file)
    if not spec.stages:
        raise UsageError(f"{pipeline_file}: no stages; add at least one [[stages]] table, e.g. name = \"export\".")
    execute(ctx, override(spec, settings), save_config=None, dry_run=dry_run, force=force, as_json=as_json,
            quiet=quiet, verbose=verbose)


# Both commands take the pipeline's settings from the one list a pipeline file is checked against
# (pipeline.SPEC_OPTIONS): optimize's after INPUT and -o, before its own options; run's after the file.
optimize.params[1:1] = [o.click_option() for o in SPEC_OPTIONS]
run_file.params[1:1] = [o.click_option() for o in SPEC_OPTIONS]


def execute(ctx: click.Context, spec: PipelineSpec, *, save_config: Path | None, dry_run: bool, force: bool,
            as_json: bool, quiet: bool, verbose: bool) -> None:
    """Save, dry-run or run a compiled pipeline, and render the result."""
    from ..pipeline import file as config

    spec.force = force
    if save_config:
        from ..atomic import atomic_file

        text = config.dump(spec, save_config)
        with atomic_file(save_config, force=True) as tmp:
            tmp.write_text(text)
        if not quiet and not as_json:
            render.err.print(f"wrote pipeline to {save_config}")
    if dry_run:
        _print_plan(spec, as_json, quiet)
        return
    reporter = render.RichReporter(quiet=quiet or as_json)
    try:
        result = _run_guarded(spec, reporter, ctx, verbose)
    finally:
        reporter.close()
    if as_json:
        render.print_json({"status": "ok", "output": str(result.output), "manifest": result.manifest})
    elif not quiet:
        render.out.print(render.lineage_table(result.manifest["lineage"]))
        render.out.print(render.artifacts_table(result.manifest["artifacts"]))
        render.out.print(f"[bold green]package written:[/] {result.output}")
        render.out.print(f"[bold]{render.optimize_headline(result.manifest)}[/]")


def _run_guarded(spec: PipelineSpec, reporter: Any, ctx: click.Context, verbose: bool = False) -> Any:
    """Run the pipeline in a child process when that is safe, so a framework crash is reported, not fatal."""
    from .. import pipeline
    from . import _debug

    def terminal(stream: TextIO) -> None:  # the child's progress still reaches the terminal
        render.err.file = stream

    return pipeline.run_isolated(spec, reporter, debug=_debug(ctx), verbose=verbose, terminal=terminal)


def _print_plan(spec: PipelineSpec, as_json: bool, quiet: bool) -> None:
    from ..pipeline import describe_plan

    result = describe_plan(spec)
    rows = result["stages"]
    if as_json:
        render.print_json(result)
    elif not quiet:
        render.out.print(f"input: {spec.input} ({result['input_format']})  ->  output: {spec.output}")
        render.out.print(render.table("Pipeline (dry run)", ("#", "stage", "formats", "parameters"), [
            (str(r["index"]), r["stage"], " -> ".join(r["converts"] + ([r["output_format"]] if r["output_format"] != r["converts"][-1] else [])),
             ", ".join(f"{k}={v}" for k, v in r["params"].items() if v not in (None, [])))
            for r in rows
        ]))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def stages(ctx: click.Context, as_json: bool) -> None:
    """List every installed stage with its options."""
    if as_json:
        want_json(ctx)
    listing: list[dict[str, Any]] = []
    for name in registry.names():
        stage = registry.get(name)
        listing.append({
            "name": name, "help": stage.help, "accepts": [str(r) for r in stage.accepts],
            "from": registry.origin(name),
            "options": [{"flag": o.flag, "type": "flag" if o.is_flag else o.param_type.name, "default": o.default, "multiple": o.multiple,
                         "help": o.help} for o in stage.options],
        })
    if as_json:
        render.print_json(listing)
        return
    for item in listing:
        render.out.print(f"[bold]{item['name']}[/]  {item['help']}  [dim](works on {', '.join(item['accepts'])}; "
                         f"from {item['from']})[/]")
        for o in item["options"]:
            value = o["default"]
            shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            default = "" if value in (None, (), []) else escape(f" [default: {shown}]")
            render.out.print(f"    {o['flag']} {o['type'].upper()}{' (repeatable)' if o['multiple'] else ''}"
                             f"  {o['help']}{default}")
