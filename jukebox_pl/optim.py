"""The optimiser the Jukebox components train with: Adam and a linear warm-up, then a constant rate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


def adam_with_warmup(
    parameters: Iterable[torch.nn.Parameter],
    learning_rate: float,
    betas: Sequence[float],
    weight_decay: float,
    warmup_steps: int,
) -> dict[str, Any]:
    """``configure_optimizers``' answer: Adam, its rate ramped linearly over `warmup_steps` (Jukebox's lr_warmup)."""
    optimizer = torch.optim.Adam(parameters, lr=learning_rate, betas=tuple(betas), weight_decay=weight_decay)
    warmup = max(warmup_steps, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
