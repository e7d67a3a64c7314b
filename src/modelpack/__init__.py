"""modelpack: take a trained model to a verified, optimized, deployable package.

The Python API (`modelpack.api`): `optimize`, `benchmark`, `open`, `create_app`, and `push`/`pull`
(`modelpack.oci`). They are imported on first use, so `import modelpack` loads no framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import benchmark, create_app, open, optimize
    from .oci import pull, push

_LAZY = {"optimize": "api", "benchmark": "api", "open": "api", "create_app": "api", "push": "oci", "pull": "oci"}
__all__ = ["__version__", "benchmark", "create_app", "open", "optimize", "pull", "push"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'modelpack' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
