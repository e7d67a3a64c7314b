"""Pipeline files: TOML with the same stage and option names as the command line.

    input = "model.keras"
    output = "build/pkg"
    eval_data = "eval.npz"

    [[stages]]
    name = "export"
    format = ["onnx", "tflite"]

Relative paths are relative to the file's own directory, so a pipeline file can
travel with its model.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import click

from ..errors import InputError, UsageError
from ..stages import Option, registry
from .spec import PATH_OPTIONS, SPEC_OPTIONS, PipelineSpec, StageSpec

PATH_KEYS = PATH_OPTIONS
# The pipeline file's top-level keys: INPUT, and every global option of `optimize` (the same Option list).
GLOBALS: dict[str, Option] = {"input": Option("input", click.Path(path_type=Path)),
                              **{o.key: o for o in SPEC_OPTIONS}}


def _global_keys() -> list[str]:
    return list(GLOBALS)


def _global_value(path: Path, key: str, value: Any) -> Any:
    """A top-level value checked and converted by its option's type, as the command line would be."""
    option = GLOBALS[key]
    if key in PATH_KEYS:
        if not isinstance(value, str):
            raise UsageError(f"pipeline file '{path}': '{key}' must be a path string, not {type(value).__name__}.")
        value = str(path.parent / value)
    elif option.is_flag and not isinstance(value, bool):
        raise UsageError(f"pipeline file '{path}': '{key}' must be true or false, not {value!r}.")
    elif option.multiple and isinstance(value, list):
        return option.convert(value, "pipeline")
    elif isinstance(value, (dict, list)):
        raise UsageError(f"pipeline file '{path}': '{key}' takes one value ({option.help.split('  [')[0]}), "
                         f"not a {'table' if isinstance(value, dict) else 'list'}.")
    try:
        return option.param_type.convert(value, None, None)
    except click.BadParameter as exc:
        raise UsageError(f"pipeline file '{path}': '{key}': {exc.message}") from exc


def load(path: Path) -> PipelineSpec:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"pipeline file '{path}': no such file.") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"pipeline file '{path}': not valid TOML ({exc}).") from exc
    base = path.parent
    stages_data = data.pop("stages", [])
    unknown = sorted(set(data) - set(_global_keys()))
    if unknown:
        raise UsageError(f"pipeline file '{path}': unknown key(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(_global_keys())}, and [[stages]] tables.")
    values = {key: _global_value(path, key, value) for key, value in data.items()}
    if not isinstance(stages_data, list) or not all(isinstance(s, dict) for s in stages_data):
        raise UsageError(f"pipeline file '{path}': 'stages' must be an array of tables ([[stages]]).")
    stages = []
    for index, table in enumerate(stages_data, 1):
        table = dict(table)
        name = table.pop("name", None)
        if not isinstance(name, str):
            raise UsageError(f"pipeline file '{path}': stage {index} has no 'name'.")
        stage = registry.get(name)
        by_key = {o.key: o for o in stage.options}
        params = {}
        for key, value in table.items():
            key = key.replace("-", "_")
            option = by_key.get(key)
            if option is not None and isinstance(option.param_type, click.Path) and isinstance(value, str):
                value = str(base / value)
            params[key] = value
        try:
            stage.resolve(params)  # validate now, so the error names this file
        except UsageError as exc:
            raise UsageError(f"pipeline file '{path}': {exc}") from exc
        stages.append(StageSpec(name, params))
    return PipelineSpec(stages=stages, **{"input": None, "output": None, **values})


def dump(spec: PipelineSpec, path: Path) -> str:
    """TOML text for `spec`, with paths written relative to `path`'s directory."""
    import tomli_w

    base = path.absolute().parent
    data: dict[str, Any] = {}
    for key in _global_keys():
        value = getattr(spec, key)
        if value is None or value is False:
            continue
        if key in PATH_KEYS:
            value = _relative(Path(value), base)
        data[key] = value
    stages = []
    for stage_spec in spec.stages:
        stage = registry.get(stage_spec.name)
        params = stage.resolve(stage_spec.params)
        table: dict[str, Any] = {"name": stage_spec.name}
        for option in stage.options:
            value = params.get(option.key)
            if value is None or value == ():
                continue
            if isinstance(option.param_type, click.Path):
                value = _relative(Path(value), base)
            table[option.key] = list(value) if isinstance(value, tuple) else value
        stages.append(table)
    data["stages"] = stages
    return tomli_w.dumps(data)


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.absolute(), base)).as_posix()
