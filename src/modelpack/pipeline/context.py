"""The run context: what every stage sees of the run (the `StageContext` protocol's implementation).

It holds the run's scratch space, the examples every measurement uses, the reference outputs and conversions
cached per model, and the sizes measured in the background.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ..data import SYNTHETIC_SIZE, Dataset, load_dataset, random_inputs
from ..errors import StageFailed
from ..evaluation import accuracy, fidelity, run_batched, token_mask
from ..formats import ModelRef, Repr
from ..package import manifest as mf
from ..package import model_size
from ..runtimes import KerasRunner, load_runner
from ..signature import Signature, parse_dims
from . import convert, isolation
from .spec import PipelineSpec
from .writer import Sizes


class Reporter(Protocol):
    def stage_started(self, index: int, total: int, name: str) -> None: ...
    def stage_finished(self, record: mf.StageRecord) -> None: ...
    def note(self, message: str) -> None: ...


class NullReporter:
    def stage_started(self, index: int, total: int, name: str) -> None:
        pass

    def stage_finished(self, record: mf.StageRecord) -> None:
        pass

    def note(self, message: str) -> None:
        pass


class RunContext:
    """State of one run: scratch space, cached reference outputs and conversions. It is the StageContext
    every stage gets."""

    def __init__(self, spec: PipelineSpec, source: ModelRef, signature: Signature, work: Path,
                 eval_data: Dataset | None, reporter: Reporter, sizes: Sizes) -> None:
        self.spec = spec
        self.source = source
        self.signature = signature
        self.work = work
        self.eval_data = eval_data
        self.reporter = reporter
        self._outputs: dict[Path, dict[str, Any]] = {}
        self._converted: dict[tuple[Path, Repr, int | None], ModelRef] = {}
        self._datasets: dict[tuple[str, str], Dataset] = {}
        self.source_accuracy: float | None = None
        self.native: Any = None  # the source's Keras model, loaded once for its signature and its outputs
        # A big model's conversions run in fresh processes, so that what the framework takes is returned.
        self.child_conversions = isolation.spawn_wanted(model_size(source.path))
        self.sizes = sizes
        sizes.future(source.path)
        # Every measurement uses the same examples: the first --eval-limit rows, labels cut with them.
        # Without eval data, synthetic examples at realistic sizes: what the stages time is what a user runs.
        dims = parse_dims(spec.dim, signature) if spec.dim else {}
        self.examples = (eval_data if eval_data is not None else
                         Dataset(random_inputs(signature, dims=dims, other=SYNTHETIC_SIZE), None, None,
                                 {t.name: signature.batch_axis(t.name) for t in signature.inputs}))
        self.probe = self.examples.head(8).inputs

    def outputs(self, ref: ModelRef) -> dict[str, Any]:
        """Outputs of `ref` on the eval inputs (or random ones), cached per model."""
        if ref.path not in self._outputs:
            if ref.path == self.source.path and self.native is not None:  # the Keras model already loaded
                runner: Any = KerasRunner(ref, self.signature, model=self.native)
            else:
                runner = load_runner(ref, self.signature, safe=not self.spec.unsafe_load)
            self._outputs[ref.path] = run_batched(runner, self.examples)
        return self._outputs[ref.path]

    def convert(self, ref: ModelRef, rep: Repr, opset: int | None = None) -> ModelRef:
        """Convert, caching each hop so two exports share their SavedModel; the hops not yet cached run
        together (in one child process for a big model)."""
        chain = convert.route(ref.rep, rep)
        if chain is None:
            raise StageFailed("convert", f"no conversion from {ref.rep} to {rep}")

        def key(src: ModelRef, step: Repr) -> tuple[Path, Repr, int | None]:
            return (src.path, step, opset if step is Repr.ONNX else None)

        current = ref
        for index, step in enumerate(chain[1:], 1):
            if key(current, step) not in self._converted:
                todo = chain[index:]
                self.reporter.note(f"converting {' -> '.join(str(r) for r in [current.rep, *todo])}"
                                   + (" in a child process" if self.child_conversions else ""))
                walked = convert.hops(current, todo, self.work, self.signature, opset=opset or convert.DEFAULT_OPSET,
                                      safe=not self.spec.unsafe_load, in_child=self.child_conversions)
                for src, out in zip([current, *walked], walked):
                    self._converted[key(src, out.rep)] = out
                self.sizes.future(walked[-1].path)  # the model asked for is measured next
            current = self._converted[key(current, step)]
        return current

    @property
    def objective(self) -> str:
        return self.spec.objective

    def scratch(self, name: str) -> Path:
        return convert.scratch(self.work, name)

    def dataset(self, path: Any, option: str) -> Dataset:
        key = (str(path), option)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(path, self.signature, option)
        return self._datasets[key]

    def measure(self, ref: ModelRef) -> dict[str, Any]:
        """Size (raw, and as the archive would store it: a future until settled), accuracy, and fidelity
        against the source."""
        found: dict[str, Any] = {"size_bytes": model_size(ref.path), "compressed_bytes": self.sizes.future(ref.path)}
        outputs = self.outputs(ref)
        if ref.path != self.source.path:
            found.update(fidelity(self.outputs(self.source), outputs, token_mask(self.examples.inputs)))
        if self.eval_data is not None and self.eval_data.labels is not None:
            acc = accuracy(outputs, self.eval_data.labels)
            if acc is not None:
                found["accuracy"] = round(acc, 3)
                if self.source_accuracy is not None and ref.path != self.source.path:
                    found["accuracy_drop"] = round(self.source_accuracy - acc, 3)
        return found

    # The rest of what a stage sees (StageContext): the run is the context.
    @property
    def workdir(self) -> Path:
        return self.work

    @property
    def atol(self) -> float:
        return self.spec.atol

    @property
    def safe(self) -> bool:
        return not self.spec.unsafe_load

    def note(self, message: str) -> None:
        self.reporter.note(message)
