"""The ``train`` pipeline: fit a registered model on a registered datamodule; and what every training pipeline
shares (`TrainingPipeline`: the Trainer, callbacks, loggers, checkpoints, resuming, the export)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pytorch_lightning as pl
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, WeightAveraging
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.strategies import FSDPStrategy

from jukebox_pl.callbacks import AtomicCheckpointIO, NonFiniteGuard, ResumeRNG, StepProgress
from jukebox_pl.checkpoints.export import CHECKPOINT_KEY, WEIGHTS_FILE, checkpoint_record, export, read_torch_file
from jukebox_pl.data.labels import Vocabulary
from jukebox_pl.distributed import EvenValidation
from jukebox_pl.errors import JukeboxError
from jukebox_pl.pipelines.base import REUSED, Pipeline, RunContext
from jukebox_pl.recipes import KwargsOf
from jukebox_pl.registry import COMPONENT_KEY, build, names, register
from jukebox_pl.signatures import SpecOf

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
EXPORT_DIR = "model"
# Arguments the pipeline owns: the recipe configures them through its own sections.
_TRAINER_OWNED = ("callbacks", "logger", "default_root_dir", "enable_checkpointing")


class RecipeInCheckpoint(Callback):
    """Stores the resolved recipe, the model's key path and the data's vocabularies in every checkpoint."""

    def __init__(
        self, recipe: Mapping[str, Any], component: str, vocabularies: Mapping[str, Mapping[str, int]] | None = None
    ) -> None:
        self.stored = checkpoint_record(recipe, component, vocabularies)

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = dict(self.stored)


def data_vocabularies(datamodule: Any) -> dict[str, dict[str, int]] | None:
    """``{"artists": {name: id}, "genres": {...}}`` of a datamodule that labels songs, else None."""
    artists, genres = getattr(datamodule, "artists", None), getattr(datamodule, "genres", None)
    if isinstance(artists, Vocabulary) and isinstance(genres, Vocabulary):
        return {"artists": artists.to_dict(), "genres": genres.to_dict()}
    return None


def check_label_sizes(
    model: pl.LightningModule, vocabularies: Mapping[str, Mapping[str, int]] | None, key: str
) -> None:
    """Refuse, before training starts, a label conditioner with fewer artist or genre ids than the data has."""
    labels = getattr(model, "labels", None)
    if vocabularies is None or labels is None:
        return
    for kind in ("artists", "genres"):
        size, ids = getattr(labels, f"n_{kind}", None), vocabularies.get(kind) or {}
        needed = max(ids.values(), default=0) + 1
        if isinstance(size, int) and size < needed:
            raise JukeboxError(
                f"{key}.labels.n_{kind}: {size} ids, but the data has {needed - 1} {kind} (and 'unknown'): "
                f"give n_{kind}={needed} or more"
            )


def model_entry(model: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """The key path and spec of the model to train: ``model`` itself, or its one named entry (``model.vqvae``)."""
    if COMPONENT_KEY in model:
        return "model", model
    if len(model) == 1:
        ((name, spec),) = model.items()
        if (isinstance(spec, Mapping) and COMPONENT_KEY in spec) or isinstance(spec, str):
            return f"model.{name}", spec
    raise JukeboxError(
        f"model: give one component spec ({COMPONENT_KEY}: NAME ...) or one named entry such as "
        f"'model.vqvae'; got keys {sorted(model)}"
    )


class SessionStart(Callback):
    """The global step training starts from in this session (after a resume); None when the fit loop had
    nothing left to do and never started."""

    def __init__(self) -> None:
        self.step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.step = trainer.global_step


@dataclass
class Fitting:
    """What a training pipeline has prepared for `TrainingPipeline.fit`."""

    model: pl.LightningModule
    datamodule: pl.LightningDataModule
    recipe: Mapping[str, Any]  # stored in every checkpoint and in the export
    key: str  # where the model's spec sits in `recipe` ("model.vqvae")
    vocabularies: Mapping[str, Mapping[str, int]] | None = None
    callbacks: list[Callback] = field(default_factory=list)  # the pipeline's own, besides the recipe's
    summary: dict[str, Any] = field(default_factory=dict)  # added to the run's summary
    # A new module of the model's structure (untrained): a sharded run's export gathers its weights into it.
    rebuild: Callable[[], pl.LightningModule] | None = None


def trainer_strategy(trainer_strategy: Any, strategy: Mapping[str, Any] | str | None) -> Any:
    """The Trainer's strategy: the `strategy` component if given, else ``trainer.strategy``, built when it names a
    registered strategy (``fsdp_blocks``, or a spec of one) and passed to Lightning as it is otherwise (``ddp``)."""
    if strategy is not None:
        return build("strategy", strategy)
    if (isinstance(trainer_strategy, Mapping) and COMPONENT_KEY in trainer_strategy) or (
        isinstance(trainer_strategy, str) and trainer_strategy in names("strategy")
    ):
        return build("strategy", trainer_strategy)
    return trainer_strategy


@dataclass
class TrainingPipeline(Pipeline):
    """What the pipelines that train share, so that each takes every training option: the Lightning Trainer
    (devices, strategy, precision...), callbacks, loggers, checkpoints, resuming from the run's last
    checkpoint, the guard against non-finite steps, progress lines, and the export at the end.

    A subclass builds the model and the datamodule in `prepare` and may change the module it exports
    (`exported`); it passes its own arguments first and the training options on, by keyword::

        def __init__(self, init_from: str, **training: Any) -> None:
            super().__init__(**training)

    Checkpoints (``checkpoints/``) and the final export (``model/``: safetensors + recipe)
    carry the resolved recipe, so ``jukebox_pl.load`` rebuilds the model from either.
    """

    data: Mapping[str, Any]
    trainer: Annotated[Mapping[str, Any], KwargsOf("pytorch_lightning:Trainer", _TRAINER_OWNED)] | None = None
    callbacks: list[Mapping[str, Any]] | None = None
    loggers: list[Literal["csv", "tensorboard"] | Mapping[str, Any]] | None = None  # None: csv
    checkpoint: (
        Annotated[Mapping[str, Any], KwargsOf("pytorch_lightning.callbacks:ModelCheckpoint", ("dirpath",))] | None
    ) = None
    seed: int | None = 0
    resume: bool = True
    max_nonfinite_steps: int = 5
    strategy: Annotated[Mapping[str, Any] | str | None, SpecOf("strategy", ())] = None
    progress_every: float = 30.0

    def run(self, context: RunContext) -> Mapping[str, Any]:
        if self.seed is not None:
            pl.seed_everything(self.seed, workers=True, verbose=False)
        fitting = self.prepare(context)
        return {**self.fit(fitting, context), **fitting.summary}

    @abc.abstractmethod
    def prepare(self, context: RunContext) -> Fitting:
        """Build the model and the datamodule (after seeding), and say what to store with them."""

    def fit(self, fitting: Fitting, context: RunContext) -> dict[str, Any]:
        """Fit the prepared model, resuming from the run's last checkpoint, then export it with its recipe."""
        model, recipe, key, vocabularies = fitting.model, fitting.recipe, fitting.key, fitting.vocabularies
        checkpoint_dir = context.run_dir / CHECKPOINT_DIR
        guard = NonFiniteGuard(self.max_nonfinite_steps)
        session = SessionStart()
        callbacks = [
            ModelCheckpoint(dirpath=checkpoint_dir, **{"save_last": True, **(self.checkpoint or {})}),
            guard,
            session,
            ResumeRNG(),
            RecipeInCheckpoint(recipe, key, vocabularies),
            EvenValidation(),
            *fitting.callbacks,
            *(build("callback", callback) for callback in self.callbacks or []),
        ]
        if self.progress_every > 0:
            callbacks.append(StepProgress(self.progress_every, context.run_dir.name))
        options = dict(self.trainer or {})
        strategy = trainer_strategy(options.get("strategy"), self.strategy)
        if strategy is not None:
            options["strategy"] = strategy
        plugins = list(options.pop("plugins", None) or [])
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        loggers = ["csv"] if self.loggers is None else self.loggers
        trainer = pl.Trainer(
            default_root_dir=context.run_dir,
            callbacks=callbacks,
            plugins=plugins,
            logger=[self._logger(spec, context.run_dir) for spec in loggers] or False,
            **options,
        )
        sharded = isinstance(trainer.strategy, FSDPStrategy)
        if sharded and fitting.rebuild is None:
            raise JukeboxError(f"{type(self).__name__} cannot export a sharded model: its Fitting has no rebuild")
        averaging = [type(callback).__name__ for callback in callbacks if isinstance(callback, WeightAveraging)]
        if sharded and averaging:
            raise JukeboxError(
                f"callbacks: {averaging[0]} (the ema callback, or ema_decay) keeps an average of the whole model "
                "on every rank, which a sharded strategy (fsdp_blocks) cannot update; train without it, or use ddp"
            )
        last = checkpoint_dir / LAST_CHECKPOINT
        resume_from = str(last) if self.resume and last.is_file() else None
        if resume_from is not None:
            # Lightning reads it with weights_only=True too, except FSDP, whose loader of a whole-file
            # checkpoint unpickles anything: refuse a file that holds more than tensors here, by name.
            read_torch_file(last, mmap=True)
        trainer.fit(model, datamodule=fitting.datamodule, ckpt_path=resume_from, weights_only=True)
        # A rerun of a finished run trains nothing: its checkpoint and export stay as they are.
        trained = session.step is not None and trainer.global_step > session.step
        if trained and not trainer.interrupted:
            # every_n_train_steps need not divide max_steps: the end is always checkpointed.
            trainer.save_checkpoint(last, weights_only=False)  # the full state: the next run resumes from it
        if guard.stopped_at is not None:
            raise JukeboxError(f"{guard.message} ({last})")
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
        exported = None
        export_dir = context.run_dir / EXPORT_DIR
        # Rank 0 decides, so that every rank takes part in gathering a sharded model.
        export_now = trainer.strategy.broadcast(trained or not (export_dir / WEIGHTS_FILE).is_file())
        if export_now:
            module = model
            if sharded:  # each rank holds a shard: the whole model is gathered on rank 0 into a plain copy
                whole = trainer.strategy.lightning_module_state_dict()
                if trainer.is_global_zero:
                    module = fitting.rebuild()
                    module.load_state_dict(whole)
            if trainer.is_global_zero:
                exported = str(export(self.exported(module), export_dir, recipe, key, vocabularies))
        elif trainer.is_global_zero:
            exported = str(export_dir)
        return {
            "run_dir": str(context.run_dir),
            "global_step": trainer.global_step,
            "resumed_from": resume_from,
            "last_checkpoint": str(last) if last.is_file() else None,
            "export": exported,
            REUSED: not trained and exported is not None,
            **metrics,
        }

    def exported(self, model: pl.LightningModule) -> pl.LightningModule:
        """The module to export at the end; fine-tuning merges its adapters here."""
        return model

    @staticmethod
    def _logger(spec: str | Mapping[str, Any], run_dir: Path) -> Logger:
        if spec == "csv":
            # A new version_N folder per session: resuming must not overwrite earlier metrics. Rows are
            # written as they are logged, so that a killed run keeps its curve up to the kill.
            return CSVLogger(save_dir=run_dir, name="logs", version=None, flush_logs_every_n_steps=1)
        if spec == "tensorboard":
            return TensorBoardLogger(save_dir=run_dir, name="logs", version="")
        if isinstance(spec, Mapping):
            return build(None, spec)
        raise JukeboxError(f"loggers: unknown logger {spec!r}; use 'csv', 'tensorboard' or a component spec")


@register("pipeline", "train")
class TrainPipeline(TrainingPipeline):
    """Fit a model on a datamodule with the Lightning Trainer; resumes from the run's last checkpoint."""

    def __init__(self, model: Mapping[str, Any], **training: Any) -> None:
        super().__init__(**training)
        self.model = dict(model)

    def prepare(self, context: RunContext) -> Fitting:
        key, spec = model_entry(self.model)
        model = build(None, spec)
        if not isinstance(model, pl.LightningModule):
            raise JukeboxError(f"{key}: {spec} is not a LightningModule")
        datamodule = build("datamodule", self.data)
        vocabularies = data_vocabularies(datamodule)
        check_label_sizes(model, vocabularies, key)
        return Fitting(model, datamodule, context.recipe, key, vocabularies, rebuild=lambda: build(None, spec))
