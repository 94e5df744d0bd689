"""Codebook metrics: how evenly a VQ-VAE level uses its codes, and the bitrate its codes cost.

Example::

    usage = CodebookUsage(codebook_size=2048)
    usage.update(codes)  # any integer tensor of code indices
    usage.compute()["perplexity"]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from jukebox_pl.registry import register
from jukebox_pl.vqvae.bottleneck import entropy_bits


def bitrate_kbps(codebook_size: int, hop_length: int, sample_rate: int) -> float:
    """kbit/s of one level's codes: sample_rate / hop_length codes per second of log2(codebook_size) bits.

    Jukebox's bottom level (2048 codes, hop 8, 44.1 kHz) costs 44100 / 8 * 11 / 1000 = 60.64 kbps.
    """
    if codebook_size < 1 or hop_length < 1 or sample_rate < 1:
        raise ValueError(
            "codebook_size, hop_length and sample_rate must be positive, "
            f"got {codebook_size}, {hop_length} and {sample_rate}"
        )
    return sample_rate / hop_length * math.log2(codebook_size) / 1000


def codebook_statistics(counts: Tensor) -> dict[str, Tensor]:
    """Usage statistics of a (codebook_size,) tensor of code counts.

    Returns tensors: ``entropy_bits`` (-sum p log2 p over used codes), ``perplexity`` (2 ** entropy),
    ``used`` (codes seen at least once), ``dead`` (the others) and ``usage`` (used / codebook_size).
    """
    counts = counts.to(torch.float64)
    entropy = entropy_bits(counts)
    used = (counts > 0).sum()
    return {
        "entropy_bits": entropy,
        "perplexity": torch.exp2(entropy),
        "used": used,
        "dead": counts.numel() - used,
        "usage": used / counts.numel(),
    }


@register("metric", "codebook_usage")
class CodebookUsage(Metric):
    """Code counts over every update (and rank); ``compute()`` gives `codebook_statistics` of them."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, codebook_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}")
        self.codebook_size = codebook_size
        self.add_state("counts", default=torch.zeros(codebook_size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, codes: Tensor) -> None:
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
        codes = codes.reshape(-1).long()
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got {codes.min().item()} to {codes.max().item()}"
            )
        self.counts += torch.bincount(codes, minlength=self.codebook_size)

    def compute(self) -> dict[str, Tensor]:
        return codebook_statistics(self.counts)
