"""The stage plugin API.

A stage is a class with a name, its parameters (a `Params` class declaring each
option once, as an annotated `option(...)`), the representations it accepts, and a
`run()` that reads a model and returns a new one. Plugin authors never write click
code: the CLI builds each stage's subcommand from its options, and a TOML pipeline
file is validated against the same options.

Register a stage in your package's pyproject.toml:

    [project.entry-points."modelpack.stages"]
    mystage = "my_package.module:MyStage"
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

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


def option(type: Any = str, *, default: Any = None, help: str = "", multiple: bool = False, required: bool = False,
           is_flag: bool = False, short: str | None = None, name: str | None = None) -> Any:
    """One option, declared on a `Params` class as `key: its_type = option(...)`: the annotation types
    `params.key` for mypy, the option makes `--key` and the pipeline file's `key` (named after the attribute).

    Typed `Any` (as pydantic's `Field` is), so that the annotation, not the option, is what the checker sees."""
    return Option(name or "", type, default, help, multiple, required, is_flag, short)


class Params(Mapping[str, Any]):
    """A stage's resolved parameters, read-only: `params.sparsity` (or `params["sparsity"]`).

    Every option has a value (its default when not given). A stage declares each option once, on a subclass
    named in `Stage[...]`; the stage's `options` come from it (a subclass's own options first, then its bases'):

        class PruneParams(Params):
            sparsity: float = option(click.FloatRange(0, 1), default=0.5, help="Fraction of weights set to zero.")
            structure: str | None = option(help="N:M structured sparsity, e.g. 2:4.")

        class PruneStage(Stage[PruneParams]):
            params_type = PruneParams
            def run(self, model, params: PruneParams, ctx): ... params.sparsity ...

    (A subclass with bare annotations and the stage's own `options` tuple, the older way, still works.)
    """

    __slots__ = ("_stage", "_values")
    __options__: ClassVar[tuple[Option, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own: list[Option] = []
        for key, value in list(vars(cls).items()):
            if isinstance(value, Option):
                own.append(replace(value, name=value.name or key.replace("_", "-")))
                delattr(cls, key)  # read through __getattr__, from the resolved values
        keys = {o.key for o in own}
        inherited = {o.key: o for base in reversed(cls.__bases__) for o in getattr(base, "__options__", ())}
        if own:
            bare = [k for k in vars(cls).get("__annotations__", {}) if k not in keys]
            if bare:
                raise TypeError(f"{cls.__name__}: annotation(s) {', '.join(bare)} have no option(...): declare "
                                "each parameter as `key: type = option(...)`.")
        cls.__options__ = (*own, *(o for key, o in inherited.items() if key not in keys))

    def __init__(self, stage: str, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"stage '{self._stage}' has no option '{key}' "
                                 f"(it has: {', '.join(self._values) or 'none'}).") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"stage '{self._stage}': parameters are read-only.")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._values!r})"

    def __getstate__(self) -> tuple[str, dict[str, Any]]:  # crosses the isolation boundary with the spec
        return self._stage, self._values

    def __setstate__(self, state: tuple[str, dict[str, Any]]) -> None:
        object.__setattr__(self, "_stage", state[0])
        object.__setattr__(self, "_values", state[1])


P = TypeVar("P", bound=Params)


class StageContext(Protocol):
    """What a stage may use besides its own options. The pipeline's run implements it."""

    @property
    def workdir(self) -> Path:
        """The run's scratch directory (inside the output's temporary directory)."""

    @property
    def signature(self) -> Signature:
        """The source model's input and output tensors."""

    @property
    def source(self) -> ModelRef:
        """The model the pipeline started from."""

    @property
    def eval_data(self) -> Dataset | None:
        """--eval-data, cut to --eval-limit examples, or None."""

    @property
    def atol(self) -> float:
        """The largest absolute output difference an export may show."""

    @property
    def safe(self) -> bool:
        """False with --unsafe-load: Keras Lambda layers may load."""

    @property
    def objective(self) -> str:
        """What the run optimizes for: "latency" or "size" (`--objective`)."""

    @property
    def probe(self) -> dict[str, Any]:
        """A few eval (or random) inputs, by input name: enough to check a model loads and runs."""

    @property
    def examples(self) -> Dataset:
        """The examples `outputs()` runs on: the eval data, or random inputs built from the signature."""

    def note(self, message: str) -> None:
        """Show a line of progress (and keep it in the stage's lineage record when the stage returns it)."""

    def dataset(self, path: Path | str, option: str) -> Dataset:
        """Load an .npz given to one of the stage's options, checked against the signature (cached)."""

    def convert(self, model: ModelRef, rep: Repr, opset: int | None = None) -> ModelRef:
        """`model` in representation `rep`, converted through modelpack's routes (cached per hop)."""

    def outputs(self, model: ModelRef) -> dict[str, Any]:
        """`model`'s outputs on `examples`, by output name (cached per model)."""

    def scratch(self, name: str) -> Path:
        """A fresh path for a file the stage writes, inside `workdir`."""


@dataclass
class StageResult:
    """A stage's output: the model the next stage sees, plus artifacts for the package."""

    model: ModelRef
    artifacts: list[ModelRef] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    artifact_metrics: dict[Repr, dict[str, Any]] = field(default_factory=dict)
    archive_compression: str | None = None  # how `pack` should compress this package, when a stage decides


class Stage(Generic[P]):
    """Base class of every stage, built-in or plugin."""

    name: ClassVar[str]
    params_type: ClassVar[type[Params]] = Params  # declares each option once (`key: type = option(...)`)
    help: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()  # from params_type; a stage without one may list its own
    # Representations the stage works on, preferred first; the pipeline converts to one of them.
    accepts: ClassVar[tuple[Repr, ...]] = tuple(Repr)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.params_type.__options__
        if declared and "options" in vars(cls):
            raise TypeError(f"{cls.__name__}: options are declared on {cls.params_type.__name__}; "
                            "drop the stage's own options tuple.")
        if declared:
            cls.options = declared

    def defaults(self) -> dict[str, Any]:
        return {o.key: (tuple(o.default or ()) if o.multiple else o.default) for o in self.options}

    def resolve(self, given: Mapping[str, Any]) -> P:
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
        return cast(P, self.params_type(self.name, params))

    def accepts_for(self, params: P) -> tuple[Repr, ...]:
        """What the stage accepts with these parameters; by default `accepts`."""
        return self.accepts

    def plan(self, params: P, rep: Repr) -> Repr:
        """Check the parameters against the input representation before any work; return the output's."""
        return rep

    # What a stage declares to the run before any work (the engine names no stage: built-ins use these too).
    def archive_compression(self, params: P) -> str | None:
        """The archive codec this stage picks for the package, known from its parameters; None leaves it.

        The last stage to pick one wins, and every model of the run is measured with that codec."""
        return None

    def trains(self, params: P) -> bool:
        """Whether the stage trains a model with these parameters (the run then keeps TensorFlow's
        training stable, and says so)."""
        return False

    def check_run(self, params: P, *, labels: bool) -> None:
        """Refuse, before any stage runs, what this run cannot measure (`labels`: the eval data has labels)."""

    def run(self, model: ModelRef, params: P, ctx: StageContext) -> StageResult:
        """Read `model` (never write over it; `ctx.scratch()` gives new paths) and return the new one."""
        raise NotImplementedError
