"""Optimisers (kind ``optimizer``) and learning-rate schedules (kind ``lr_scheduler``) as recipe components.

A model takes an ``optimizer`` and an ``lr_scheduler`` spec and builds them in ``configure_optimizers``
with its trainable parameters, the optimiser and the trainer's ``max_steps``, so a recipe swaps
either with one line (``model.prior.optimizer._component_=adamw``). The defaults are Jukebox's:
Adam and a linear warm-up, then a constant rate (Jukebox's pre-training) or a linear or cosine
decay to zero (short fine-tuning runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

import torch

from jukebox_pl.registry import COMPONENT_KEY, build, register
from jukebox_pl.signatures import SpecOf

OptimizerSpec = Annotated[Mapping[str, Any] | str, SpecOf("optimizer", ("params",))]
SchedulerSpec = Annotated[Mapping[str, Any] | str, SpecOf("lr_scheduler", ("optimizer", "total_steps"))]

# openai/jukebox's names of the optimiser's values (hparams.py lr, beta1/beta2, weight_decay, as the recipes
# stored with imported released weights give them) and the argument of ours each sets.
JUKEBOX_HPARAMS = {"learning_rate": "lr", "betas": "betas", "weight_decay": "weight_decay"}


@register("optimizer", "adam")
def adam(
    params: Iterable[torch.nn.Parameter],
    lr: float = 3e-4,
    betas: Sequence[float] = (0.9, 0.999),
    weight_decay: float = 0.0,
) -> torch.optim.Adam:
    """Adam, Jukebox's optimiser (hparams.py: lr 3e-4, betas 0.9 / 0.999, no weight decay)."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


@register("optimizer", "adamw")
def adamw(
    params: Iterable[torch.nn.Parameter],
    lr: float = 3e-4,
    betas: Sequence[float] = (0.9, 0.999),
    weight_decay: float = 0.01,
) -> torch.optim.AdamW:
    """AdamW: Adam with weight decay decoupled from the gradient (Loshchilov and Hutter, 2019)."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


@register("lr_scheduler", "warmup")
def warmup(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int = 100,
    decay: Literal["constant", "linear", "cosine"] = "constant",
    total_steps: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The rate ramped linearly over `warmup_steps` (Jukebox's lr_warmup), then held (``constant``) or brought to
    zero at `total_steps` (``linear``, ``cosine``; the trainer's max_steps), stepped every optimiser step."""
    if decay != "constant" and not total_steps:
        raise ValueError(f"a {decay!r} learning-rate decay needs total_steps (the trainer's max_steps)")
    ramp = max(warmup_steps, 1)

    def factor(step: int) -> float:
        if step < ramp or decay == "constant":
            return min(1.0, (step + 1) / ramp)
        progress = min((step - ramp) / max(total_steps - ramp, 1), 1.0)
        return 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def with_jukebox_hparams(optimizer: Mapping[str, Any] | str, **hparams: Any) -> Mapping[str, Any] | str:
    """`optimizer` with the values given under openai/jukebox's names (`JUKEBOX_HPARAMS`; None: not given)."""
    given = {JUKEBOX_HPARAMS[name]: value for name, value in hparams.items() if value is not None}
    if not given:
        return optimizer
    spec = {COMPONENT_KEY: optimizer} if isinstance(optimizer, str) else dict(optimizer)
    return {**spec, **given}


def jukebox_optimizer(values: Mapping[str, Any]) -> dict[str, Any]:
    """A model's arguments `values` with openai/jukebox's optimiser values (`JUKEBOX_HPARAMS`) moved into its
    ``optimizer`` (Adam unless it names another): the presets of the released models."""
    values = dict(values)
    hparams = {name: values.pop(name, None) for name in JUKEBOX_HPARAMS}
    values["optimizer"] = with_jukebox_hparams(values.get("optimizer", "adam"), **hparams)
    return values


def configure_optimizers(
    parameters: Iterable[torch.nn.Parameter],
    optimizer: Mapping[str, Any] | str,
    lr_scheduler: Mapping[str, Any] | str,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """``configure_optimizers``' answer: the `optimizer` over the parameters that require gradients, and the
    `lr_scheduler` over it, stepped every step; `max_steps` (the trainer's, -1 or None: unbounded) is its end."""
    trainable = [parameter for parameter in parameters if parameter.requires_grad]
    if not trainable:
        raise ValueError("no parameter requires gradients: nothing to train")
    built = build("optimizer", optimizer, params=trainable)
    total_steps = max_steps if max_steps is not None and max_steps > 0 else None
    schedule = build("lr_scheduler", lr_scheduler, optimizer=built, total_steps=total_steps)
    return {"optimizer": built, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
