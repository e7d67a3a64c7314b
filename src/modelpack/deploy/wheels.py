"""The wheels a Docker build context installs from, with no package index.

Two parts: a wheel of the modelpack that is running (rebuilt from this installation, so the image runs the code
that wrote it, and never whatever an index calls "modelpack"), and the wheels of its dependencies at the versions
installed here, downloaded once for the image's platform and kept in a cache.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..errors import StageFailed, UsageError

DIST = "modelpack-toolkit"  # the distribution's name; the import package and the command are `modelpack`
WHEEL_NAME = f"{DIST.replace('-', '_')}-{__version__}-py3-none-any.whl"
# Docker platform -> CPU architecture. python:3.11-slim is Debian (glibc 2.36 or newer), so wheels built for
# glibc 2.36 and older all run in it. pip does not widen a --platform tag by itself: every tag is listed.
PLATFORMS = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
GLIBC_MINOR = 36
PACKAGE_FILES = (".py", ".json", ".typed")  # what the package ships (pyproject: packages + package-data)
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same sources give the same wheel, byte for byte


def _cache_root() -> Path:
    base = os.environ.get("MODELPACK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "modelpack")
    return Path(base) / "wheels"


def own_wheel(dest: Path) -> Path:
    """Write a wheel of the running modelpack into `dest`: its package files and this installation's metadata."""
    import modelpack

    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError as exc:
        raise UsageError(f"modelpack is not installed as the '{DIST}' distribution, so it cannot copy itself into "
                         "the image; install it (pip install -e .) or pass --requirement.") from exc
    root = Path(modelpack.__file__).parent
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in PACKAGE_FILES
                   and "__pycache__" not in p.parts)
    info = f"{DIST.replace('-', '_')}-{__version__}.dist-info"
    entries: list[tuple[str, bytes]] = [(f"modelpack/{p.relative_to(root).as_posix()}", p.read_bytes()) for p in files]
    entries += [
        (f"{info}/METADATA", (dist.read_text("METADATA") or "").encode()),
        (f"{info}/entry_points.txt", (dist.read_text("entry_points.txt") or "").encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: modelpack\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    ]
    record = [f"{name},sha256={_b64_sha256(data)},{len(data)}" for name, data in entries] + [f"{info}/RECORD,,"]
    entries.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / WHEEL_NAME
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            item = zipfile.ZipInfo(name, _EPOCH)
            item.external_attr = 0o644 << 16
            item.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(item, data)
    return out


def _b64_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _constraints(extras: str) -> str:
    """`name==version` for each package modelpack with `extras` needs, as installed here: the image gets what
    was tested here. Only that closure is pinned, and only names with one installed version: whatever else
    a process has on sys.path (a plugin, a test's site directory) stays out of the image's resolution."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    versions: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions.setdefault(canonicalize_name(name), set()).add(dist.version)
    wanted = {canonicalize_name(DIST): set(extras.split(","))}
    queue = [canonicalize_name(DIST)]
    pins: set[str] = set()
    while queue:
        name = queue.pop()
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": extra})
                                                  for extra in wanted[name] | {""}):
                continue
            dep = canonicalize_name(req.name)
            new_extras = set(req.extras) - wanted.get(dep, set())
            if dep not in wanted or new_extras:
                wanted[dep] = wanted.get(dep, set()) | set(req.extras)
                queue.append(dep)
    for name in wanted:
        found = versions.get(name, set())
        if name != canonicalize_name(DIST) and len(found) == 1:
            pins.add(f"{name}=={next(iter(found))}")
    return "\n".join(sorted(pins)) + "\n"


def bundle(dest: Path, extras: str, platform: str) -> list[str]:
    """Fill `dest` with modelpack's wheel and every dependency `extras` needs, for `platform`; returns the names.

    The dependencies are downloaded once per (modelpack wheel, extras, platform, installed versions) and copied
    from the cache after that.
    """
    if platform not in PLATFORMS:
        raise UsageError(f"--platform '{platform}': use one of {', '.join(PLATFORMS)}.")
    staging = dest.parent / f".{dest.name}.own"
    wheel = own_wheel(staging)
    constraints = _constraints(extras)
    key = hashlib.sha256(json.dumps([wheel.read_bytes().hex(), extras, platform, constraints]).encode()).hexdigest()
    cached = _cache_root() / key[:24]
    if not (cached / "complete").is_file():
        _download(wheel, extras, platform, constraints, cached)
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for item in sorted(cached.glob("*.whl")):
        shutil.copy2(item, dest / item.name)
        names.append(item.name)
    shutil.copy2(wheel, dest / wheel.name)
    shutil.rmtree(staging, ignore_errors=True)
    return sorted({*names, wheel.name})


def _platform_args(arch: str) -> list[str]:
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 4, -1)]
    tags += [f"{legacy[minor]}_{arch}" for minor in legacy if arch == "x86_64" or minor == 17]
    return [arg for tag in tags for arg in ("--platform", tag)]


def _download(wheel: Path, extras: str, platform: str, constraints: str, cached: Path) -> None:
    from ..atomic import atomic_dir

    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(cached, force=True) as staging:
        pins = staging / "constraints.txt"
        pins.write_text(constraints, encoding="utf-8")
        # A direct reference to our own wheel: no index is ever asked for a package called modelpack.
        requirement = f"{DIST}[{extras}] @ {wheel.absolute().as_uri()}"
        command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off",
                   "--dest", str(staging), "--only-binary=:all:", *_platform_args(PLATFORMS[platform]),
                   "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                   "--constraint", str(pins), requirement]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            text = (proc.stdout + "\n" + proc.stderr).splitlines()
            lines = [ln.strip() for ln in text if ln.strip() and not ln.startswith(("WARNING: Location", "INFO:"))]
            cause = next((i for i, ln in enumerate(lines) if ln.startswith("The conflict is caused by")), None)
            picked = lines[cause:cause + 4] if cause is not None else [ln for ln in lines if "ERROR" in ln][-2:]
            reason = " ".join(picked)[:600] or "no output"
            raise StageFailed("deploy", f"downloading the image's wheels failed ({reason}); it needs your package "
                                        "index once (later runs use the cache), or pass --requirement.")
        (staging / wheel.name).unlink(missing_ok=True)
        pins.unlink()
        (staging / "complete").write_text("", encoding="utf-8")
