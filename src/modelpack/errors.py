"""Every error modelpack raises on purpose lives here.

The library raises these; the CLI turns them into a one-line message and an exit
code exactly once (`modelpack.cli`), and the server turns them into an HTTP error
body exactly once. Messages name the thing (file, option, tensor) and say what
to do next.
"""

from __future__ import annotations


class ModelpackError(Exception):
    """Base class: a failure the user can understand and act on (exit code 1)."""

    exit_code: int = 1


class UsageError(ModelpackError):
    """A bad invocation: unknown stage, bad option value, impossible pipeline (exit 2)."""

    exit_code = 2


class InputError(ModelpackError):
    """A missing, corrupt or unsupported input file (exit 2)."""

    exit_code = 2


class StageFailed(ModelpackError):
    """A pipeline stage ran and failed, e.g. parity above --atol (exit 1)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"stage '{stage}' failed: {message}")
        self.stage = stage


class GateFailed(ModelpackError):
    """A measured metric crossed a limit the user set, e.g. --max-accuracy-drop (exit 1)."""


class IntegrityError(ModelpackError):
    """A package does not match its manifest: checksum, schema or load failure (exit 1)."""


class OutputExistsError(UsageError):
    """The output path exists and --force was not given (exit 2)."""


class OutputBusyError(ModelpackError):
    """Another modelpack run is writing the same output right now (exit 1)."""
