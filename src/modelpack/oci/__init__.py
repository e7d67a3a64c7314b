"""Packages in OCI registries, as CNCF ModelPack artifacts: `modelpack push` and `modelpack pull`.

`registry` speaks the OCI distribution API (references, credentials, token auth, blobs, manifests);
`artifact` maps a package to the CNCF model-spec's manifest, config and layers, and back; `unpack` writes what
a registry sends, within a pull's limits. Names load on first use, so the CLI can read `PullLimits`' defaults
without importing the package reader.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .artifact import PullResult, PushResult, pull, push
    from .registry import Reference
    from .unpack import PullLimits

_HOMES = {"PullResult": "artifact", "PushResult": "artifact", "pull": "artifact", "push": "artifact",
          "Reference": "registry", "PullLimits": "unpack"}
__all__ = ["PullLimits", "PullResult", "PushResult", "Reference", "pull", "push"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
