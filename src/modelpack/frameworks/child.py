"""Framework work in a fresh process, so that the memory it takes goes back when the work ends.

TensorFlow never returns what a conversion used: after tf2onnx has converted a 100 MB model, the
process keeps gigabytes, and a pipeline that converts and then measures would hold the source, the
SavedModel and the ONNX graph at once. `call()` runs one function in a freshly spawned interpreter
(not a fork: a process that has loaded TensorFlow cannot fork safely) and returns its picklable
result; the child's memory is the operating system's again when it returns.

A spawned interpreter pays TensorFlow's import again (about 2.5 s here), which a small model does
not repay; `wanted()` says when a model is big enough, and MODELPACK_CHILD_CONVERSIONS overrides it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from typing import Any

from .. import errors

ENV = "MODELPACK_CHILD_CONVERSIONS"  # auto (the default), always or never
THRESHOLD_BYTES = 32 * 1024 * 1024  # from this model size on, a conversion's memory is worth returning


def wanted(model_bytes: int) -> bool:
    """Run this model's conversions in a child? By size, unless MODELPACK_CHILD_CONVERSIONS says always or never."""
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode in ("always", "1", "yes"):
        return True
    if mode in ("never", "0", "no"):
        return False
    return model_bytes >= THRESHOLD_BYTES


def call(what: str, stage: str, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` in a fresh process; its return value, or what it raised, rebuilt here.

    `function` must be importable by name (a module-level function), and its arguments and result picklable.
    A child killed by a signal (say, the kernel's out-of-memory killer) becomes StageFailed naming `what`."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, function, args), name=f"modelpack {what}", daemon=True)
    process.start()
    send.close()
    try:
        try:
            outcome = receive.recv()
        except EOFError:
            outcome = None
        process.join()
    finally:
        receive.close()
        if process.is_alive():  # interrupted while waiting: the child must not outlive us
            process.kill()
            process.join()
    if outcome is None:
        code = process.exitcode or 0
        cause = (f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}")
        hint = " (SIGKILL is often the out-of-memory killer)" if code == -signal.SIGKILL else ""
        raise errors.StageFailed(stage, f"the process running {what} {cause}{hint}; rerun with -v to see the "
                                        "framework's output.")
    kind, value = outcome
    if kind == "error":
        raise errors.rebuild(value)
    return value


def _child(send: Any, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
    from ..pipeline.isolation import die_with_parent

    die_with_parent()
    os.dup2(2, 1)  # frameworks print progress to stdout (tf_keras' export does); stdout belongs to results
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    try:
        outcome: tuple[str, Any] = ("ok", function(*args))
    except BaseException as exc:
        outcome = ("error", errors.describe(exc))
    send.send(outcome)
    send.close()

