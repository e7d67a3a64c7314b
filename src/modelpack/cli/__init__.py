"""The command line. Commands parse, call the library, and render; nothing else.

Domain errors become a one-line message and an exit code here, exactly once:
2 for bad usage or input, 1 for a failed stage, check or gate. `--debug` (or
MODELPACK_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any

import click

from .. import __version__
from ..errors import ModelpackError, printable

DEBUG_KEY = "modelpack.debug"
JSON_KEY = "modelpack.json"


# Commands whose own -q means something more than "print nothing" (optimize's progress, push's digest).
OWN_QUIET = {"optimize", "run", "push", "pull"}
CHAINS = {"optimize"}  # chained commands: their -q may come after a stage


class CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class; each error has its own


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.find_root().meta.get(DEBUG_KEY)) or os.environ.get("MODELPACK_DEBUG") == "1"


def want_json(ctx: click.Context) -> None:
    """Mark this invocation as JSON-speaking, so errors are reported as JSON on stdout too."""
    ctx.find_root().meta[JSON_KEY] = True


def _fail(ctx: click.Context, message: str, code: int) -> CliError:
    message = printable(message)  # one line, and nothing in it can drive the terminal
    if ctx.find_root().meta.get(JSON_KEY):
        from .render import print_json

        print_json({"status": "error", "error": message, "exit_code": code})
    return CliError(message, code)


class RootGroup(click.Group):
    """Loads each command module only when it is used, and maps errors to exit codes."""

    lazy = {
        "optimize": ("modelpack.cli.optimize", "optimize"),
        "run": ("modelpack.cli.optimize", "run_file"),
        "stages": ("modelpack.cli.optimize", "stages"),
        "inspect": ("modelpack.cli.package", "inspect"),
        "verify": ("modelpack.cli.package", "verify"),
        "pack": ("modelpack.cli.package", "pack"),
        "predict": ("modelpack.cli.predict", "predict"),
        "serve": ("modelpack.cli.serve", "serve"),
        "benchmark": ("modelpack.cli.benchmark", "benchmark"),
        "report": ("modelpack.cli.benchmark", "report"),
        "compare": ("modelpack.cli.benchmark", "compare"),
        "deploy": ("modelpack.cli.deploy", "deploy"),
        "keygen": ("modelpack.cli.security", "keygen"),
        "sign": ("modelpack.cli.security", "sign"),
        "discover": ("modelpack.cli.discover", "discover"),
        "push": ("modelpack.cli.oci", "push"),
        "pull": ("modelpack.cli.oci", "pull"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            import importlib

            from .examples import epilog

            module, attr = self.lazy[name]
            command: click.Command = getattr(importlib.import_module(module), attr)
            command.epilog = command.epilog or epilog(name)
            return command
        return super().get_command(ctx, name)

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        """`--debug` works anywhere on the line: after a subcommand or a stage too; so does `-q` for the
        commands that have no `-q` of their own."""
        argv = list(sys.argv[1:] if args is None else args)
        cut = argv.index("--") if "--" in argv else len(argv)
        command = next((a for a in argv[:cut] if not a.startswith("-")), None)
        hoist = {"--debug"} | ({"-q", "--quiet"} if command not in OWN_QUIET else set())
        moved = [a for i, a in enumerate(argv) if a in hoist and 0 < i < cut]
        if moved:
            argv = [a for i, a in enumerate(argv) if not (a in hoist and 0 < i < cut)]
            argv[:0] = sorted(set(moved))
        if command in CHAINS:
            # A stage has no -q; the pipeline's own -q (which also quiets the progress) is meant, wherever it is.
            at = argv.index(command) + 1
            cut = argv.index("--") if "--" in argv else len(argv)
            quiet = [a for i, a in enumerate(argv) if a in ("-q", "--quiet") and at < i < cut]
            if quiet:
                argv = [a for i, a in enumerate(argv) if not (a in ("-q", "--quiet") and at < i < cut)]
                argv[at:at] = quiet[:1]
        return super().main(argv, *rest, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        previous = signal.getsignal(signal.SIGTERM)
        # SIGTERM unwinds like Ctrl-C, so temporary output is removed.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return super().invoke(ctx)
        except ModelpackError as exc:
            if _debug(ctx):  # the traceback, then the same one-line error and exit code as without --debug
                traceback.print_exc()
            raise _fail(ctx, str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            if _debug(ctx):
                raise
            raise _fail(ctx, "interrupted; no partial output was left behind.", 130) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if _debug(ctx):
                raise
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise _fail(ctx, f"internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)",
                        1) from None
        finally:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="modelpack")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors (anywhere on the line).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (anywhere on the line).")
@click.pass_context
def main(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Take a trained model to a verified, optimized, deployable package.

    \b
      modelpack optimize model.keras -o build/pkg export --format onnx
      modelpack inspect build/pkg
      modelpack verify build/pkg
      modelpack predict build/pkg --input x.npy
    """
    ctx.meta[DEBUG_KEY] = debug
    if quiet or "modelpack.cli.render" in sys.modules:  # set, or reset after an in-process run with -q
        from . import render

        render.out.quiet = render.err.quiet = quiet


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
