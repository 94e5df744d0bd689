"""The hierarchical VQ-VAE network of Jukebox as a plain ``nn.Module``: encode, decode, a pass through every level.

Each of the L levels has its own encoder, bottleneck and decoder; level l's encoder runs
every downsampling stage from raw audio up to its own hop length, and its decoder goes all
the way back to audio (Dhariwal et al., 2020, section 3.1 and figure 1). The layers come
from ``jukebox_pl.modules.encdec``; the bottlenecks are made by a given function (any ``Bottleneck``), by default
the EMA codebook. Training (losses, optimiser, logging) is ``vqvae: jukebox`` in ``model.py``.

Used alone, without Lightning::

    >>> import torch
    >>> from jukebox_pl.vqvae.network import VQVAENetwork
    >>> net = VQVAENetwork(sample_rate=16000, downs=(2, 1), strides=(4, 8), emb_width=32, width=32, depth=3)
    >>> net.hop_lengths
    [16, 128]
    >>> codes = net.encode(torch.randn(1, 1, 1024))
    >>> [tuple(level.shape) for level in codes]
    [(1, 64), (1, 8)]
    >>> tuple(net.decode(codes[1], level=1).shape)
    (1, 1, 1024)
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from jukebox_pl.modules.conv import batch_invariant
from jukebox_pl.modules.encdec import LevelDecoder, LevelEncoder
from jukebox_pl.vqvae.bottleneck import EMABottleneck
from jukebox_pl.vqvae.interface import BottleneckOutput


@dataclass
class VQVAEOutput:
    """A pass through every level."""

    reconstructions: list[torch.Tensor]  # per level, (B, C, T)
    codes: list[torch.Tensor]  # per level, (B, T / hop_length)
    bottlenecks: list[BottleneckOutput]


def hop_lengths(downs: Sequence[int], strides: Sequence[int]) -> list[int]:
    """Samples per code at each level: the cumulative product of ``stride ** down``."""
    return list(itertools.accumulate((s**d for s, d in zip(strides, downs, strict=True)), operator.mul))


class VQVAENetwork(nn.Module):
    """Hierarchical VQ-VAE: L independent levels of encoder -> bottleneck -> decoder."""

    def __init__(
        self,
        sample_rate: int = 44100,
        channels: int = 1,
        downs: Sequence[int] = (3, 2, 2),
        strides: Sequence[int] = (2, 2, 2),
        emb_width: int = 64,
        width: int = 32,
        depth: int = 4,
        multipliers: Sequence[int] | None = None,
        m_conv: float = 1.0,
        dilation_growth_rate: int = 3,
        dilation_cycle: int | None = None,
        reverse_decoder_dilation: bool = True,
        zero_out: bool = False,
        res_scale: bool = False,
        bottleneck: Callable[[int], nn.Module] = EMABottleneck,
    ) -> None:
        """`bottleneck(emb_width)` gives a level's bottleneck, called once per level after the encoders and
        decoders are built (the order their parameters draw their random initial values in)."""
        super().__init__()
        levels = len(downs)
        if levels == 0 or len(strides) != levels:
            raise ValueError(f"jukebox vqvae: downs {list(downs)} and strides {list(strides)} need one entry per level")
        if any(stride < 2 or stride % 2 for stride in strides):
            # kernel 2 * stride with padding stride / 2 maps T to T / stride only for even strides
            raise ValueError(f"jukebox vqvae: strides must be even, got {list(strides)}")
        multipliers = list(multipliers) if multipliers is not None else [1] * levels
        if len(multipliers) != levels:
            raise ValueError(f"jukebox vqvae: multipliers {multipliers} need one entry per level ({levels})")
        self.sample_rate, self.channels, self.levels = sample_rate, channels, levels
        self.hop_lengths = hop_lengths(downs, strides)
        self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
        for level, multiplier in enumerate(multipliers):
            stage = dict(
                downs=downs[: level + 1],
                strides=strides[: level + 1],
                width=width * multiplier,
                depth=depth * multiplier,
                m_conv=m_conv,
                dilation_growth_rate=dilation_growth_rate,
                dilation_cycle=dilation_cycle,
                zero_out=zero_out,
                res_scale=res_scale,
            )
            self.encoders.append(LevelEncoder(channels, emb_width, **stage))
            self.decoders.append(LevelDecoder(channels, emb_width, reverse_dilation=reverse_decoder_dilation, **stage))
        self.bottlenecks = nn.ModuleList(bottleneck(emb_width) for _ in range(levels))
        self.codebook_sizes = [int(b.codebook_size) for b in self.bottlenecks]

    def _check_length(self, audio: torch.Tensor) -> None:
        if audio.dim() != 3 or audio.shape[1] != self.channels:
            raise ValueError(f"expected audio (batch, {self.channels}, samples), got {tuple(audio.shape)}")
        if audio.shape[-1] % self.hop_lengths[-1]:
            raise ValueError(
                f"audio length {audio.shape[-1]} is not a multiple of the top hop length {self.hop_lengths[-1]}"
            )

    def forward(self, audio: torch.Tensor) -> VQVAEOutput:
        """Every level's reconstruction of ``audio`` (B, C, T); trains the codebooks in training mode."""
        self._check_length(audio)
        outputs = [
            bottleneck(encoder(audio)) for encoder, bottleneck in zip(self.encoders, self.bottlenecks, strict=True)
        ]
        reconstructions = [decoder(out.quantised) for decoder, out in zip(self.decoders, outputs, strict=True)]
        return VQVAEOutput(reconstructions, [out.codes for out in outputs], outputs)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor, levels: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Audio ``(B, C, T)`` -> codes per level ``(B, ceil(T / hop))``; the end is zero-padded to the top hop."""
        pad = -audio.shape[-1] % self.hop_lengths[-1]
        audio = nn.functional.pad(audio, (0, pad))
        self._check_length(audio)
        length = audio.shape[-1] - pad
        chosen = range(self.levels) if levels is None else levels
        with batch_invariant(audio.device):  # the same audio gives the same codes in any batch
            return [
                self.bottlenecks[level].encode(self.encoders[level](audio))[:, : -(-length // self.hop_lengths[level])]
                for level in chosen
            ]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, level: int) -> torch.Tensor:
        """Codes ``(B, T_level)`` of `level` -> audio ``(B, C, T_level * hop)``."""
        with batch_invariant(codes.device):
            return self.decoders[level](self.bottlenecks[level].decode(codes.long()))
