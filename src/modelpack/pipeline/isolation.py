"""Work in a child process, the one module for both kinds (it imports nothing from the CLI).

Forked, for a whole pipeline (`run_forked`): TensorFlow and onnxruntime are C++, and a bug there (a double free
in a training step, say) kills the process with a signal, and no Python `finally` runs. `optimize` therefore
forks before any framework is imported; the child runs the pipeline and reports each stage it starts over a
pipe. When the child dies by a signal, the parent says which stage was running and which signal killed it, and
removes what the child left: its lock file and its temporary directories. The child's output is the user's
terminal, unchanged. Where fork is not safe (no os.fork, a framework already loaded, or more than one thread in
this process, as in a test process that has run models before) the pipeline runs in-process.

Spawned, for one framework call (`call_spawned`): TensorFlow never returns what a conversion used. After
tf2onnx has converted a 100 MB model, the process keeps gigabytes, and a pipeline that converts and then
measures would hold the source, the SavedModel and the ONNX graph at once. A freshly spawned interpreter (not
a fork: a process that has loaded TensorFlow cannot fork safely) runs one function and returns its picklable
result; its memory is the operating system's again when it returns. It pays TensorFlow's import again (about
2.5 s here), which a small model does not repay: `spawn_wanted()` says when a model is big enough, and
MODELPACK_CHILD_CONVERSIONS overrides it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .. import errors
from ..atomic import sweep

if TYPE_CHECKING:
    from ..package.manifest import StageRecord

ENV_OFF = "MODELPACK_NO_ISOLATION"  # "1": never fork a pipeline
CONVERSIONS_ENV = "MODELPACK_CHILD_CONVERSIONS"  # auto (the default), always or never
THRESHOLD_BYTES = 32 * 1024 * 1024  # from this model size on, a conversion's memory is worth returning


def fork_available() -> bool:
    """Fork only where it is safe: no framework loaded yet, and no other Python thread (a fork copies other
    threads' locks but not the threads, so a child of a multi-threaded process can deadlock)."""
    if not hasattr(os, "fork") or os.environ.get(ENV_OFF) == "1":
        return False
    if any(name in sys.modules for name in ("tensorflow", "onnxruntime", "torch")):
        return False  # their thread pools and locks do not survive a fork
    import threading

    # Python threads only: numpy's BLAS keeps idle native workers from import on, and forks safely.
    return threading.active_count() == 1


class _Forwarding:
    """A reporter for the child: renders as usual and tells the parent which stage started."""

    def __init__(self, inner: Any, fd: int) -> None:
        self.inner = inner
        self.fd = fd

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, default=str) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]

    def stage_started(self, index: int, total: int, name: str) -> None:
        self.send({"event": "stage", "index": index, "total": total, "name": name})
        self.inner.stage_started(index, total, name)

    def stage_finished(self, record: StageRecord) -> None:
        self.inner.stage_finished(record)

    def note(self, message: str) -> None:
        self.inner.note(message)

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()


def _hide_framework_output(terminal: Callable[[TextIO], None] | None) -> None:
    """In the child: the frameworks' own chatter (TensorFlow's C++ logs, Keras' "Saved artifact at ...",
    tf2onnx, absl) goes to an unlinked temporary file; modelpack's progress still reaches the terminal, through
    the stream handed to `terminal` (the CLI points its renderer there)."""
    if terminal is not None:
        terminal(os.fdopen(os.dup(2), "w", buffering=1))  # progress and notes
    log = tempfile.TemporaryFile()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = os.fdopen(os.dup(log.fileno()), "w", buffering=1)
    sys.stderr = os.fdopen(os.dup(log.fileno()), "w", buffering=1)


def run_forked(work: Callable[[Any], Any], reporter: Any, output: Path, debug: bool = False, verbose: bool = False,
               terminal: Callable[[TextIO], None] | None = None) -> Any:
    """`work(reporter)` in a forked child; its return value must be JSON-serialisable (or have `to_json()`).

    Returns what `work` returned (as JSON data), or raises what it raised, as a ModelpackError. Unless
    `verbose` or `debug`, the frameworks' own output is not shown (`terminal` gets the stream progress may
    still use)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        if verbose:
            os.environ["MODELPACK_VERBOSE"] = "1"  # TensorFlow's start-up lines too
        if not (verbose or debug):
            _hide_framework_output(terminal)
        # Its own process group: Ctrl-C reaches the parent only, which forwards it once. And it dies with the
        # parent, so a kill -9 of the command leaves no orphan holding the output's lock.
        os.setpgid(0, 0)
        die_with_parent()
        # A SIGINT the parent forwards must interrupt the run, even when the command was started with SIGINT
        # ignored (a background job of a script, `modelpack optimize ... &`), which the fork would inherit.
        # (SIGTERM already has the command's handler, which unwinds like Ctrl-C.)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        channel = _Forwarding(reporter, write_fd)
        code = 0
        try:
            result = work(channel)
            channel.send({"event": "result", "value": result.to_json() if hasattr(result, "to_json") else result})
        except BaseException as exc:  # every outcome goes back to the parent, which owns the exit code
            code = 1
            channel.send({"event": "error", **errors.describe(exc)})
        finally:
            channel.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_fd)
    def forward(signum: int, frame: Any) -> None:  # the child cleans up and reports "interrupted"
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    previous_int = signal.signal(signal.SIGINT, forward)
    previous_term = signal.signal(signal.SIGTERM, forward)
    stage, outcome = None, None
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                message = json.loads(line)
                if message["event"] == "stage":
                    stage = message
                else:
                    outcome = message
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
    if os.WIFSIGNALED(status) and outcome is None:
        number = os.WTERMSIG(status)
        sweep(output)
        where = (f"stage {stage['index']}/{stage['total']} '{stage['name']}'" if stage else "the pipeline")
        raise errors.StageFailed(stage["name"] if stage else "pipeline",
                                 f"the process running {where} was killed by {signal.Signals(number).name} "
                                 "(a crash inside the framework); nothing was written, and its lock file and "
                                 "temporary folders were removed. Rerun with -v to see the framework's output.")
    if outcome is None:
        sweep(output)
        raise errors.ModelpackError(f"the pipeline process exited with code {os.WEXITSTATUS(status)} without a result.")
    if outcome["event"] == "result":
        return outcome["value"]
    if debug:
        sys.stderr.write(outcome["traceback"])
    raise errors.rebuild(outcome)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the stale-lock sweep of the next run still applies
        pass


def spawn_wanted(model_bytes: int) -> bool:
    """Run this model's conversions in a child? By size, unless MODELPACK_CHILD_CONVERSIONS says always or never."""
    mode = os.environ.get(CONVERSIONS_ENV, "auto").strip().lower()
    if mode in ("always", "1", "yes"):
        return True
    if mode in ("never", "0", "no"):
        return False
    return model_bytes >= THRESHOLD_BYTES


def call_spawned(what: str, stage: str, function: Callable[..., Any], *args: Any) -> Any:
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
    die_with_parent()
    os.dup2(2, 1)  # frameworks print progress to stdout (tf_keras' export does); stdout belongs to results
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    try:
        outcome: tuple[str, Any] = ("ok", function(*args))
    except BaseException as exc:
        outcome = ("error", errors.describe(exc))
    send.send(outcome)
    send.close()
