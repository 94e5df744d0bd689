"""``ema_vq``: a codebook updated by exponential moving averages, with dead-code restarts.

As in Jukebox (openai/jukebox ``vqvae/bottleneck.py``; paper section 3.2 and appendix B):

- the codebook starts as random encoder outputs of the first training batch;
- each training step moves every code to the EMA (decay `mu`, 0.99) of the encoder
  outputs assigned to it, instead of learning it by gradient;
- a code whose EMA assignment count falls below `threshold` (1.0) is dead and is replaced
  by a random encoder output of the current batch (the "random restarts" of section 3.2);
- the encoder is pulled towards its codes by the commitment loss, and the decoder's
  gradient reaches the encoder straight through the quantisation.

Distances are computed in float64 and ties go to the lowest index, so that a vector's code does
not depend on the batch it comes in (see `nearest_codes`); assignments and the EMA statistics run
in float32 even under mixed precision, and the statistics are summed over all ranks, so every rank
keeps the same codebook.

Example::

    bottleneck = EMABottleneck(emb_width=64, codebook_size=512).train()
    out = bottleneck(torch.randn(4, 64, 100))
    out.codes.shape, out.quantised.shape  # (4, 100), (4, 64, 100)
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from jukebox_pl.registry import register
from jukebox_pl.vqvae.interface import Bottleneck, BottleneckOutput


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# Codes whose squared distances to a row differ by less than this fraction of ||x||^2 + max ||c||^2 are tied.
# The float64 rounding of ||x||^2 - 2 x.c + ||c||^2 is below 1e-14 of that sum (D + 3 roundings of 1.1e-16 at
# D = 64); float32 inputs cannot tell distances apart that are closer than 6e-8 of it.
TIE_TOLERANCE = 1e-11
# Distances computed at once: 8 MiB of float64, which the allocator reuses from chunk to chunk (at 32 MiB each
# chunk was mapped afresh, and its page faults took a third of the search).
_CHUNK_DISTANCES = 1 << 20


def nearest_codes(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest code for each row of `x` (N, D), and each row's squared distance (float32).

    A row's code depends on that row and the codebook alone, never on the rows batched with it or on the
    thread count. In float32, ||x||^2 - 2 x.c + ||c||^2 loses the small differences between near codes to
    cancellation, and the matrix product rounds differently with its blocking (batch size, threads), so
    near ties fell one way or the other with the batch. Here the distances are computed in float64, where
    that rounding is far below `TIE_TOLERANCE`, and codes within the tolerance of the nearest are tied and
    go to the lowest index. Rows are taken in chunks, so the float64 distances never take much memory.
    """
    rows64, codebook64 = x.detach().double(), codebook.detach().double()
    code_norms = codebook64.pow(2).sum(1)  # (K,)
    scale = code_norms.max()
    chunk = max(1, _CHUNK_DISTANCES // max(codebook.shape[0], 1))
    codes, squared = [], []
    for rows in rows64.split(chunk):
        row_norms = rows.pow(2).sum(1, keepdim=True)  # (n, 1)
        # ||c||^2 - 2 x.c in one product: ||x||^2, the same for every code of a row, changes no comparison.
        distance = torch.addmm(code_norms, rows, codebook64.t(), alpha=-2)  # (n, K)
        nearest = distance.amin(dim=1, keepdim=True)
        tied = distance <= nearest + TIE_TOLERANCE * (row_norms + scale)
        chosen = tied.max(dim=1).indices  # the first of the tied codes
        codes.append(chosen)
        squared.append(distance.gather(1, chosen[:, None])[:, 0] + row_norms[:, 0])
    return torch.cat(codes), torch.cat(squared).clamp(min=0.0).float()


def nearest_code_indices(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The codes of `nearest_codes` (N,), to the same index, at about the cost of a float32 search.

    The float32 distances ``||c||^2 - 2 x.c`` are off by at most `_float32_error` of each row, whatever the
    order of the sums, so any code whose exact distance lies within `TIE_TOLERANCE` of the nearest is within
    that error twice plus the tolerance of the float32 nearest. A row with one such candidate has it as its
    code; the few rows with more go through `nearest_codes`. Encoding, which needs no distances, uses this.
    The bound holds for IEEE float32 products on the CPU: on a GPU (TF32), or where float32 products may run
    in lower precision (`torch.set_float32_matmul_precision`), every row goes through `nearest_codes`.
    """
    if x.device.type != "cpu" or torch.get_float32_matmul_precision() != "highest":
        return nearest_codes(x, codebook)[0]
    rows, book = x.detach().float(), codebook.detach().float()
    code_norms = book.pow(2).sum(1)
    scale = code_norms.max()
    chunk = max(1, _CHUNK_DISTANCES // max(codebook.shape[0], 1))
    codes = []
    for part in rows.split(chunk):
        row_norms = part.pow(2).sum(1, keepdim=True)
        distance = torch.addmm(code_norms, part, book.t(), alpha=-2)
        slack = 2 * _float32_error(row_norms, scale, book.shape[1]) + TIE_TOLERANCE * (row_norms + scale)
        candidates = distance <= distance.amin(dim=1, keepdim=True) + slack
        chosen = candidates.max(dim=1).indices
        unsure = candidates.sum(dim=1) > 1
        if bool(unsure.any()):
            chosen[unsure] = nearest_codes(part[unsure], codebook)[0]
        codes.append(chosen)
    return torch.cat(codes) if codes else torch.zeros(0, dtype=torch.long, device=x.device)


def _float32_error(row_norms: torch.Tensor, scale: torch.Tensor, width: int) -> torch.Tensor:
    """A bound, four times over, on the rounding of ``||c||^2 - 2 x.c`` computed in float32 for rows of squared
    norms `row_norms` and codes of squared norms up to `scale`: sums of `width` terms round by at most
    ``width * 2**-24`` of the sum of their magnitudes, and ``|x.c| <= ||x|| ||c||``."""
    return 4 * (width + 2) * 2.0**-24 * (scale + 2 * (row_norms * scale).sqrt())


def random_rows(x: torch.Tensor, count: int) -> torch.Tensor:
    """`count` random rows of `x` (N, D); when N < count, rows repeat with a little noise (as Jukebox does)."""
    rows, width = x.shape
    if rows < count:
        repeats = -(-count // rows)
        x = x.repeat(repeats, 1)
        x = x + torch.randn_like(x) * (0.01 / math.sqrt(width))
    return x[torch.randperm(x.shape[0], device=x.device)[:count]]


def entropy_bits(counts: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of the distribution proportional to `counts`."""
    p = counts / counts.sum().clamp(min=1e-12)
    return -(p * torch.log2(p.clamp(min=1e-12))).sum()


@register("bottleneck", "ema_vq")
class EMABottleneck(Bottleneck):
    """A `codebook_size` x `emb_width` codebook learnt by EMA (decay `mu`) with restarts below `threshold` uses."""

    def __init__(self, emb_width: int, codebook_size: int = 2048, mu: float = 0.99, threshold: float = 1.0):
        super().__init__()
        if codebook_size < 2 or emb_width < 1:
            raise ValueError(f"ema_vq: codebook_size must be >= 2 and emb_width >= 1, got {codebook_size}, {emb_width}")
        if not 0.0 <= mu < 1.0:
            raise ValueError(f"ema_vq: mu is an EMA decay in [0, 1), got {mu}")
        self.emb_width, self.codebook_size, self.mu, self.threshold = emb_width, codebook_size, mu, threshold
        self.register_buffer("codebook", torch.zeros(codebook_size, emb_width))
        self.register_buffer("code_sum", torch.zeros(codebook_size, emb_width))  # EMA of assigned vectors' sum
        self.register_buffer("code_count", torch.zeros(codebook_size))  # EMA of assignment counts
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def _rows(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 1).reshape(-1, x.shape[1]).float()  # (B, D, T) -> (B*T, D)

    @torch.no_grad()
    def initialise(self, rows: torch.Tensor) -> None:
        """Codebook <- random rows of the batch (rank 0's, so that all ranks agree)."""
        chosen = random_rows(rows, self.codebook_size)
        if _distributed():
            dist.broadcast(chosen, 0)
        self.codebook.copy_(chosen)
        self.code_sum.copy_(chosen)
        self.code_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def update(self, rows: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """One EMA step from `rows` (N, D) assigned to `codes` (N,); dead codes restart from random rows."""
        one_hot = F.one_hot(codes, self.codebook_size).to(rows.dtype)  # (N, K)
        batch_sum = one_hot.t() @ rows  # (K, D)
        batch_count = one_hot.sum(0)  # (K,)
        candidates = random_rows(rows, self.codebook_size)
        if _distributed():
            dist.all_reduce(batch_sum)
            dist.all_reduce(batch_count)
            dist.broadcast(candidates, 0)
        previous = self.codebook.clone()
        self.code_sum.mul_(self.mu).add_(batch_sum, alpha=1 - self.mu)
        self.code_count.mul_(self.mu).add_(batch_count, alpha=1 - self.mu)
        alive = self.code_count >= self.threshold
        means = self.code_sum / self.code_count.clamp(min=1e-12)[:, None]
        self.codebook.copy_(torch.where(alive[:, None], means, candidates))
        return {
            "entropy": entropy_bits(batch_count),
            "used_curr": (batch_count >= self.threshold).sum().float(),
            "usage": alive.sum().float(),
            "dead": (~alive).sum().float(),
            "dk": torch.linalg.vector_norm(self.codebook - previous) / math.sqrt(previous.numel()),
        }

    def forward(self, x: torch.Tensor) -> BottleneckOutput:
        batch, width, length = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            rows = self._rows(x)  # (N, D) float32
            if self.training and not bool(self.initialised):
                self.initialise(rows.detach())
            codes, squared = nearest_codes(rows.detach(), self.codebook)
            quantised = F.embedding(codes, self.codebook)
            metrics = {"fit": squared.mean()}
            if self.training:
                metrics.update(self.update(rows.detach(), codes))
            else:
                counts = torch.bincount(codes, minlength=self.codebook_size).float()
                metrics.update(entropy=entropy_bits(counts), used_curr=(counts > 0).sum().float())
            # Jukebox: ||q - x||^2 / numel, with q held fixed, pulls the encoder to its codes.
            commit_loss = F.mse_loss(rows, quantised.detach())
            quantised = rows + (quantised - rows).detach()  # straight-through estimator
        quantised = quantised.reshape(batch, length, width).permute(0, 2, 1)
        return BottleneckOutput(codes.reshape(batch, length), quantised, commit_loss, metrics)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            codes = nearest_code_indices(self._rows(x), self.codebook)
        return codes.reshape(x.shape[0], x.shape[2])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.codebook).permute(0, 2, 1)
