"""What every bottleneck provides, so that a VQ-VAE level can use any of them, and what every
VQ-VAE provides, so that the pipelines (encode, evaluate, sample) can use any of them.

A bottleneck turns encoder output ``(B, emb_width, T)`` into discrete codes ``(B, T)`` and
back. The VQ-VAE builds one per level and passes ``emb_width`` itself; everything else
comes from the recipe. Register a new one with ``@register("bottleneck", NAME)``.

A `Codec` turns audio into one code sequence per level and back; a VQ-VAE plugin needs no
base class, only these members (``isinstance(model, Codec)`` checks that they are there).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class Codec(Protocol):
    """A hierarchical audio codec: `levels` code sequences, level ``l`` one code per ``hop_lengths[l]``
    samples of `channels`-channel audio at `sample_rate`, from ``codebook_sizes[l]`` codes."""

    sample_rate: int
    channels: int
    levels: int
    hop_lengths: Sequence[int]
    codebook_sizes: Sequence[int]

    def encode(self, audio: torch.Tensor, levels: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Audio ``(B, channels, samples)`` -> codes ``(B, T_l)`` of each level asked (all by default)."""
        ...

    def decode(self, codes: torch.Tensor, level: int) -> torch.Tensor:
        """Codes ``(B, T)`` of `level` -> audio ``(B, channels, T * hop_lengths[level])``."""
        ...


CODEC_MEMBERS = ("sample_rate", "channels", "levels", "hop_lengths", "codebook_sizes", "encode", "decode")
