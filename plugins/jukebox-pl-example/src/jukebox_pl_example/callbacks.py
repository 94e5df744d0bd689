"""A callback that logs gradient norms, the first thing to look at when training diverges."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import grad_norm

from jukebox_pl.registry import register


@register("callback", "grad_norm")
class GradNormLogger(pl.Callback):
    """Log the global gradient norm (and, if asked, each parameter's) before every optimizer step."""

    def __init__(self, norm_type: float = 2.0, per_parameter: bool = False) -> None:
        if norm_type <= 0:
            raise ValueError(f"norm_type must be positive, got {norm_type}")
        self.norm_type = norm_type
        self.per_parameter = per_parameter

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        norms = grad_norm(pl_module, norm_type=self.norm_type)
        if not norms:
            return
        total_key = f"grad_{float(self.norm_type)}_norm_total"
        logged = norms if self.per_parameter else {total_key: norms[total_key]}
        pl_module.log_dict({f"grad_norm/{k}": v for k, v in logged.items()}, on_step=True, on_epoch=False)
