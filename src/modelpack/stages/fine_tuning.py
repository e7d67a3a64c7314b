"""Fine-tuning, shared by the stages that change a Keras model's weights (prune, quantize --method qat,
compress --clusters): its options, its typed parameters, and the helpers that turn them into a tfmot run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..errors import UsageError
from ..formats import ModelRef, Repr
from . import Params, StageContext, option

if TYPE_CHECKING:
    from ..frameworks.tfmot import Training

class FineTuningParams(Params):
    """The parameters every fine-tuning stage has (after its own)."""

    train_data: str | None = option(click.Path(dir_okay=False), help="An .npz with arrays x and y to fine-tune on.")
    epochs: int = option(click.IntRange(1, 1000), default=12, help="Fine-tuning epochs (with --train-data).")
    batch_size: int = option(click.IntRange(1, 65536), default=32, help="Fine-tuning batch size.")
    learning_rate: float = option(click.FloatRange(0, 1, min_open=True), default=1e-3,
                                  help="Fine-tuning learning rate (Adam).")
    loss: str = option(click.Choice(["auto", "sparse_categorical_crossentropy", "categorical_crossentropy", "mse",
                                     "binary_crossentropy"]), default="auto",
                       help="Fine-tuning loss; auto picks one from the labels and the model's outputs.")


class FineTuning:
    """A stage with the fine-tuning options: it trains when given --train-data (mixed in before `Stage`)."""

    def trains(self, params: FineTuningParams) -> bool:
        return bool(params.train_data)


def training_from(params: FineTuningParams, ctx: StageContext) -> Training | None:
    """Fine-tuning settings from the shared options, or None without --train-data."""
    from ..frameworks.tfmot import Training

    if not params.train_data:
        return None
    data = ctx.dataset(params.train_data, "--train-data")
    if data.labels is None:
        raise UsageError(f"--train-data '{params.train_data}' has no labels (array 'y'); fine-tuning needs them.")
    return Training(data, params.epochs, params.batch_size, params.learning_rate, params.loss)


def save_tf_keras(model: Any, ctx: StageContext, name: str) -> ModelRef:
    out = ctx.scratch(f"{name}.keras")
    model.save(str(out))
    return ModelRef(Repr.KERAS, out, "tf_keras", "keras")
