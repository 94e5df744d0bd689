"""The optimiser the Jukebox components train with: Adam and a linear warm-up, then a constant rate
(Jukebox's pre-training) or a linear or cosine decay to zero (short fine-tuning runs)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch


def adam_with_warmup(
    parameters: Iterable[torch.nn.Parameter],
    learning_rate: float,
    betas: Sequence[float],
    weight_decay: float,
    warmup_steps: int,
    decay: Literal["constant", "linear", "cosine"] = "constant",
    total_steps: int | None = None,
) -> dict[str, Any]:
    """``configure_optimizers``' answer: Adam, its rate ramped linearly over `warmup_steps` (Jukebox's lr_warmup),
    then held (``constant``) or brought to zero at `total_steps` (``linear``, ``cosine``). Only parameters that
    require gradients are optimised."""
    trainable = [parameter for parameter in parameters if parameter.requires_grad]
    if not trainable:
        raise ValueError("no parameter requires gradients: nothing to train")
    if decay != "constant" and not total_steps:
        raise ValueError(f"a {decay!r} learning-rate decay needs total_steps (the trainer's max_steps)")
    optimizer = torch.optim.Adam(trainable, lr=learning_rate, betas=tuple(betas), weight_decay=weight_decay)
    warmup = max(warmup_steps, 1)

    def factor(step: int) -> float:
        if step < warmup or decay == "constant":
            return min(1.0, (step + 1) / warmup)
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
