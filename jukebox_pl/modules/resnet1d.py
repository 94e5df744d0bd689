"""Dilated 1-D residual stacks: the body of every VQ-VAE encoder and decoder block.

Jukebox (Dhariwal et al., 2020, section 3 and appendix B.1; openai/jukebox
``vqvae/resnet.py``) uses non-causal residual units of ReLU -> dilated 3-tap conv -> ReLU
-> 1x1 conv, with dilation growing by a factor (3) per unit so that a stack of depth D sees
3**D samples.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from jukebox_pl.modules.conv import Conv1d, explicit, residual_unit


class ResidualUnit(nn.Module):
    """``x + scale * conv1x1(relu(dilated_conv3(relu(x))))``; keeps shape ``(B, width, T)``."""

    def __init__(self, width: int, hidden: int, dilation: int = 1, zero_out: bool = False, scale: float = 1.0):
        super().__init__()
        self.dilated = Conv1d(width, hidden, kernel_size=3, padding=dilation, dilation=dilation)
        self.mix = Conv1d(hidden, width, kernel_size=1)
        if zero_out:  # the stack starts as the identity
            nn.init.zeros_(self.mix.weight)
            nn.init.zeros_(self.mix.bias)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if explicit(self.dilated, x) and explicit(self.mix, x):  # encoding or decoding on the CPU: block by block
            return residual_unit(x, self.dilated, self.mix, self.scale)
        h = self.mix(torch.relu_(self.dilated(torch.relu(x))))  # in place: the convolution keeps its input only
        return x + h if self.scale == 1.0 else x + self.scale * h


def dilations(depth: int, growth_rate: int, cycle: int | None = None) -> list[int]:
    """Dilation of each unit: ``growth_rate ** d``, with d restarting every `cycle` units."""
    return [growth_rate ** (d if cycle is None else d % cycle) for d in range(depth)]


class Resnet1D(nn.Sequential):
    """`depth` residual units of width `width`; `reverse` runs the dilations from large to small (decoders)."""

    def __init__(
        self,
        width: int,
        depth: int,
        m_conv: float = 1.0,
        dilation_growth_rate: int = 1,
        dilation_cycle: int | None = None,
        reverse: bool = False,
        zero_out: bool = False,
        res_scale: bool = False,
    ):
        scale = 1.0 / math.sqrt(depth) if res_scale else 1.0
        hidden = int(m_conv * width)
        units = [
            ResidualUnit(width, hidden, dilation, zero_out, scale)
            for dilation in dilations(depth, dilation_growth_rate, dilation_cycle)
        ]
        super().__init__(*(reversed(units) if reverse else units))
