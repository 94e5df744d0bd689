"""The ``finetune`` pipeline: teach a trained prior new artists or genres, training only what the recipe says.

From the prior at `init_from` (an export folder or a train/finetune ``.ckpt``, with its
vocabularies), the pipeline

1. reads the artist and genre names of the new data (code shards) and appends those the
   prior does not know (or the names given as `new_artists` / `new_genres`) to its
   vocabularies, keeping every known id;
2. rebuilds the prior from its stored recipe with the larger label tables, copies every
   weight over, and initialises the new rows (`init_strategy`: ``unknown``, ``mean`` or
   ``copy`` of `init_copy`'s artist / genre);
3. freezes all but the `trainable` parameters (patterns, see `jukebox_pl.finetune.trainable`),
   optionally adds LoRA adapters (peft) to the attention and MLP projections, and optionally
   keeps an EMA of the weights;
4. trains with the recipe's `optimizer` and `lr_scheduler`, written into the grown prior's
   spec (the optimiser's keys the recipe leaves out are the base prior's when it names the same
   optimiser), resuming like ``train``, and exports the prior with the extended vocabularies
   (adapters merged, EMA weights if kept).

The export loads with ``jukebox_pl.load`` and samples with the new names; its recipe is the
prior's spec with the grown sizes, so nothing refers back to the base model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, EMAWeightAveraging

from jukebox_pl.checkpoints.export import build_stored, load, load_vocabularies, load_weights, spec_at, stored_recipe
from jukebox_pl.data.code_shards import load_code_manifest
from jukebox_pl.data.labels import Vocabulary
from jukebox_pl.errors import JukeboxError
from jukebox_pl.finetune.lora import LoraSettings, add_adapters, merge_adapters
from jukebox_pl.finetune.trainable import FrozenRows, Selection, freeze, select
from jukebox_pl.finetune.vocabulary import InitStrategy, extend, grow_rows, source_row
from jukebox_pl.optim import JUKEBOX_HPARAMS, OptimizerSpec, SchedulerSpec
from jukebox_pl.pipelines.base import RunContext
from jukebox_pl.pipelines.train import Fitting, TrainingPipeline
from jukebox_pl.registry import COMPONENT_KEY, build, register

MODEL_KEY = "model.prior"  # where the fine-tuned prior's spec sits in the recipe stored with it
LABEL_TABLES = {"artists": "labels.artist_emb.weight", "genres": "labels.bow_genre_emb.weight"}
# Short fine-tuning runs: Adam (its betas the base prior's), a quick warm-up, then a cosine decay to zero at
# the trainer's max_steps.
FINETUNE_OPTIMIZER = {COMPONENT_KEY: "adam", "lr": 3e-4, "weight_decay": 0.0}
FINETUNE_SCHEDULE = {COMPONENT_KEY: "warmup", "warmup_steps": 20, "decay": "cosine"}
DEFAULT_TRAINABLE = ("labels.artist_emb.weight:new", "labels.bow_genre_emb.weight:new")


@register("pipeline", "finetune")
class FinetunePipeline(TrainingPipeline):
    """Extend a prior's vocabularies with new artists/genres and fine-tune the chosen parameters.

    Every option of ``train`` (trainer, strategy, callbacks, loggers, checkpoint, seed, resume,
    max_nonfinite_steps, progress_every) is taken and used as ``train`` uses it: both are `TrainingPipeline`s.
    """

    def __init__(
        self,
        init_from: str,
        new_artists: list[str] | None = None,
        new_genres: list[str] | None = None,
        init_strategy: InitStrategy = "mean",
        init_copy: Mapping[str, str] | None = None,
        trainable: Sequence[str] = DEFAULT_TRAINABLE,
        lora: Mapping[str, Any] | None = None,
        optimizer: OptimizerSpec | None = None,
        lr_scheduler: SchedulerSpec | None = None,
        ema_decay: float | None = None,
        **training: Any,
    ) -> None:
        super().__init__(**training)
        self.init_from = str(init_from)
        self.new_names = {"artists": new_artists, "genres": new_genres}
        self.init_strategy, self.init_copy = init_strategy, dict(init_copy or {})
        self.trainable = list(trainable)
        self.lora = LoraSettings(**lora) if lora else None
        self.optimizer = FINETUNE_OPTIMIZER if optimizer is None else optimizer
        self.lr_scheduler = FINETUNE_SCHEDULE if lr_scheduler is None else lr_scheduler
        self.ema_decay = ema_decay

    def prepare(self, context: RunContext) -> Fitting:
        base = load(self.init_from)
        old = load_vocabularies(self.init_from)
        if old is None or getattr(base, "labels", None) is None:
            raise JukeboxError(f"init_from: {self.init_from} has no label conditioner or no stored vocabularies; "
                               "only a prior trained with artist and genre labels can learn new ones")  # fmt: skip
        vocabularies = {kind: self._extended(kind, old[kind]) for kind in ("artists", "genres")}
        key, spec = self._grown_spec(vocabularies, base.label_spec)
        spec.update(optimizer=self._optimizer(base.optimizer_spec), lr_scheduler=self.lr_scheduler)
        model = self._built(key, spec, self._grown_state(base, old, vocabularies))
        del base  # the grown model holds a copy of every weight: the base's memory goes back before training
        new_rows = {LABEL_TABLES[kind]: len(old[kind]) for kind in LABEL_TABLES}
        selection = select(model, self.trainable + (self.lora.trainable() if self.lora else []), new_rows)
        trainable, total = freeze(model, selection)
        data = {**self.data, "artists": vocabularies["artists"].to_dict(), "genres": vocabularies["genres"].to_dict()}
        datamodule = build("datamodule", data)
        recipe = {**context.recipe, "model": {"prior": spec}}
        stored = {kind: vocabulary.to_dict() for kind, vocabulary in vocabularies.items()}
        summary = {f"new_{kind}": vocabularies[kind].names[len(old[kind]) :] for kind in vocabularies}
        summary.update(trainable_parameters=trainable, parameters=total)
        return Fitting(model, datamodule, recipe, MODEL_KEY, stored, self._callbacks(selection), summary,
                       rebuild=lambda: self._built(key, spec))  # fmt: skip

    def _built(self, key: str, spec: Mapping[str, Any], state: Mapping[str, Any] | None = None) -> pl.LightningModule:
        """The grown prior with `state` (the base's weights, grown) and the run's adapters."""
        model = build_stored(spec, key, self.init_from)  # held to installed code, as `load` held the base
        if state is not None:
            load_weights(model, state, self.init_from)
        if self.lora is not None:
            add_adapters(model, self.lora)
        return model

    def exported(self, model: pl.LightningModule) -> pl.LightningModule:
        return merge_adapters(model) if self.lora is not None else model

    # ------------------------------------------------------------------ steps
    def _optimizer(self, base: Mapping[str, Any] | str) -> Mapping[str, Any] | str:
        """The run's optimiser: the recipe's, its missing keys the `base` prior's when both name the same one."""
        named = {COMPONENT_KEY: self.optimizer} if isinstance(self.optimizer, str) else dict(self.optimizer)
        base = {COMPONENT_KEY: base} if isinstance(base, str) else dict(base)
        return {**base, **named} if base[COMPONENT_KEY] == named[COMPONENT_KEY] else named

    def _extended(self, kind: str, vocabulary: Vocabulary) -> Vocabulary:
        """The vocabulary with the new names: those given, else the data's names it does not know."""
        names = self.new_names[kind]
        if names is None:
            path = self.data.get("path")
            if not path:
                raise JukeboxError(f"data: give `path` (code shards), or list new_{kind} explicitly")
            in_data = Vocabulary.from_dict(load_code_manifest(path)[kind], kind=kind[:-1]).names[1:]
            only = self.data.get("only_artists") if kind == "artists" else None
            names = [name for name in in_data if only is None or name in Vocabulary(only)]
        extended, _ = extend(vocabulary, names)
        return extended

    def _grown_spec(
        self, vocabularies: Mapping[str, Vocabulary], labels: Mapping[str, Any] | str
    ) -> tuple[str, dict[str, Any]]:
        """The key path and spec of the base prior in its stored recipe, the spec with its label conditioner
        (`labels`, the base's spec of it) as large as the extended vocabularies."""
        recipe, key = stored_recipe(self.init_from)
        spec = copy.deepcopy(spec_at(recipe, key))
        spec = {COMPONENT_KEY: spec} if isinstance(spec, str) else dict(spec)
        for name in JUKEBOX_HPARAMS:  # the base's optimiser values, which the run's optimizer takes over
            spec.pop(name, None)
        labels = {COMPONENT_KEY: labels} if isinstance(labels, str) else copy.deepcopy(dict(labels))
        # a table with spare rows (more than its vocabulary's names) keeps them: the new names may fit
        sizes = {f"n_{kind}": max(len(vocabularies[kind]), int(labels.get(f"n_{kind}", 0))) for kind in vocabularies}
        spec["labels"] = {**labels, **sizes}
        return key, spec

    def _grown_state(
        self, base: pl.LightningModule, old: Mapping[str, Vocabulary], new: Mapping[str, Vocabulary]
    ) -> dict[str, Any]:
        state = dict(base.state_dict())
        for kind, name in LABEL_TABLES.items():
            source = None
            if self.init_strategy == "copy":
                source = source_row(old[kind], self.init_copy.get(kind[:-1]), f"init_copy.{kind[:-1]}")
            state[name] = grow_rows(state[name], len(new[kind]), self.init_strategy, source, start=len(old[kind]))
        return state

    def _callbacks(self, selection: Selection) -> list[Callback]:
        callbacks: list[Callback] = []
        if selection.rows:
            callbacks.append(FrozenRows(selection.rows))
        if self.ema_decay is not None:
            callbacks.append(EMAWeightAveraging(decay=self.ema_decay))
        return callbacks
