"""Packages in OCI registries, as CNCF ModelPack artifacts: `modelpack push` and `modelpack pull`.

`registry` speaks the OCI distribution API (references, credentials, token auth, blobs, manifests);
`artifact` maps a package to the CNCF model-spec's manifest, config and layers, and back.
"""

from __future__ import annotations

from .artifact import PullResult, PushResult, pull, push
from .registry import Reference

__all__ = ["PullResult", "PushResult", "Reference", "pull", "push"]
