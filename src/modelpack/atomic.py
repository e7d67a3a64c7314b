"""Atomic writes: build output beside the target, then rename it into place.

A failed run, Ctrl-C or SIGTERM removes its temporary directory; a kill -9 leaves
only a hidden `.NAME.tmp-*` beside the target, swept by the next run. Either way
the target is the old output or the new one, never a mix. A lock file keeps two
runs from writing the same target.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputBusyError, OutputExistsError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE) where the kernel allows it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return bool(fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0)


@contextmanager
def _lock(target: Path) -> Iterator[None]:
    lock_path = target.parent / f".{target.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise OutputBusyError(
                    f"output '{target}' is being written by another modelpack run; wait for it or pick another -o."
                ) from exc
            raise
        # The previous holder may have unlinked the file after we opened it: retry on the new one.
        try:
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        try:
            os.unlink(lock_path)
        except FileNotFoundError:
            pass
        os.close(fd)


def _check_target(target: Path, force: bool) -> None:
    if (target.exists() or target.is_symlink()) and not force:
        raise OutputExistsError(f"output '{target}' already exists; pass --force to replace it.")


def _sweep_stale(target: Path) -> None:
    """Remove temp outputs left by a run that was killed -9 (we hold the lock, so none is live)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def check_output(target: Path, force: bool) -> None:
    """Refuse an existing output early, before any work starts."""
    _check_target(Path(target).absolute(), force)


@contextmanager
def atomic_dir(target: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory that becomes `target` when the block succeeds."""
    target = Path(target).absolute()
    _check_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target):
        _sweep_stale(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            yield staging
            _check_target(target, force)
            if target.exists():
                if target.is_dir() and not target.is_symlink() and _exchange(staging, target):
                    shutil.rmtree(staging)  # staging now holds the old output
                else:
                    old = target.parent / f".{target.name}.tmp-old-{os.getpid()}"
                    os.rename(target, old)
                    os.rename(staging, target)
                    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
            else:
                os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


@contextmanager
def atomic_file(target: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temp file path that replaces `target` when the block succeeds."""
    target = Path(target).absolute()
    _check_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target):
        _sweep_stale(target)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            _check_target(target, force)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def sweep(target: Path) -> None:
    """Remove what a killed run left beside `target`: its temporary outputs and its lock file.

    Takes the lock first, so a run that is still alive is never disturbed."""
    target = Path(target).absolute()
    if not target.parent.is_dir():
        return
    try:
        with _lock(target):
            _sweep_stale(target)
    except OutputBusyError:
        pass
