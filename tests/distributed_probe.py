"""A callback that records what each rank of a distributed training run saw and held, for the tests.

Recipes reach it by dotted path (``distributed_probe:Probe``) with ``tests/`` on PYTHONPATH.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from jukebox_pl.distributed import PaddingBatch


class Probe(pl.Callback):
    """Writes ``rank{R}.pt``: the rank, the songs of every batch (by length), the first batch, the model's
    state before the first step and its gradients at the first step (after DDP averaged them; not under
    FSDP), its
    validation batches (its own, not the padding that keeps it in step) and logged validation results,
    and the final state."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.record: dict[str, Any] = {"songs": [], "losses": [], "validation_batches": 0, "validated": []}

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.record.update(rank=trainer.global_rank, world_size=trainer.world_size)
        if not _sharded(trainer):  # under FSDP a state dict is gathered by the strategy, not read off the module
            self.record["initial"] = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, index: int) -> None:
        self.record["songs"].append(batch["timing"][:, 0].tolist())
        if "first_batch" not in self.record:
            self.record["first_batch"] = {k: v.detach().clone() for k, v in batch.items()}

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        self.record["losses"].append(float(outputs["loss"]))

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any) -> None:
        if "first_grads" not in self.record:
            grads = {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}
            self.record["first_grads"] = grads

    def on_validation_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        if not trainer.sanity_checking and not isinstance(batch, PaddingBatch):
            self.record["validation_batches"] += 1

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.record["validated"].append({k: float(v) for k, v in trainer.callback_metrics.items() if "val" in k})

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not _sharded(trainer):
            self.record["final"] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.out / f"rank{trainer.global_rank}.pt")


def _sharded(trainer: pl.Trainer) -> bool:
    from pytorch_lightning.strategies import FSDPStrategy

    return isinstance(trainer.strategy, FSDPStrategy)
