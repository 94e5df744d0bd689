"""Training callbacks and strategies: an EMA of the weights, a guard against non-finite losses, FSDP per block.

- ``ema``: Lightning's ``EMAWeightAveraging``. Jukebox kept an exponential moving average of
  the prior's weights and sampled with it (paper, appendix); the average is saved in every
  checkpoint, used for validation, and copied into the model when training ends, so the export
  holds it.
- `NonFiniteGuard` (always on in the ``train`` pipeline): a step whose loss or gradients are not
  finite is skipped (the gradients are dropped, so the optimizer leaves the weights alone; under
  fp16 the GradScaler skips it and lowers its scale), counted and logged as
  ``train/skipped_steps``; after `patience` such steps in a row the run stops, its last
  checkpoint holds the last good weights, and the pipeline ends with a message saying so.
- ``fsdp_blocks`` (a ``strategy``): FSDP wrapped per transformer block, for priors too large
  for one GPU's memory.
- `AtomicCheckpointIO` and `ResumeRNG` (always on in the ``train`` pipeline): checkpoints written
  whole or not at all, and the random states carried across a resume.
- `StepProgress`: a line per half minute with the step, loss, speed and time left.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.strategies import FSDPStrategy

from jukebox_pl.atomic import atomic_path
from jukebox_pl.modules.transformer import ResAttnBlock
from jukebox_pl.registry import register


@register("callback", "ema")
def ema(decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None) -> pl.Callback:
    """An exponential moving average of the weights (decay per update), saved, validated and exported."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema: decay must be in (0, 1), got {decay}")
    return EMAWeightAveraging(
        decay=decay, update_every_n_steps=update_every_n_steps, update_starting_at_step=update_starting_at_step
    )


class BlockFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP, which also runs in CPU processes (gloo), where Lightning's own refuses it and torch's runs:
    a sharded run, its checkpoints and its export can be tried on one machine before they take GPUs.

    On the CPU, torch's FSDP needs the CPU named as its device, and gathers a whole state dict without the copy
    "to the CPU" that Lightning asks of it (that copy, of tensors already there, crashes).
    """

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from lightning_fabric.strategies.fsdp import _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model

    def lightning_module_state_dict(self) -> dict[str, Any]:
        with _whole_state_dicts_in_place(self.root_device):
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, torch.Tensor]:
        with _whole_state_dicts_in_place(self.root_device):
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        with _whole_state_dicts_in_place(self.root_device):
            return super().load_checkpoint(checkpoint_path, weights_only)


@contextlib.contextmanager
def _whole_state_dicts_in_place(device: torch.device) -> Iterator[None]:
    """On the CPU, Lightning's FSDP gathers whole state dicts with ``offload_to_cpu=False``."""
    if device.type != "cpu":
        yield
        return
    import pytorch_lightning.strategies.fsdp as lightning_fsdp
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType
    from torch.distributed.fsdp.api import FullOptimStateDictConfig

    def in_place(module: torch.nn.Module, world_size: int, rank0_only: bool = True) -> Any:
        return FullyShardedDataParallel.state_dict_type(
            module=module,
            state_dict_type=StateDictType.FULL_STATE_DICT,
            state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
            optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        )

    lightning = lightning_fsdp._get_full_state_dict_context
    lightning_fsdp._get_full_state_dict_context = in_place
    try:
        yield
    finally:
        lightning_fsdp._get_full_state_dict_context = lightning


@register("strategy", "fsdp_blocks")
def fsdp_blocks(
    sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = False, cpu_offload: bool = False
) -> FSDPStrategy:
    """Lightning's FSDP that shards each transformer block on its own (and, if asked, recomputes its
    activations in the backward pass): the wrapping that lets a 5B prior train across GPUs."""
    return BlockFSDPStrategy(
        auto_wrap_policy={ResAttnBlock},
        activation_checkpointing_policy={ResAttnBlock} if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        cpu_offload=cpu_offload,
    )


class NonFiniteGuard(pl.Callback):
    """Skips steps with a non-finite loss or gradient; stops after `patience` of them in a row."""

    def __init__(self, patience: int = 5) -> None:
        self.patience = patience
        self.skipped = 0  # in all
        self.in_a_row = 0
        self.stopped_at: int | None = None
        self._scale: float | None = None

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:  # fp16: the GradScaler finds and skips the step; see on_train_batch_end
            self._scale = float(scaler.get_scale())
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        finite = bool(torch.stack([g.isfinite().all() for g in grads]).all()) if grads else True  # one sync
        bad = trainer.strategy.reduce_boolean_decision(not finite, all=False)  # any rank: every rank skips
        if bad:
            for parameter in module.parameters():
                parameter.grad = None  # Adam leaves parameters without gradients untouched
        self._record(trainer, module, bad)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and self._scale is not None:
            self._record(trainer, module, float(scaler.get_scale()) < self._scale)
            self._scale = None

    def _record(self, trainer: pl.Trainer, module: pl.LightningModule, bad: bool) -> None:
        self.in_a_row = self.in_a_row + 1 if bad else 0
        self.skipped += int(bad)
        module.log("train/skipped_steps", float(self.skipped), rank_zero_only=True)
        if self.in_a_row >= self.patience and self.stopped_at is None:
            self.stopped_at = trainer.global_step
            trainer.should_stop = True

    @property
    def message(self) -> str:
        return (
            f"training stopped at step {self.stopped_at}: the loss or its gradients were not finite for "
            f"{self.patience} steps in a row ({self.skipped} skipped in all); the weights were not updated by "
            "those steps, and the last checkpoint holds the last good state. Lower the learning rate, use "
            "bf16-mixed instead of 16-mixed, or check the data"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))


class StepProgress(pl.Callback):
    """A line on stderr every `every_seconds` of training: step of max_steps, loss, speed and the time left.

    Lightning's progress bar counts the batches of one epoch (and none of an endless stream); this
    counts the whole run, and its lines stay readable in a log file.
    """

    def __init__(self, every_seconds: float = 30.0, name: str = "") -> None:
        self.every_seconds, self.name = every_seconds, name
        self._started: float | None = None
        self._first_step = 0
        self._last_line = 0.0

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._started = self._last_line = time.perf_counter()
        self._first_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        now = time.perf_counter()
        if self._started is None or now - self._last_line < self.every_seconds or not trainer.is_global_zero:
            return
        self._last_line = now
        print(progress_line(self.name, trainer.global_step, trainer.max_steps, self._first_step,
                            now - self._started, trainer.callback_metrics.get("train/loss")),
              file=sys.stderr, flush=True)  # fmt: skip


def progress_line(name: str, step: int, max_steps: int, first_step: int, seconds: float, loss: Any) -> str:
    """``name: step 340/1200 (28%) · loss 0.1234 · 1.9 steps/s · 7m32s left``."""
    rate = (step - first_step) / max(seconds, 1e-9)
    parts = [f"{name + ': ' if name else ''}step {step}" + (f"/{max_steps} ({100 * step / max_steps:.0f}%)"
                                                          if max_steps > 0 else "")]  # fmt: skip
    if loss is not None:
        parts.append(f"loss {float(loss):.4g}")
    parts.append(f"{rate:.2f} steps/s")
    if max_steps > 0 and rate > 0:
        left = round((max_steps - step) / rate)
        parts.append(f"{left // 60}m{left % 60:02d}s left")
    return " · ".join(parts)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made crash-safe: each checkpoint goes to a temporary file next to its
    final name, is fsynced, then renamed over it. A run killed mid-write keeps its previous checkpoint whole.

    (Lightning's own writer stages the file in the system's temporary folder, which is often another
    file system, where moving it into place is a copy that a crash can cut short.) Local paths only;
    remote ones (``s3://``...) go through Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as temporary:
            torch.save(checkpoint, temporary)


class ResumeRNG(pl.Callback):
    """Saves the torch, numpy and Python random states in every checkpoint and puts them back just before
    the first training step after a resume, where the uninterrupted run would have them.
    (Stored as tensors and plain numbers, so that weights_only loading reads them.)"""

    key = "jukebox_pl_rng"

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict) -> None:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        version, state, next_gauss = random.getstate()
        checkpoint[self.key] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)],
            "python": [version, list(state), next_gauss],
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get(self.key)

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        if self._pending is None:
            return
        states, self._pending = self._pending, None
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
        kind, keys, position, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        version, state, next_gauss = states["python"]
        random.setstate((version, tuple(state), next_gauss))
