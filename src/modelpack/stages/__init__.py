"""The stage plugin API.

A stage is a class with a name, a tuple of `Option`s, the representations it
accepts, and a `run()` that reads a model and returns a new one. Plugin authors
never write click code: the CLI builds each stage's subcommand from its options,
and a TOML pipeline file is validated against the same options.

Register a stage in your package's pyproject.toml:

    [project.entry-points."modelpack.stages"]
    mystage = "my_package.module:MyStage"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import click

from ..data import Dataset
from ..errors import UsageError
from ..formats import ModelRef, Repr
from ..signature import Signature


@dataclass(frozen=True)
class Option:
    """One option of a stage: `--name` on the command line, `name = ...` in a pipeline file."""

    name: str
    type: Any = str  # a Python type or a click.ParamType (click.Choice, click.FloatRange, ...)
    default: Any = None
    help: str = ""
    multiple: bool = False
    required: bool = False
    is_flag: bool = False
    short: str | None = None  # e.g. "-o", for the command line only

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def param_type(self) -> click.ParamType[Any]:
        found: click.ParamType[Any] = click.types.convert_type(bool if self.is_flag else self.type)
        return found

    def click_option(self) -> click.Option:
        kwargs: dict[str, Any] = {"help": self.help, "show_default": self.default not in (None, (), [])}
        decls = [*([self.short] if self.short else []), self.flag, self.key]
        if self.is_flag:
            return click.Option(decls, is_flag=True, default=bool(self.default), **kwargs)
        return click.Option(
            decls, type=self.param_type, default=self.default, multiple=self.multiple,
            required=self.required, **kwargs,
        )

    def convert(self, value: Any, stage: str) -> Any:
        """Validate a value from a pipeline file with the same rules click applies to the command line."""
        try:
            if self.multiple:
                values = value if isinstance(value, (list, tuple)) else [value]
                return tuple(self.param_type.convert(v, None, None) for v in values)
            return self.param_type.convert(value, None, None)
        except click.BadParameter as exc:
            raise UsageError(f"stage '{stage}': option {self.flag}: {exc.message}") from exc


@dataclass
class StageContext:
    """What a stage may use besides its own options."""

    workdir: Path
    signature: Signature
    source: ModelRef
    eval_data: Dataset | None = None
    atol: float = 1e-4
    safe: bool = True
    probe: dict[str, Any] = field(default_factory=dict)  # a few eval (or random) inputs
    examples: Dataset | None = None  # the examples outputs() runs on, with each input's batch axis
    note: Callable[[str], None] = lambda message: None
    dataset: Callable[[Any, str], Dataset] = field(default=lambda path, option: None)  # type: ignore[assignment]
    convert: Callable[..., ModelRef] = field(default=lambda m, r, opset=None: m)
    outputs: Callable[[ModelRef], dict[str, Any]] = field(default=lambda m: {})
    scratch: Callable[[str], Path] = field(default=lambda name: Path(name))


@dataclass
class StageResult:
    """A stage's output: the model the next stage sees, plus artifacts for the package."""

    model: ModelRef
    artifacts: list[ModelRef] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    artifact_metrics: dict[Repr, dict[str, Any]] = field(default_factory=dict)
    archive_compression: str | None = None  # how `pack` should compress this package, when a stage decides


class Stage:
    """Base class of every stage, built-in or plugin."""

    name: ClassVar[str]
    help: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    # Representations the stage works on, preferred first; the pipeline converts to one of them.
    accepts: ClassVar[tuple[Repr, ...]] = tuple(Repr)

    def defaults(self) -> dict[str, Any]:
        return {o.key: (tuple(o.default or ()) if o.multiple else o.default) for o in self.options}

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """Full, validated parameters from values given on the command line or in a file."""
        by_key = {o.key: o for o in self.options}
        unknown = sorted(set(given) - set(by_key))
        if unknown:
            valid = ", ".join(o.flag for o in self.options) or "none"
            raise UsageError(f"stage '{self.name}': unknown option(s) {', '.join(unknown)}; valid: {valid}.")
        params = self.defaults()
        for key, value in given.items():
            params[key] = by_key[key].convert(value, self.name) if value is not None else None
        for option in self.options:
            if option.required and params.get(option.key) in (None, ()):
                raise UsageError(f"stage '{self.name}': option {option.flag} is required.")
        return params

    def accepts_for(self, params: dict[str, Any]) -> tuple[Repr, ...]:
        """What the stage accepts with these parameters; by default `accepts`."""
        return self.accepts

    def plan(self, params: dict[str, Any], rep: Repr) -> Repr:
        """Check the parameters against the input representation before any work; return the output's."""
        return rep

    def run(self, model: ModelRef, params: dict[str, Any], ctx: StageContext) -> StageResult:
        raise NotImplementedError


# Options several built-in stages share, declared once.
TRAIN_DATA = Option("train-data", click.Path(dir_okay=False), help="An .npz with arrays x and y to fine-tune on.")
EPOCHS = Option("epochs", click.IntRange(1, 1000), default=12, help="Fine-tuning epochs (with --train-data).")
BATCH_SIZE = Option("batch-size", click.IntRange(1, 65536), default=32, help="Fine-tuning batch size.")
LEARNING_RATE = Option("learning-rate", click.FloatRange(0, 1, min_open=True), default=1e-3,
                       help="Fine-tuning learning rate (Adam).")
LOSS = Option("loss", click.Choice(["auto", "sparse_categorical_crossentropy", "categorical_crossentropy", "mse",
                                    "binary_crossentropy"]), default="auto",
              help="Fine-tuning loss; auto picks one from the labels and the model's outputs.")
FINE_TUNING = (TRAIN_DATA, EPOCHS, BATCH_SIZE, LEARNING_RATE, LOSS)
