"""The `tfserving` target: the SavedModel laid out as <base>/<name>/<version>/, and models.config."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UsageError
from ..formats import Repr
from ..package import Package
from . import DeployOptions
from .triton import integer_version


def models_config(name: str) -> str:
    return ("model_config_list {\n"
            "  config {\n"
            f'    name: "{name}"\n'
            f'    base_path: "/models/{name}"\n'
            '    model_platform: "tensorflow"\n'
            "  }\n"
            "}\n")


def write(pkg: Package, out: Path, options: DeployOptions, final: Path) -> list[str]:
    if Repr.SAVEDMODEL not in pkg.formats():
        raise UsageError(f"{pkg.source}: TF Serving serves a SavedModel and this package has none; rebuild with "
                         f"'modelpack optimize ... export --format savedmodel'.")
    version = integer_version(pkg, options, "TF Serving")
    shutil.copytree(pkg.path_of(pkg.artifact(Repr.SAVEDMODEL)), out / pkg.name / version, symlinks=False)
    (out / "models.config").write_text(models_config(pkg.name), encoding="utf-8")
    command = (f"docker run --rm -p 8501:8501 -v \"$(realpath {final}):/models\" tensorflow/serving "
               f"--model_config_file=/models/models.config")
    script = ('#!/bin/sh\n# Serve this directory with TF Serving (REST on 8501, :predict).\ncd "$(dirname "$0")" && '
              'exec docker run --rm -p 8501:8501 -v "$PWD:/models" tensorflow/serving '
              '--model_config_file=/models/models.config\n')
    (out / "serve.sh").write_text(script, encoding="utf-8")
    (out / "serve.sh").chmod(0o755)
    return [command, f"curl -d '{{\"instances\": [...]}}' localhost:8501/v1/models/{pkg.name}:predict"]
