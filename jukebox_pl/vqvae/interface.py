"""What every bottleneck provides, so that a VQ-VAE level can use any of them.

A bottleneck turns encoder output ``(B, emb_width, T)`` into discrete codes ``(B, T)`` and
back. The VQ-VAE builds one per level and passes ``emb_width`` itself; everything else
comes from the recipe. Register a new one with ``@register("bottleneck", NAME)``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class BottleneckOutput:
    """One forward pass through a bottleneck."""

    codes: torch.Tensor  # (B, T) int64
    quantised: torch.Tensor  # (B, emb_width, T); carries the straight-through gradient to the encoder
    commit_loss: torch.Tensor  # () scalar; zero for bottlenecks without one
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # () scalars to log


class Bottleneck(nn.Module, abc.ABC):
    """Base of the built-in bottlenecks; plugins may subclass it or any ``nn.Module`` with the same methods."""

    codebook_size: int  # number of distinct codes

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> BottleneckOutput:
        """Quantise ``(B, emb_width, T)``; in training mode this may also update the codebook."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, emb_width, T)`` -> codes ``(B, T)`` int64, without touching any state."""

    @abc.abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, T)`` -> ``(B, emb_width, T)``."""
