"""Validation that keeps the ranks of a distributed run in step when their data differ in length.

Each rank validates its own share of the data, and shares seldom hold the same number of
batches. A rank that has run out must still take the steps the others take: under DDP every
forward pass of a model with buffers broadcasts them, under FSDP every forward pass gathers
the parameters, and a rank that stopped early leaves the others waiting in those collectives
for ever. So every rank runs as many validation steps as the rank with the most batches:

- `EvenBatches` wraps a rank's loader; before each step the ranks tell each other whether
  they still have a batch, and one that has run out takes a `PaddingBatch` (a copy of its
  last batch, or of another rank's first when it had none) until all have run out;
- `EvenValidation`, a callback of the training pipelines, wraps the validation loader that
  way and runs the model's ``validation_step`` on a padding batch with every ``self.log``
  given ``batch_size=0``: the batch's values weigh nothing in the logged means, which are
  then those of one process over the same batches.

Lightning's own answer, a ``DistributedSampler`` that repeats a few items, applies only to
map-style datasets and counts the repeated items twice; the shard datamodules stream.
A model that updates a torchmetrics ``Metric`` itself in ``validation_step`` (rather than
through ``self.log``) would count the padding: its values are only logged ones here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import Strategy
from torch.utils.data import DataLoader, IterableDataset


@dataclass
class PaddingBatch:
    """A batch that a rank runs only to keep in step with the others; it must not count."""

    batch: Any


class EvenBatches:
    """`loader`'s batches, then `PaddingBatch`es until every rank of `strategy` has run out of batches."""

    def __init__(self, loader: Any, strategy: Strategy) -> None:
        self.loader, self.strategy = loader, strategy

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.loader)
        last: Any = None
        while True:
            batch = next(batches, _END)
            has_batch, had_one = batch is not _END, batch is not _END or last is not None
            flags = torch.tensor([has_batch, had_one], dtype=torch.int32, device=self.strategy.root_device)
            gathered = self.strategy.all_gather(flags).reshape(-1, 2).tolist()  # (ranks, 2), one collective
            if not any(rank_has for rank_has, _ in gathered):
                return
            if not all(rank_had for _, rank_had in gathered):  # a rank had no batch at all: lend it a first one
                lender = next(rank for rank, (rank_has, _) in enumerate(gathered) if rank_has)
                lent = self.strategy.broadcast(batch if has_batch else None, src=lender)
                last = last if last is not None else lent
            if has_batch:
                last = batch
                yield batch
            else:
                yield PaddingBatch(last)


_END = object()


def evened(loader: Any, strategy: Strategy) -> Any:
    """`loader` as `EvenBatches` in a run of several ranks; as it is in one process, or when it is a map-style
    ``DataLoader``, which Lightning's ``DistributedSampler`` already gives every rank as many batches."""
    if strategy.world_size == 1 or loader is None:
        return loader
    if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
        return loader
    if isinstance(loader, (list, tuple)):
        return type(loader)(evened(each, strategy) for each in loader)
    if isinstance(loader, Mapping):
        return {name: evened(each, strategy) for name, each in loader.items()}
    return EvenBatches(loader, strategy)


class EvenValidation(pl.Callback):
    """Every rank validates for as many steps as the rank with the most batches; padding batches weigh nothing.

    It wraps the datamodule's ``val_dataloader`` and the module's ``validation_step`` for the run (in a run of
    several ranks only) and puts them back at its end.
    """

    def __init__(self) -> None:
        self._wrapped: list[tuple[Any, str]] = []

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size == 1 or self._wrapped:
            return
        datamodule = trainer.datamodule
        if datamodule is not None:
            loaders = datamodule.val_dataloader
            self._wrap(datamodule, "val_dataloader", lambda: evened(loaders(), trainer.strategy))
        step = module.validation_step

        def validation_step(batch: Any, *args: Any, **kwargs: Any) -> Any:
            if not isinstance(batch, PaddingBatch):
                return step(batch, *args, **kwargs)
            with _weightless_logging(module):
                return step(batch.batch, *args, **kwargs)

        self._wrap(module, "validation_step", validation_step)

    def teardown(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        for owner, name in self._wrapped:
            vars(owner).pop(name, None)
        self._wrapped.clear()

    def _wrap(self, owner: Any, name: str, replacement: Callable[..., Any]) -> None:
        setattr(owner, name, replacement)  # an attribute of this object, over its class's method
        self._wrapped.append((owner, name))


@contextlib.contextmanager
def _weightless_logging(module: pl.LightningModule) -> Iterator[None]:
    """``module.log`` (and so ``log_dict``) with ``batch_size=0``: the values weigh nothing in the epoch's means."""
    log = module.log

    def weightless(*args: Any, **kwargs: Any) -> None:
        log(*args, **{**kwargs, "batch_size": 0})

    module.log = weightless  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.log
