"""Running a pipeline in a child process, so a crash inside a framework cannot take the CLI with it.

TensorFlow and onnxruntime are C++: a bug there (a double free in a training step, say) kills the
process with a signal, and no Python `finally` runs. `optimize` therefore forks before any framework
is imported; the child runs the pipeline and reports each stage it starts over a pipe. When the child
dies by a signal, the parent says which stage was running and which signal killed it, and removes
what the child left: its lock file and its temporary directories. The child's output is the user's
terminal, unchanged.

Where fork is not safe (no os.fork, a framework already loaded, or more than one thread in this process, as
in a test process that has run models before) the pipeline runs in-process.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import errors
from ..atomic import sweep

if TYPE_CHECKING:
    from ..package.manifest import StageRecord

ENV_OFF = "MODELPACK_NO_ISOLATION"


def available() -> bool:
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


def _hide_framework_output() -> None:
    """In the child: the frameworks' own chatter (TensorFlow's C++ logs, Keras' "Saved artifact at ...",
    tf2onnx, absl) goes to an unlinked temporary file; modelpack's progress still reaches the terminal."""
    from ..cli import render

    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    render.err.file = terminal  # progress and notes
    log = tempfile.TemporaryFile()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = os.fdopen(os.dup(log.fileno()), "w", buffering=1)
    sys.stderr = os.fdopen(os.dup(log.fileno()), "w", buffering=1)


def run(work: Callable[[Any], Any], reporter: Any, output: Path, debug: bool = False, verbose: bool = False) -> Any:
    """`work(reporter)` in a forked child; its return value must be JSON-serialisable (or have `to_json()`).

    Returns what `work` returned (as JSON data), or raises what it raised, as a ModelpackError. Unless
    `verbose` or `debug`, the frameworks' own output is not shown."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        if verbose:
            os.environ["MODELPACK_VERBOSE"] = "1"  # TensorFlow's start-up lines too
        if not (verbose or debug):
            _hide_framework_output()
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
