"""A repository model whose versions come from an OCI registry tag: `source = "oci://HOST/REPO:TAG"`.

The tag is a moving pointer; each digest it has pointed at is one version. A digest seen for the first time is
pulled (`oci.pull`, every layer's digest checked, within `PullLimits`, and with --require-signature its
signature checked before any unsigned layer is fetched) into the model's cache directory as the next version
number, `CACHE/KEY/N/`, which is then served like a directory's `N/`: verified again, loaded and warmed up
before it gets traffic. `digests.json` beside the versions remembers which digest each number is, so a
restart serves what it had and pulls nothing the tag still points at. With polling on, each poll asks the
registry for the tag's digest: one manifest request, no download when it has not moved.

The cache directory is --oci-cache, else $XDG_CACHE_HOME/modelpack/oci (~/.cache/modelpack/oci).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from ..atomic import atomic_file
from ..errors import InputError

INDEX = "digests.json"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelpack" / "oci"


def cache_dir(cache: Path, model: str, reference: str) -> Path:
    """Where one model's pulled versions live: named after the model, and the reference (a tag moved to another
    repository starts a new numbering)."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", reference.removeprefix("oci://"))[:80]
    return cache / f"{model}--{tag}-{hashlib.sha256(reference.encode()).hexdigest()[:12]}"


def read_index(directory: Path) -> dict[str, int]:
    """{digest: version} of what was pulled so far (empty before the first pull)."""
    try:
        data = json.loads((directory / INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InputError(f"{directory / INDEX}: unreadable ({exc}); delete the directory to pull again.") from None
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise InputError(f"{directory / INDEX}: not a table of digest -> version; delete the directory to pull again.")
    return data


def current_digest(reference: str, plain_http: bool = False) -> str:
    """The digest the tag points at now (one manifest request)."""
    from ..errors import ModelpackError
    from ..oci.artifact import OCI_MANIFEST
    from ..oci.registry import Reference, Registry
    from ..oci.unpack import escaped

    ref = Reference.parse(reference, "source")
    try:
        with Registry(ref, plain_http=plain_http, timeout_s=60.0) as registry:
            return registry.get_manifest(OCI_MANIFEST)[1]
    except ModelpackError as exc:
        raise escaped(exc) from None


def pull_version(reference: str, digest: str, directory: Path, *, pubkey: Path | None = None,
                 plain_http: bool = False) -> int:
    """Pull `digest` of the reference into `directory` as the next version; returns its number."""
    from ..oci.artifact import pull
    from ..oci.registry import Reference

    index = read_index(directory)
    if digest in index:
        return index[digest]
    ref = Reference.parse(reference, "source")
    version = max(index.values(), default=0) + 1
    directory.mkdir(parents=True, exist_ok=True)
    pinned = f"oci://{ref.registry}/{ref.repository}@{digest}"  # the digest just read, not whatever the tag is now
    result = pull(pinned, directory / str(version), force=True, pubkey=pubkey, plain_http=plain_http)
    if not result.package:
        import shutil

        shutil.rmtree(directory / str(version), ignore_errors=True)
        raise InputError(f"{reference}: the artifact ({digest}) holds no modelpack package.")
    index[digest] = version
    with atomic_file(directory / INDEX, force=True) as tmp:
        tmp.write_text(json.dumps(index, indent=1), encoding="utf-8")
    return version
