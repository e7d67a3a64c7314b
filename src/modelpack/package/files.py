"""The files a model is made of on disk: the model file, and what it reads beside itself."""

from __future__ import annotations

from pathlib import Path


def companions(path: Path) -> list[Path]:
    """Files a model reads besides itself: an ONNX model's external data (checked to stay beside it)."""
    if not path.is_file() or path.suffix.lower() != ".onnx":
        return []
    import onnx

    from ..formats import external_files

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX after all: no companions
        return []
    return [path.parent / name for name in external_files(model, path)]
