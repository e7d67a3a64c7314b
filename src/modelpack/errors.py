"""Every error modelpack raises on purpose lives here.

The library raises these; the CLI turns them into a one-line message and an exit
code exactly once (`modelpack.cli`), and the server turns them into an HTTP error
body exactly once. Messages name the thing (file, option, tensor) and say what
to do next.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """`text` with control characters escaped (`\\x1b`, `\\n`), so that text a file or a registry supplied
    can neither break a one-line message nor drive the terminal."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


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


class RegistryError(ModelpackError):
    """A registry could not be reached or used: ZooKeeper (no live instance answered) or an OCI registry (exit 1)."""


class OutputExistsError(UsageError):
    """The output path exists and --force was not given (exit 2)."""


class OutputBusyError(ModelpackError):
    """Another modelpack run is writing the same output right now (exit 1)."""


class RequestError(ModelpackError):
    """A request the server will not serve. `status` is the HTTP status the client gets (4xx or 503/504).

    The server turns these into the V2 error body `{"error": "..."}` in one place; a
    client's mistake is never a 500.
    """

    status: int = 400

    def __init__(self, message: str, status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.headers = headers or {}


class NotFound(RequestError):
    status = 404


class Unauthorized(RequestError):
    status = 401


class Forbidden(RequestError):
    status = 403


class PayloadTooLarge(RequestError):
    status = 413


class RateLimited(RequestError):
    status = 429


class Overloaded(RequestError):
    """The bounded queue is full: try again shortly (503 with Retry-After)."""

    status = 503


class RequestTimeout(RequestError):
    """The request waited or ran longer than --timeout-s (504)."""

    status = 504


class ClientGone(RequestError):
    """The client hung up before its answer: nothing is sent; 499 is what the metrics count (nginx's code)."""

    status = 499


def reason(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, or its class name when it has none (e.g. a bare assert)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def describe(exc: BaseException) -> dict[str, object]:
    """An exception as plain data, to cross a process boundary (see `rebuild`)."""
    import traceback

    return {"type": type(exc).__name__, "message": str(exc), "domain": isinstance(exc, ModelpackError),
            "exit_code": getattr(exc, "exit_code", 130 if isinstance(exc, KeyboardInterrupt) else 1),
            "traceback": "".join(traceback.format_exception(exc))}


def rebuild(described: dict[str, object]) -> BaseException:
    """The exception `describe` saw: a domain error keeps its class and message; anything else is an internal
    error that says how to see the traceback."""
    name, message = str(described["type"]), str(described["message"])
    if name == "KeyboardInterrupt":
        return KeyboardInterrupt()
    cls = globals().get(name)
    if described["domain"] and isinstance(cls, type) and issubclass(cls, ModelpackError):
        exc = ModelpackError(message)
        exc.__class__ = cls  # the same class and message, whatever its constructor takes
        return exc
    if described["domain"]:
        failure = ModelpackError(message)
        failure.exit_code = int(str(described["exit_code"]))
        return failure
    return ModelpackError(f"internal error: {name}: {message.strip()[:300]} (rerun with --debug for the traceback)")
