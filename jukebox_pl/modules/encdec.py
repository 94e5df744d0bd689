"""VQ-VAE encoders and decoders: strided convolutions around dilated residual stacks.

One *stage* downsamples by ``stride ** down`` with `down` strided convolutions (kernel
``2 * stride``), each followed by a residual stack, then projects to the embedding width.
A level-l encoder chains stages 0..l starting from raw audio, so each level's encoder sees
the waveform and nothing is shared between levels (openai/jukebox ``vqvae/encdec.py``).
Decoders mirror this with transposed convolutions and, by default, reversed dilations.

Example::

    encoder = LevelEncoder(1, 64, downs=[3, 2], strides=[2, 2], width=32, depth=4, dilation_growth_rate=3)
    decoder = LevelDecoder(1, 64, downs=[3, 2], strides=[2, 2], width=32, depth=4, dilation_growth_rate=3)
    audio = torch.randn(2, 1, 4096)
    assert encoder(audio).shape == (2, 64, 4096 // 32)
    assert decoder(encoder(audio)).shape == audio.shape
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from jukebox_pl.modules.conv import Conv1d, ConvTranspose1d
from jukebox_pl.modules.resnet1d import Resnet1D


class DownsamplingStage(nn.Sequential):
    """``(B, in_width, T) -> (B, emb_width, T / stride**down)``."""

    def __init__(self, in_width: int, emb_width: int, down: int, stride: int, width: int, depth: int, **resnet: Any):
        kernel, padding = 2 * stride, stride // 2
        layers: list[nn.Module] = []
        for step in range(down):
            layers.append(Conv1d(in_width if step == 0 else width, width, kernel, stride, padding))
            layers.append(Resnet1D(width, depth, **resnet))
        layers.append(Conv1d(width, emb_width, kernel_size=3, padding=1))
        super().__init__(*layers)


class UpsamplingStage(nn.Sequential):
    """``(B, emb_width, T) -> (B, out_width, T * stride**down)``; ``reverse=True`` mirrors the encoder's dilations."""

    def __init__(self, out_width: int, emb_width: int, down: int, stride: int, width: int, depth: int, **resnet: Any):
        kernel, padding = 2 * stride, stride // 2
        layers: list[nn.Module] = [Conv1d(emb_width, width, kernel_size=3, padding=1)]
        for step in range(down):
            layers.append(Resnet1D(width, depth, **resnet))
            last = step == down - 1
            layers.append(ConvTranspose1d(width, out_width if last else width, kernel, stride, padding))
        super().__init__(*layers)


class LevelEncoder(nn.Sequential):
    """Raw audio ``(B, channels, T)`` -> one level's latents ``(B, emb_width, T / hop)``."""

    def __init__(
        self,
        channels: int,
        emb_width: int,
        downs: Sequence[int],
        strides: Sequence[int],
        width: int,
        depth: int,
        **resnet: Any,
    ):
        super().__init__(
            *(
                DownsamplingStage(
                    channels if stage == 0 else emb_width, emb_width, down, stride, width, depth, **resnet
                )
                for stage, (down, stride) in enumerate(zip(downs, strides, strict=True))
            )
        )


class LevelDecoder(nn.Module):
    """One level's latents ``(B, emb_width, T / hop)`` -> audio ``(B, channels, T)``."""

    def __init__(
        self,
        channels: int,
        emb_width: int,
        downs: Sequence[int],
        strides: Sequence[int],
        width: int,
        depth: int,
        reverse_dilation: bool = True,
        **resnet: Any,
    ):
        super().__init__()
        resnet["reverse"] = reverse_dilation
        stages = [
            UpsamplingStage(emb_width, emb_width, down, stride, width, depth, **resnet)
            for down, stride in zip(downs, strides, strict=True)
        ]
        self.stages = nn.Sequential(*reversed(stages))  # the deepest stage decodes first
        self.out = Conv1d(emb_width, channels, kernel_size=3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.out(self.stages(latents))
