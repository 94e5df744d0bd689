"""Reconstruction losses of the VQ-VAE (registered as kind ``loss``).

Every loss is called as ``loss(output, target, bandwidth)`` on audio ``(B, C, T)`` and
returns a scalar. Jukebox divides each loss by a statistic of the training data, its
*bandwidth*, so that the weights mean the same thing for loud and quiet datasets
(openai/jukebox ``utils/audio_utils.py: calculate_bandwidth`` and ``vqvae/vqvae.py:
_loss_fn``): the sample-domain losses by the data's variance (``l2``) or mean absolute
value (``l1``), the spectral loss by the mean Frobenius norm of a crop's STFT magnitude
(``spec``). STFTs run in float32 even under mixed precision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from jukebox_pl.registry import register
from jukebox_pl.stft import (
    JUKEBOX_STFT,
    MULTISPEC_HOP_LENGTHS,
    MULTISPEC_N_FFTS,
    MULTISPEC_WINDOW_LENGTHS,
    stft_magnitude,
)


@dataclass(frozen=True)
class Bandwidth:
    """Scale statistics of the training audio that normalise the losses."""

    l1: float = 1.0  # mean |x|
    l2: float = 1.0  # variance of x
    spec: float = 1.0  # mean over crops of ||STFT magnitude||_F

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.l1, self.l2, self.spec], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> Bandwidth:
        return cls(*(float(v) for v in values))


def _per_item_norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)


class AccumulatedBandwidth:
    """Running sums behind a `Bandwidth`; ranks all-reduce `sums` and then call `result`."""

    def __init__(self) -> None:
        # samples, sum, sum of squares, sum of |x|, sum of crops' spectral norms, crops
        self.sums = torch.zeros(6, dtype=torch.float64)

    def add(self, audio: torch.Tensor) -> None:
        """Add a batch of crops ``(B, C, T)``."""
        x = audio.detach().double()
        spec_norms = _per_item_norm(stft_magnitude(audio.detach(), *JUKEBOX_STFT)).double()
        batch = [x.numel(), x.sum(), x.pow(2).sum(), x.abs().sum(), spec_norms.sum(), audio.shape[0]]
        self.sums += torch.tensor([float(v) for v in batch], dtype=torch.float64)

    @property
    def samples(self) -> float:
        return float(self.sums[0])

    def result(self) -> Bandwidth:
        samples, total, squares, absolute, spec, crops = (float(v) for v in self.sums)
        if samples == 0:
            raise ValueError("bandwidth: no audio seen")
        mean = total / samples
        variance = squares / samples - mean**2
        if variance <= 0:
            raise ValueError("bandwidth: the training audio is silent (zero variance); check the dataset")
        return Bandwidth(l1=absolute / samples, l2=variance, spec=spec / crops)


def measure_bandwidth(batches: Iterable[torch.Tensor]) -> Bandwidth:
    """The `Bandwidth` of crops ``(B, C, T)`` drawn from the training data."""
    accumulated = AccumulatedBandwidth()
    for audio in batches:
        accumulated.add(audio)
    return accumulated.result()


@register("loss", "l1")
class L1Loss(nn.Module):
    """Mean absolute error divided by the data's mean absolute value."""

    def forward(self, output: torch.Tensor, target: torch.Tensor, bandwidth: Bandwidth) -> torch.Tensor:
        return (output.float() - target.float()).abs().mean() / bandwidth.l1


@register("loss", "l2")
class L2Loss(nn.Module):
    """Mean squared error divided by the data's variance."""

    def forward(self, output: torch.Tensor, target: torch.Tensor, bandwidth: Bandwidth) -> torch.Tensor:
        return (output.float() - target.float()).pow(2).mean() / bandwidth.l2


@register("loss", "linf")
class LinfLoss(nn.Module):
    """Mean of each item's `k` largest squared errors, divided by the data's variance (Jukebox: k = 2048)."""

    def __init__(self, k: int = 2048) -> None:
        super().__init__()
        self.k = k

    def forward(self, output: torch.Tensor, target: torch.Tensor, bandwidth: Bandwidth) -> torch.Tensor:
        squared = (output.float() - target.float()).pow(2).reshape(target.shape[0], -1)
        largest, _ = torch.topk(squared, min(self.k, squared.shape[1]), dim=1)
        return largest.mean() / bandwidth.l2


@register("loss", "lmix")
class LMixLoss(nn.Module):
    """Weighted sum of l1, l2 and linf; Jukebox's 5B VQ-VAE uses l2 1.0 + linf 0.02 (hparams.py)."""

    def __init__(self, l1: float = 0.0, l2: float = 1.0, linf: float = 0.02, linf_k: int = 2048) -> None:
        super().__init__()
        self.weights = {"l1": l1, "l2": l2, "linf": linf}
        self.parts = nn.ModuleDict({"l1": L1Loss(), "l2": L2Loss(), "linf": LinfLoss(linf_k)})

    def forward(self, output: torch.Tensor, target: torch.Tensor, bandwidth: Bandwidth) -> torch.Tensor:
        total = output.new_zeros((), dtype=torch.float32)
        for name, weight in self.weights.items():
            if weight:
                total = total + weight * self.parts[name](output, target, bandwidth)
        return total


@register("loss", "multispectral")
class MultiSpectralLoss(nn.Module):
    """Jukebox's multi-resolution spectral loss: the mean over resolutions of ``||S(x) - S(y)||_F``.

    Per item, averaged over the batch, divided by the data's spectral bandwidth. Defaults
    are Jukebox's resolutions (hparams.py ``multispec_loss_*``): n_fft 2048/1024/512, hop
    240/120/50, window 1200/600/240.

    With ``log_weight > 0`` it adds, at the same resolutions, ``log_weight`` times the mean absolute
    difference of the log magnitudes (each floored at `log_floor`): the term of auraloss'
    ``STFTMagnitudeLoss(log=True)``, computed here from the same magnitudes so that the STFTs are taken
    once (auraloss taking them again made a demo VQ-VAE step 30% slower). Jukebox's term weighs each bin
    by its magnitude, so a codec trained on it alone leaves a noise floor under quiet notes and loses
    the quiet upper harmonics; the log term weighs every bin alike (docs/vqvae.md, "The demo's loss").
    """

    def __init__(
        self,
        n_ffts: Sequence[int] = MULTISPEC_N_FFTS,
        hop_lengths: Sequence[int] = MULTISPEC_HOP_LENGTHS,
        window_lengths: Sequence[int] = MULTISPEC_WINDOW_LENGTHS,
        log_weight: float = 0.0,
        log_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        if not len(n_ffts) == len(hop_lengths) == len(window_lengths) > 0:
            raise ValueError("multispectral: n_ffts, hop_lengths and window_lengths need the same, non-zero length")
        if log_weight < 0 or log_floor <= 0:
            raise ValueError(f"multispectral: need log_weight >= 0 and log_floor > 0, got {log_weight}, {log_floor}")
        self.resolutions = list(zip(n_ffts, hop_lengths, window_lengths, strict=True))
        self.log_weight, self.log_floor = log_weight, log_floor

    def forward(self, output: torch.Tensor, target: torch.Tensor, bandwidth: Bandwidth) -> torch.Tensor:
        with torch.autocast(device_type=output.device.type, enabled=False):
            terms = []
            for resolution in self.resolutions:
                wanted, got = stft_magnitude(target, *resolution), stft_magnitude(output, *resolution)
                term = _per_item_norm(wanted - got).mean() / bandwidth.spec
                if self.log_weight:
                    logs = [m.clamp(min=self.log_floor).log() for m in (wanted, got)]
                    term = term + self.log_weight * (logs[0] - logs[1]).abs().mean()
                terms.append(term)
            return torch.stack(terms).mean()


@register("loss", "mrstft")
class AuralossMultiResolutionSTFT(nn.Module):
    """auraloss' multi-resolution STFT loss (spectral convergence + log magnitude), at Jukebox's resolutions.

    It is already scale-free, so the bandwidth is not used.
    """

    def __init__(
        self,
        n_ffts: Sequence[int] = MULTISPEC_N_FFTS,
        hop_lengths: Sequence[int] = MULTISPEC_HOP_LENGTHS,
        window_lengths: Sequence[int] = MULTISPEC_WINDOW_LENGTHS,
    ) -> None:
        super().__init__()
        from auraloss.freq import MultiResolutionSTFTLoss

        self.loss = MultiResolutionSTFTLoss(list(n_ffts), list(hop_lengths), list(window_lengths))

    def forward(self, output: torch.Tensor, target: torch.Tensor, bandwidth: Bandwidth) -> torch.Tensor:
        with torch.autocast(device_type=output.device.type, enabled=False):
            return self.loss(output.float(), target.float())
