"""Writing what a registry sends, and the limits of a pull: layer paths, and tar layers read as a stream.

A registry is not trusted with anything but bytes whose digests it cannot fake. Every path (a layer's
`org.cncf.model.filepath`, a tar member's name) must be a plain relative path: no `..` part, no absolute path,
no control character (NUL included), nothing under another layer's path. A tar layer is read member by member
(never listed first, so memory stays flat however many members it has); only files and folders under the
layer's own path are written, never sparse files, links or devices. What a pull writes is bounded: in bytes
(`max_size`, and a compressed layer at most `RATIO` times its size, at least `FLOOR`) and in files and folders
(`max_files`). Each refusal is an IntegrityError with a one-line reason.
"""

from __future__ import annotations

import gzip
import hashlib
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, TypeVar, cast

from ..errors import IntegrityError, ModelpackError, printable

if TYPE_CHECKING:
    from .registry import Reference

RATIO = 100  # a compressed layer unpacks to at most this many times its size ...
FLOOR = 16 << 20  # ... or this, when that is more: small layers of zeros are fine
CHUNK = 1 << 20
_T = TypeVar("_T")


@dataclass(frozen=True)
class PullLimits:
    """What one pull may take: seconds in all (None: no deadline), bytes written, files and folders written."""

    timeout_s: float | None = 600.0
    max_size: int = 256 << 30
    max_files: int = 10_000


def _size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def escaped(exc: ModelpackError) -> ModelpackError:
    """The same error, with control characters in its message escaped (it may quote what a registry sent)."""
    text = printable(str(exc))
    if text == str(exc):
        return exc
    clean = ModelpackError(text)
    clean.__class__ = type(exc)  # the same class and exit code, whatever its constructor takes
    return clean


def safe_path(ref: Reference, name: object, what: str) -> PurePosixPath:
    """`name` as a relative path inside the output, or an IntegrityError saying why it is not one."""
    if not isinstance(name, str) or not name:
        raise IntegrityError(f"{ref}: {what} names no path.")
    shown = printable(name[:200])
    if printable(name) != name:
        raise IntegrityError(f"{ref}: {what} has a control character (NUL, escape, newline) in its path "
                             f"'{shown}'; refusing it.")
    path = PurePosixPath(name)
    if name.startswith("/") or "\\" in name or ".." in name.split("/") or not path.parts:
        raise IntegrityError(f"{ref}: {what} would write '{shown}', outside its place in the output (an absolute "
                             "path, or a '..' part); refusing it.")
    return path


def check_layout(ref: Reference, paths: list[PurePosixPath]) -> None:
    """No two layers write the same path, and none writes under another's (a file where a folder goes)."""
    seen: dict[PurePosixPath, int] = {}
    for index, path in enumerate(paths):
        if path in seen:
            raise IntegrityError(f"{ref}: layers {seen[path]} and {index} both write '{path}'; refusing it.")
        seen[path] = index
    for index, path in enumerate(paths):
        for parent in path.parents:
            if parent in seen:
                raise IntegrityError(f"{ref}: layer {index} writes '{path}' under '{parent}', which layer "
                                     f"{seen[parent]} writes; a path cannot be a file and a folder, refusing it.")


class Budget:
    """What is left of a pull's limits, spent as layers are written."""

    def __init__(self, ref: Reference, limits: PullLimits) -> None:
        self.ref, self.limits = ref, limits
        self.bytes, self.files = limits.max_size, limits.max_files

    def check_sizes(self, sizes: Iterable[int]) -> None:
        total = sum(sizes)
        if total > self.limits.max_size:
            raise IntegrityError(f"{self.ref}: the artifact's layers hold {_size(total)}, over --max-size-gb "
                                 f"{self.limits.max_size / (1 << 30):g}; refusing it (raise --max-size-gb for a "
                                 "bigger model).")

    def take_file(self) -> None:
        self.files -= 1
        if self.files < 0:
            raise IntegrityError(f"{self.ref}: the artifact holds more than --max-files {self.limits.max_files} "
                                 "files and folders; refusing it (raise --max-files if it really has that many).")

    def take_bytes(self, n: int, path: PurePosixPath) -> None:
        self.bytes -= n
        if self.bytes < 0:
            raise IntegrityError(f"{self.ref}: '{path}' takes the pull past --max-size-gb "
                                 f"{self.limits.max_size / (1 << 30):g}; refusing it (raise --max-size-gb for a "
                                 "bigger model).")


class _Counted:
    """A layer's uncompressed bytes as tarfile reads them: hashed (the DiffID) and counted against a cap."""

    def __init__(self, source: IO[bytes], cap: int, over: Callable[[], IntegrityError]) -> None:
        self.source, self.cap, self.over = source, cap, over
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size if 0 <= size <= CHUNK else CHUNK)  # never the whole stream at once
        self.count += len(data)
        if self.count > self.cap:
            raise self.over()
        self.hash.update(data)
        return data


def extract(ref: Reference, archive: Path, media_type: str, path: PurePosixPath, diff_id: str, staging: Path,
            budget: Budget) -> list[str]:
    """A tar layer, member by member: each must be a file or folder under the layer's path; its uncompressed
    bytes must match the DiffID. Returns the files written (the caller removes `staging` on failure)."""
    compressed = media_type.endswith("+gzip")
    where = f"layer '{path}'"
    cap = budget.bytes
    if compressed:
        ratio_cap = max(FLOOR, RATIO * archive.stat().st_size)
        if ratio_cap < cap:
            cap = ratio_cap

    def over() -> IntegrityError:
        if compressed and cap < budget.bytes:
            return IntegrityError(f"{ref}: {where} unpacks to more than {_size(cap)} ({RATIO} times its "
                                  f"{_size(archive.stat().st_size)}, or {_size(FLOOR)} at least); refusing it as a "
                                  "decompression bomb.")
        return IntegrityError(f"{ref}: {where} takes the pull past --max-size-gb "
                              f"{budget.limits.max_size / (1 << 30):g}; refusing it (raise --max-size-gb for a "
                              "bigger model).")

    def reading(step: Callable[[], _T]) -> _T:
        try:
            return step()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise IntegrityError(f"{ref}: {where} is not a readable tar ({printable(str(exc)[:200])}); "
                                 "refusing it.") from None

    files: list[str] = []
    folders: set[PurePosixPath] = set()  # bounded, as `files` is, by --max-files
    with archive.open("rb") as raw:
        source = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")) if compressed else raw
        counted = _Counted(source, cap, over)
        tar = reading(lambda: tarfile.open(fileobj=counted, mode="r|"))  # type: ignore[call-overload]
        with tar:
            while (member := reading(tar.next)) is not None:
                tar.members.clear()  # a stream keeps no index: memory stays flat however many members
                _check_member(ref, member, path)
                budget.take_file()
                name = PurePosixPath(member.name)
                if member.isdir():
                    if name not in folders:  # a folder named again costs nothing (and is counted once more)
                        _write(ref, staging.joinpath(*name.parts), member.name, None, reading)
                        folders.add(name)
                    continue
                body = reading(lambda: tar.extractfile(member))  # noqa: B023 (called at once)
                _write(ref, staging.joinpath(*name.parts), member.name, body, reading)
                files.append(name.as_posix())
        while reading(lambda: counted.read(CHUNK)):  # the end-of-archive blocks and padding count in the DiffID
            pass
    budget.bytes -= counted.count
    if f"sha256:{counted.hash.hexdigest()}" != diff_id:
        raise IntegrityError(f"{ref}: {where} unpacks to sha256:{counted.hash.hexdigest()}, not its DiffID "
                             f"{printable(diff_id)}.")
    return files


def _check_member(ref: Reference, member: tarfile.TarInfo, path: PurePosixPath) -> None:
    """Stricter than tarfile's `data` filter, which let `d/../x` through; we write every member ourselves,
    so no link (nothing a later member could be written through) ever exists under the output."""
    where = f"layer '{path}'"
    name = safe_path(ref, member.name, f"{where} holds a member that")
    shown = printable(member.name[:200])
    if not (name == path or path in name.parents):
        raise IntegrityError(f"{ref}: {where} holds '{shown}', not a file or folder under '{path}'; refusing it.")
    if member.issparse():
        raise IntegrityError(f"{ref}: {where} holds '{shown}' as a sparse file (its apparent size "
                             f"{_size(member.size)}); modelpack writes no sparse files, refusing it.")
    if not (member.isreg() or member.isdir()):
        raise IntegrityError(f"{ref}: {where} holds '{shown}', not a file or folder under '{path}' (a link or a "
                             "device); refusing it.")


def _write(ref: Reference, target: Path, name: str, body: IO[bytes] | None,
           reading: Callable[[Callable[[], bytes]], bytes]) -> None:
    """A folder (`body` None) or a new file; a path that is already something else is a conflict."""
    try:
        if body is None:
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as out:
            while chunk := reading(lambda: body.read(CHUNK)):
                out.write(chunk)
        target.chmod(0o644)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise IntegrityError(f"{ref}: '{printable(name[:200])}' is written twice, or as a file and as a folder "
                             "(by two layers or two tar members); refusing it.") from None
