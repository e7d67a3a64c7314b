"""`.mpk`: a package as one zip file, written atomically and extracted safely."""

from __future__ import annotations

import shutil
import stat
import zipfile
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

from ..atomic import atomic_file
from ..errors import InputError, IntegrityError
from . import manifest as mf

COMPRESSION = {
    "deflate": zipfile.ZIP_DEFLATED,
    "lzma": zipfile.ZIP_LZMA,
    "bzip2": zipfile.ZIP_BZIP2,
    "store": zipfile.ZIP_STORED,
}
MAX_UNPACKED = 16 << 30  # refuse zip bombs: no package needs more than 16 GiB unpacked
MAX_MANIFEST = 16 << 20


def _compressor(compression: str) -> Any:
    import bz2
    import lzma
    import zlib

    if compression == "deflate":
        return zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as zip stores it
    if compression == "lzma":
        return lzma.LZMACompressor(format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA1}])
    if compression == "bzip2":
        return bz2.BZ2Compressor(9)
    return None


@lru_cache(maxsize=1024)
def _file_compressed_size(path: str, mtime_ns: int, size: int, compression: str) -> int:
    """One file's compressed size, streamed in 1 MiB chunks (never the whole file in memory), cached per file
    version: a pipeline measures the same bytes several times (a stage's output, then the packaged artifact)."""
    compressor = _compressor(compression)
    if compressor is None:
        return size
    total = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            total += len(compressor.compress(chunk))
    total += len(compressor.flush())
    return min(total, size)  # zip stores a member raw when compressing would grow it


def compressed_size(path: Path, compression: str = "deflate") -> int:
    """Bytes a file or directory takes inside a .mpk written with `compression` (member data only)."""
    from .files import companions

    files = [path, *companions(path)] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    total = 0
    for f in files:
        st = f.stat()
        total += _file_compressed_size(str(f.resolve()), st.st_mtime_ns, st.st_size, compression)
    return total


def file_compressed_size(path: Path, compression: str = "deflate") -> int:
    """One file's compressed size, without its companions (cached per file version, like `compressed_size`)."""
    st = path.stat()
    return _file_compressed_size(str(path.resolve()), st.st_mtime_ns, st.st_size, compression)


def is_archive(path: Path) -> bool:
    """A zip holding modelpack.json (a `.keras` file is a zip too, without one)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return mf.MANIFEST_NAME in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def read_head(path: Path) -> tuple[bytes, bytes | None, set[str]]:
    """An archive's manifest bytes, its signature's bytes (if signed) and its member names; nothing extracted."""
    from .signing import SIGNATURE_NAME

    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            for name in (mf.MANIFEST_NAME, SIGNATURE_NAME):
                if name in names and zf.getinfo(name).file_size > MAX_MANIFEST:
                    raise IntegrityError(f"{path}: {name} is {zf.getinfo(name).file_size} bytes; refusing it.")
            manifest = zf.read(mf.MANIFEST_NAME)
            signature = zf.read(SIGNATURE_NAME) if SIGNATURE_NAME in names else None
    except (zipfile.BadZipFile, OSError, KeyError, EOFError) as exc:
        raise InputError(f"'{path}': not a readable .mpk archive ({exc}).") from exc
    return manifest, signature, names


def pack(root: Path, out: Path, *, compression: str = "deflate", force: bool = False) -> int:
    """Write the package at `root` into `out` (manifest first); return the archive's size."""
    method = COMPRESSION[compression]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != mf.MANIFEST_NAME)
    with atomic_file(out, force=force) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=method, compresslevel=9 if method != zipfile.ZIP_LZMA else None) as zf:
            zf.write(root / mf.MANIFEST_NAME, mf.MANIFEST_NAME)
            for file in files:
                zf.write(file, file.relative_to(root).as_posix())
    return out.stat().st_size


def _check_member(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise IntegrityError(f"{archive}: member '{name}' is a link; refusing to extract it.")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise IntegrityError(f"{archive}: member '{name}' has an absolute path; refusing to extract it.")
    rel = PurePosixPath(name.replace("\\", "/"))
    if ".." in rel.parts:
        raise IntegrityError(f"{archive}: member '{name}' escapes the archive with '..'; refusing to extract it.")
    return rel


def _check_against_manifest(zf: zipfile.ZipFile, checked: list[tuple[zipfile.ZipInfo, PurePosixPath]],
                            archive: Path) -> None:
    """Before extracting anything: every member is one the manifest lists, at the size it lists.

    So an archive can hold no unlisted payload (a 1 GiB member beside a small model), and no member can
    inflate past its recorded size, whatever its compression ratio."""
    import json

    from .signing import SIGNATURE_NAME

    info = next(i for i, rel in checked if str(rel) == mf.MANIFEST_NAME)
    if info.file_size > MAX_MANIFEST:
        raise IntegrityError(f"{archive}: the manifest is {info.file_size} bytes; refusing it.")
    try:
        manifest = mf.validate(json.loads(zf.read(info)), f"{archive}:{mf.MANIFEST_NAME}")
    except (ValueError, zipfile.BadZipFile) as exc:
        raise IntegrityError(f"{archive}: the manifest is not valid JSON ({exc}).") from exc
    files: dict[str, int] = {}
    directories: dict[str, int] = {}
    for entry in manifest["artifacts"]:
        (directories if entry.get("kind") == "directory" else files)[entry["path"]] = entry["size"]
        for extra in entry.get("files", []):
            files[extra["path"]] = extra["size"]
    in_directory: dict[str, int] = {d: 0 for d in directories}
    for member, rel in checked:
        name = str(rel)
        if member.is_dir() or name in (mf.MANIFEST_NAME, SIGNATURE_NAME):
            if name == SIGNATURE_NAME and member.file_size > MAX_MANIFEST:
                raise IntegrityError(f"{archive}: {SIGNATURE_NAME} is {member.file_size} bytes; refusing it.")
            continue
        if name in files:
            if member.file_size != files[name]:
                raise IntegrityError(f"{archive}: member '{name}' unpacks to {member.file_size} bytes, but the "
                                     f"manifest says {files[name]}; refusing to extract it.")
            continue
        owner = next((d for d in directories if name.startswith(d.rstrip("/") + "/")), None)
        if owner is None:
            raise IntegrityError(f"{archive}: member '{name}' is not listed in the manifest; refusing to extract "
                                 "it.")
        in_directory[owner] += member.file_size
    for directory, size in in_directory.items():
        if size > directories[directory]:
            raise IntegrityError(f"{archive}: '{directory}' unpacks to {size} bytes, but the manifest says "
                                 f"{directories[directory]}; refusing to extract it.")


def extract(archive: Path, dest: Path) -> None:
    """Extract after checking every member: no absolute paths, no `..`, no links, no bombs."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"'{archive}': not a readable .mpk archive ({exc}).") from exc
    with zf:
        members = zf.infolist()
        checked = [(info, _check_member(info, archive)) for info in members]
        names = [str(rel) for _, rel in checked]
        if len(set(names)) != len(names):
            raise IntegrityError(f"{archive}: duplicate member names; refusing to extract it.")
        if mf.MANIFEST_NAME not in names:
            raise InputError(f"'{archive}' is a zip file but not a modelpack archive (no {mf.MANIFEST_NAME}).")
        if sum(info.file_size for info in members) > MAX_UNPACKED:
            raise IntegrityError(f"{archive}: unpacks to more than {MAX_UNPACKED >> 30} GiB; refusing to extract it.")
        _check_against_manifest(zf, checked, archive)
        root = dest.resolve()
        for info, rel in checked:
            target = (root / rel).resolve()
            if not target.is_relative_to(root):
                raise IntegrityError(f"{archive}: member '{info.filename}' escapes the archive; refusing it.")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise IntegrityError(f"{archive}: member '{info.filename}' is corrupt ({exc}).") from exc
