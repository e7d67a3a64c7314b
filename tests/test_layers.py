"""The layers point one way: no module imports from a layer above its own.

The layers are written down once, here, lowest first; a module belongs to the longest prefix that names it. Every
import counts, at module level or inside a function (a lazy import is still a dependency); only imports under
`if TYPE_CHECKING:` are left out, since they never run. Cycles inside `serve/` have their own test.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("modelpack", "modelpack.errors"),  # the root module holds only __version__ and lazy re-exports
    ("modelpack.atomic", "modelpack.formats", "modelpack.signature", "modelpack.datatypes"),
    ("modelpack.data",),
    ("modelpack.package.manifest", "modelpack.package.signing", "modelpack.package.files"),
    ("modelpack.frameworks", "modelpack.runtimes", "modelpack.inspection", "modelpack.evaluation", "modelpack.timing"),
    ("modelpack.package.archive",),
    ("modelpack.package.encryption",),
    ("modelpack.package",),  # dir.py and the package's front door
    ("modelpack.summary", "modelpack.bench"),
    ("modelpack.pipeline.convert", "modelpack.pipeline.isolation"),  # what stages use of the pipeline
    ("modelpack.stages",),
    ("modelpack.pipeline",),
    ("modelpack.discovery", "modelpack.oci"),  # registries: below the server that registers with them
    ("modelpack.serve",),
    ("modelpack.deploy",),
    ("modelpack.api", "modelpack.testing"),
    ("modelpack.cli", "modelpack.__main__"),
)


def layer_of(module: str) -> int:
    best, found = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return found


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """(line, module) for every modelpack import in a file, lazy ones too, not those under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(branch.test)
                   for stmt in branch.body for node in ast.walk(stmt)}
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` names a module x; `from .m import name` names m.
            found += [(node.lineno, f"{target}.{alias.name}" if not node.module else target) for alias in node.names]
    return [(line, module) for line, module in found if module == "modelpack" or module.startswith("modelpack.")]


def violations(src: Path = SRC) -> list[str]:
    found = []
    for path in sorted((src / "modelpack").rglob("*.py")):
        importer = module_name(path, src)
        for line, imported in imports(path, src):
            if layer_of(imported) > layer_of(importer):
                found.append(f"{path.relative_to(src)}:{line}: {importer} (layer {layer_of(importer)}) imports "
                             f"{imported} (layer {layer_of(imported)}), a layer above it")
    return found


def test_no_module_imports_from_a_layer_above_it() -> None:
    assert violations() == []


def test_the_layer_check_sees_a_lazy_import_that_points_up(tmp_path: Path) -> None:
    """The check itself can fail: a function-level import of the CLI from the package format is caught, and a
    TYPE_CHECKING import is not."""
    source = tmp_path / "modelpack" / "package"
    source.mkdir(parents=True)
    (source / "manifest.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                        "    from ..serve import app\n\ndef f():\n    from ..cli import render\n")
    assert violations(tmp_path) == ["modelpack/package/manifest.py:6: modelpack.package.manifest (layer 3) imports "
                                    "modelpack.cli (layer 16), a layer above it"]
