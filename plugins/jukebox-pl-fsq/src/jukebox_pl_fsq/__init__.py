"""Finite scalar quantization (FSQ) as a jukebox-pl bottleneck: a fixed grid instead of a learned codebook.

Mentzer, Minnen, Agustsson and Tschannen, "Finite Scalar Quantization: VQ-VAE Made Simple"
(2023, arXiv:2309.15505). The encoder output is projected down to ``d = len(levels)``
channels; channel ``i`` is bounded with a tanh and rounded to one of ``levels[i]`` integers,
so the codebook is every combination of them, ``prod(levels)`` codes. Only the two
projections are learned: no codebook, no commitment loss, no dead codes to restart.

The quantiser itself is vector-quantize-pytorch's ``FSQ`` (lucidrains, the paper's
Appendix A.1 in PyTorch): this plugin adapts it to jukebox-pl's ``Bottleneck`` interface
and owns only the two projections, so that their weights keep the names they are stored
under.

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
from vector_quantize_pytorch import FSQ

from jukebox_pl.registry import register
from jukebox_pl.vqvae.bottleneck import entropy_bits
from jukebox_pl.vqvae.interface import Bottleneck, BottleneckOutput

# The paper's Table 1 level set for a codebook of about 2^10 codes: 8 * 5 * 5 * 5 = 1000.
DEFAULT_LEVELS = (8, 5, 5, 5)


def check_levels(levels: Sequence[int]) -> list[int]:
    """``levels`` as a list, or a ValueError that says what is wrong with it."""
    valid = (
        isinstance(levels, Sequence)
        and not isinstance(levels, str)
        and len(levels) > 0
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 3 for n in levels)
    )
    if not valid:
        # vector-quantize-pytorch's FSQ takes 2 levels only in its symmetry-preserving variant, another
        # quantiser; the paper's level sets (its Table 1) use 5 to 8.
        raise ValueError(f"fsq: levels must be a non-empty list of integers >= 3 (one per FSQ channel), got {levels!r}")
    return list(levels)


def code_metrics(codes: torch.Tensor, codebook_size: int) -> dict[str, torch.Tensor]:
    """How much of the codebook one batch of codes uses: fraction, count, and entropy in bits."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    used = (counts > 0).sum().float()
    return {"usage": used / codebook_size, "entropy": entropy_bits(counts), "used_curr": used}


@register("bottleneck", "fsq")
class FSQBottleneck(Bottleneck):
    """Finite scalar quantization (Mentzer et al., 2023): a few bounded channels rounded to a fixed grid."""

    def __init__(self, emb_width: int, levels: list[int] | None = None) -> None:
        super().__init__()
        levels = check_levels(DEFAULT_LEVELS if levels is None else levels)
        self.quantiser = FSQ(levels)  # d = len(levels) channels in and out: no projections of its own
        self.codebook_size = math.prod(levels)
        # A buffer so that it follows the module to its device; not in the state dict, since
        # it is a constructor argument rather than learned state.
        self.register_buffer("levels", torch.tensor(levels), persistent=False)
        self.project_in = nn.Linear(emb_width, len(levels))
        self.project_out = nn.Linear(len(levels), emb_width)

    def _grid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, emb_width, T)`` -> grid points in [-1, 1] ``(B, T, d)``, straight-through, and codes ``(B, T)``."""
        grid, codes = self.quantiser(self.project_in(x.float().transpose(1, 2)))
        return grid, codes.long()

    def forward(self, x: torch.Tensor) -> BottleneckOutput:
        """Quantise ``(B, emb_width, T)``; nothing is updated, training mode or not."""
        # Float32 even under autocast, so that codes do not depend on it: bfloat16 keeps 8
        # significant bits, enough to move a value near a rounding boundary across it.
        with torch.autocast(device_type=x.device.type, enabled=False):
            grid, codes = self._grid(x)
            quantised = self.project_out(grid).transpose(1, 2)  # (B, emb_width, T)
        commit_loss = torch.zeros((), device=x.device)  # a fixed grid needs no commitment term
        return BottleneckOutput(codes, quantised, commit_loss, code_metrics(codes, self.codebook_size))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, emb_width, T)`` -> codes ``(B, T)`` int64."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._grid(x)[1]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, T)`` -> ``(B, emb_width, T)`` float32."""
        with torch.autocast(device_type=codes.device.type, enabled=False):
            grid = self.quantiser.indices_to_codes(codes)  # (B, T, d) in [-1, 1]
            return self.project_out(grid.float()).transpose(1, 2)


__all__ = ["DEFAULT_LEVELS", "FSQBottleneck", "check_levels", "code_metrics"]
