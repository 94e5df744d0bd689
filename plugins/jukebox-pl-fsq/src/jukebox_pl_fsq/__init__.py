"""Finite scalar quantization (FSQ) as a jukebox-pl bottleneck: a fixed grid instead of a learned codebook.

Mentzer, Minnen, Agustsson and Tschannen, "Finite Scalar Quantization: VQ-VAE Made Simple"
(2023, arXiv:2309.15505). The encoder output is projected down to ``d = len(levels)``
channels; channel ``i`` is bounded with a tanh and rounded to one of ``levels[i]`` integers,
so the codebook is every combination of them, ``prod(levels)`` codes. Only the two
projections are learned: no codebook, no commitment loss, no dead codes to restart.

Importing this module registers the bottleneck as ``fsq``; jukebox-pl finds it through the
``jukebox_pl.plugins`` entry point. On its own::

    fsq = FSQBottleneck(emb_width=64).eval()    # levels [8, 5, 5, 5]: 1000 codes
    x = torch.randn(2, 64, 100)                 # (B, emb_width, T)
    out = fsq(x)                                # out.codes (2, 100), out.quantised (2, 64, 100)
    assert torch.equal(fsq.decode(out.codes), out.quantised)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from jukebox_pl.registry import register
from jukebox_pl.vqvae.interface import Bottleneck, BottleneckOutput

# The paper's Table 1 level set for a codebook of about 2^10 codes: 8 * 5 * 5 * 5 = 1000.
DEFAULT_LEVELS = (8, 5, 5, 5)


def check_levels(levels: Sequence[int]) -> list[int]:
    """``levels`` as a list, or a ValueError that says what is wrong with it."""
    valid = (
        isinstance(levels, Sequence)
        and not isinstance(levels, str)
        and len(levels) > 0
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 2 for n in levels)
    )
    if not valid:
        raise ValueError(f"fsq: levels must be a non-empty list of integers >= 2 (one per FSQ channel), got {levels!r}")
    return list(levels)


def bound(z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Squash ``z (..., d)`` so that rounding channel ``i`` gives one of ``levels[i]`` integers.

    An odd L rounds to ``-(L-1)/2 .. (L-1)/2``, an even L to ``-L/2 .. L/2 - 1``.
    """
    # The paper's bound (Appendix A.1), eps = 1e-3. The shift is atanh, the exact inverse of
    # tanh, so that bound(0) = 0 (the paper's listing has tan, nearly equal); the range is
    # widened by (1 + eps), as in vector-quantize-pytorch, which keeps offset / half_l below 1
    # for L = 2, where atanh would be infinite.
    eps = 1e-3
    half_l = (levels - 1) * (1 + eps) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    shift = torch.atanh(offset / half_l)
    return torch.tanh(z + shift) * half_l - offset


def round_ste(z: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer; the gradient passes straight through as if nothing was rounded."""
    return z + (z.round() - z).detach()


def quantise(z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``z (..., d)`` -> the grid point it rounds to, each channel scaled into [-1, 1]."""
    return round_ste(bound(z, levels)) / (levels // 2)


def mixed_radix_basis(levels: torch.Tensor) -> torch.Tensor:
    """Place values of the code's digits: ``[1, L0, L0*L1, ...]``, the first channel least significant."""
    return torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), dim=0)


def levels_to_codes(digits: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Level indices ``(..., d)``, channel i in ``[0, levels[i])`` -> codes ``(...)`` in ``[0, prod(levels))``."""
    return (digits.long() * mixed_radix_basis(levels)).sum(dim=-1)


def codes_to_levels(codes: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Codes ``(...)`` -> level indices ``(..., d)``; the inverse of `levels_to_codes`."""
    return codes.long().unsqueeze(-1) // mixed_radix_basis(levels) % levels


def code_metrics(codes: torch.Tensor, codebook_size: int) -> dict[str, torch.Tensor]:
    """How much of the codebook one batch of codes uses: fraction, count, and entropy in bits."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    probs = counts / counts.sum()
    used = (counts > 0).sum().float()
    return {
        "usage": used / codebook_size,
        "entropy": -torch.special.xlogy(probs, probs).sum() / math.log(2),
        "used_curr": used,
    }


@register("bottleneck", "fsq")
class FSQBottleneck(Bottleneck):
    """Finite scalar quantization (Mentzer et al., 2023): a few bounded channels rounded to a fixed grid."""

    def __init__(self, emb_width: int, levels: list[int] | None = None) -> None:
        super().__init__()
        levels = check_levels(DEFAULT_LEVELS if levels is None else levels)
        self.codebook_size = math.prod(levels)
        # A buffer so that it follows the module to its device; not in the state dict, since
        # it is a constructor argument rather than learned state.
        self.register_buffer("levels", torch.tensor(levels), persistent=False)
        self.project_in = nn.Linear(emb_width, len(levels))
        self.project_out = nn.Linear(len(levels), emb_width)

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, emb_width, T)`` -> integer grid coordinates ``(B, T, d)``, with straight-through gradients."""
        z = self.project_in(x.float().transpose(1, 2))  # (B, T, d)
        return round_ste(bound(z, self.levels))

    def _grid_to_codes(self, grid: torch.Tensor) -> torch.Tensor:
        return levels_to_codes(grid.detach().long() + self.levels // 2, self.levels)

    def _grid_to_output(self, grid: torch.Tensor) -> torch.Tensor:
        return self.project_out(grid / (self.levels // 2)).transpose(1, 2)  # (B, emb_width, T)

    def forward(self, x: torch.Tensor) -> BottleneckOutput:
        """Quantise ``(B, emb_width, T)``; nothing is updated, training mode or not."""
        # Float32 even under autocast, so that codes do not depend on it: bfloat16 keeps 8
        # significant bits, enough to move a value near a rounding boundary across it.
        with torch.autocast(device_type=x.device.type, enabled=False):
            grid = self._grid(x)
            quantised = self._grid_to_output(grid)
        codes = self._grid_to_codes(grid)
        commit_loss = torch.zeros((), device=x.device)  # a fixed grid needs no commitment term
        return BottleneckOutput(codes, quantised, commit_loss, code_metrics(codes, self.codebook_size))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, emb_width, T)`` -> codes ``(B, T)`` int64."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._grid_to_codes(self._grid(x))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, T)`` -> ``(B, emb_width, T)`` float32."""
        grid = codes_to_levels(codes, self.levels) - self.levels // 2  # (B, T, d)
        with torch.autocast(device_type=codes.device.type, enabled=False):
            return self._grid_to_output(grid.float())


__all__ = [
    "DEFAULT_LEVELS",
    "FSQBottleneck",
    "bound",
    "check_levels",
    "code_metrics",
    "codes_to_levels",
    "levels_to_codes",
    "mixed_radix_basis",
    "quantise",
    "round_ste",
]
