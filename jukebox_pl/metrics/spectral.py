"""Reconstruction metrics between decoded and original audio, per item and as torchmetrics ``Metric``s.

Each metric is a pure per-item function ``f(preds, target) -> (B,)`` (so a report can list the
value of every clip) and a ``Metric`` that averages it over items. The ``Metric``s keep only sums
as state, so that ``update`` on two batches equals ``update`` on their concatenation and the
reduction across ranks is exact. Audio is shaped (B, 1, T) or (B, T).

Example::

    metric = SpectralConvergence()
    metric.update(decoded, original)
    print(to_db(metric.compute()))  # SC in dB, as the benchmark reports it
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from auraloss.freq import MultiResolutionSTFTLoss
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

from jukebox_pl.registry import register
from jukebox_pl.stft import (
    JUKEBOX_STFT,
    MULTISPEC_HOP_LENGTHS,
    MULTISPEC_N_FFTS,
    MULTISPEC_WINDOW_LENGTHS,
    stft_magnitude,
)

# Jukebox (openai/jukebox, jukebox/utils/audio_utils.py, DefaultSTFTValues and spectral_convergence).
SC_N_FFT, SC_HOP_LENGTH, SC_WIN_LENGTH = JUKEBOX_STFT
SC_EPS = 2e-3

# This benchmark's log-mel scales: hop n_fft // 4 and window n_fft at every scale.
LOG_MEL_N_FFTS = (2048, 1024, 512, 256)
LOG_MEL_N_MELS = 80
LOG_MEL_EPS = 1e-5  # keeps log() finite in silent frames

# Slaney's mel scale (M. Slaney, "Auditory Toolbox", Interval Research Technical Report 1998-010;
# also librosa.hz_to_mel with htk=False): linear at 200/3 Hz per mel below 1 kHz (= 15 mel),
# logarithmic above with 27 mel per factor 6.4 in frequency.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_MEL_PER_LOG_HZ = 27.0 / math.log(6.4)


def as_items(preds: Tensor, target: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Both signals as (B, T) tensors of `dtype`; (B, 1, T) loses its channel axis."""
    if preds.shape != target.shape:
        raise ValueError(
            f"preds and target must have the same shape, got {tuple(preds.shape)} and {tuple(target.shape)}"
        )
    if preds.dim() == 3 and preds.shape[1] == 1:
        preds, target = preds[:, 0], target[:, 0]
    elif preds.dim() != 2:
        raise ValueError(f"audio must be shaped (B, 1, T) or (B, T), got {tuple(preds.shape)}")
    return preds.to(dtype), target.to(dtype)


def to_db(value: Tensor | float) -> Tensor:
    """20 * log10(value): an amplitude ratio such as spectral convergence in dB."""
    return 20.0 * torch.log10(torch.as_tensor(value))


# ------------------------------------------------------------------------------------ per item


def spectral_convergence(preds: Tensor, target: Tensor) -> Tensor:
    """Jukebox's spectral convergence per item, ``||S_target - S_preds||_F / max(||S_target||_F, eps)``: (B,).

    At Jukebox's STFT resolution (`JUKEBOX_STFT`) and `SC_EPS`. Items whose target spectrum has norm <= eps
    (silence) score 0, as in Jukebox. Computed in float32 whatever the input dtype.
    """
    preds, target = as_items(preds, target)
    spec_target = stft_magnitude(target, *JUKEBOX_STFT)
    spec_preds = stft_magnitude(preds, *JUKEBOX_STFT)
    target_norm = torch.linalg.vector_norm(spec_target, dim=(-2, -1))
    residual_norm = torch.linalg.vector_norm(spec_target - spec_preds, dim=(-2, -1))
    mask = (target_norm > SC_EPS).to(residual_norm.dtype)
    return residual_norm * mask / target_norm.clamp(min=SC_EPS)


def multi_resolution_stft(
    preds: Tensor,
    target: Tensor,
    fft_sizes: Sequence[int] = MULTISPEC_N_FFTS,
    hop_sizes: Sequence[int] = MULTISPEC_HOP_LENGTHS,
    win_lengths: Sequence[int] = MULTISPEC_WINDOW_LENGTHS,
) -> Tensor:
    """auraloss's ``MultiResolutionSTFTLoss`` (spectral convergence + log-magnitude L1, averaged over
    resolutions) per item, in float32: (B,)."""
    preds, target = as_items(preds, target)
    loss = MultiResolutionSTFTLoss(fft_sizes=list(fft_sizes), hop_sizes=list(hop_sizes), win_lengths=list(win_lengths))
    # auraloss averages over the whole batch, so each item goes through on its own, shaped (1, 1, T).
    return torch.stack([loss(p[None, None], t[None, None]) for p, t in zip(preds, target, strict=True)])


def hz_to_mel(hz: Tensor) -> Tensor:
    """Frequency in Hz to Slaney mel (1000 Hz = 15 mel, 6400 Hz = 42 mel)."""
    linear = hz / _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_BREAK_MEL + _SLANEY_MEL_PER_LOG_HZ * torch.log(
        hz.clamp(min=_SLANEY_BREAK_HZ) / _SLANEY_BREAK_HZ
    )
    return torch.where(hz >= _SLANEY_BREAK_HZ, logarithmic, linear)


def mel_to_hz(mel: Tensor) -> Tensor:
    """Slaney mel to frequency in Hz; the inverse of `hz_to_mel`."""
    linear = mel * _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_BREAK_HZ * torch.exp(
        (mel.clamp(min=_SLANEY_BREAK_MEL) - _SLANEY_BREAK_MEL) / _SLANEY_MEL_PER_LOG_HZ
    )
    return torch.where(mel >= _SLANEY_BREAK_MEL, logarithmic, linear)


def _triangles(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """Triangles peaking at 1 on mel-spaced centres, sampled at the FFT bins: (n_mels, n_fft // 2 + 1) float64."""
    bin_hz = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_band = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64))
    edges_hz = mel_to_hz(torch.linspace(mel_band[0].item(), mel_band[1].item(), n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    return torch.minimum(rising, falling).clamp(min=0.0)


def _check_band(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> None:
    if sample_rate <= 0 or n_fft < 2 or n_mels < 1:
        raise ValueError(f"need sample_rate > 0, n_fft >= 2 and n_mels >= 1, got {sample_rate}, {n_fft}, {n_mels}")
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}, got {f_min} and {f_max}")


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> Tensor:
    """Slaney-scale triangular mel filters, each peaking at 1 (not area-normalised): (n_mels, n_fft // 2 + 1).

    Built as librosa.filters.mel(htk=False, norm=None) builds it. A filter narrower than the FFT's
    bin spacing would sample no bin; rather than return an all-zero row, this raises ValueError.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    _check_band(sample_rate, n_fft, n_mels, f_min, f_max)
    weights = _triangles(sample_rate, n_fft, n_mels, f_min, f_max)
    empty = (weights.sum(dim=-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"{n_mels} mel filters over {f_min}-{f_max} Hz are too narrow for n_fft={n_fft} at {sample_rate} Hz: "
            f"filters {empty} cover no FFT bin; use fewer mels (see fit_n_mels) or a larger n_fft"
        )
    return weights.float()


def fit_n_mels(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> int:
    """The largest count <= `n_mels` whose mel filters all cover at least one FFT bin of `n_fft`."""
    f_max = sample_rate / 2 if f_max is None else f_max
    _check_band(sample_rate, n_fft, n_mels, f_min, f_max)
    for count in range(n_mels, 0, -1):
        if bool((_triangles(sample_rate, n_fft, count, f_min, f_max).sum(dim=-1) > 0).all()):
            return count
    raise ValueError(f"the band {f_min}-{f_max} Hz holds no FFT bin of n_fft={n_fft} at {sample_rate} Hz")


@functools.lru_cache(maxsize=64)
def _fitted_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    return mel_filterbank(sample_rate, n_fft, fit_n_mels(sample_rate, n_fft, n_mels, f_min, f_max), f_min, f_max)


def log_mel_distance(
    preds: Tensor,
    target: Tensor,
    sample_rate: int,
    n_ffts: Sequence[int] = LOG_MEL_N_FFTS,
    n_mels: int = LOG_MEL_N_MELS,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> Tensor:
    """Multi-scale log-mel L1 per item, ``mean |log(mel_target + 1e-5) - log(mel_preds + 1e-5)|``
    averaged over the scales: (B,).

    At each scale the window is `n_fft` and the hop `n_fft // 4`; the mel magnitude is the filter
    bank times |STFT|. Where `n_mels` filters would leave one empty at a small `n_fft`, that scale
    uses `fit_n_mels` filters instead. Computed in float32. The idea follows the multi-scale mel
    loss of DAC (Kumar et al. 2023, arXiv:2306.06546); the scales are this benchmark's.
    """
    preds, target = as_items(preds, target)
    f_max = sample_rate / 2 if f_max is None else float(f_max)
    per_scale = []
    for n_fft in n_ffts:
        filterbank = _fitted_filterbank(sample_rate, n_fft, n_mels, float(f_min), f_max).to(preds.device)
        mel_preds = filterbank @ stft_magnitude(preds, n_fft, n_fft // 4, n_fft)  # (B, n_mels, frames)
        mel_target = filterbank @ stft_magnitude(target, n_fft, n_fft // 4, n_fft)
        log_difference = torch.log(mel_target + LOG_MEL_EPS) - torch.log(mel_preds + LOG_MEL_EPS)
        per_scale.append(log_difference.abs().mean(dim=(-2, -1)))
    return torch.stack(per_scale).mean(dim=0)


def waveform_l1(preds: Tensor, target: Tensor) -> Tensor:
    """Mean absolute sample difference per item, in float32: (B,)."""
    preds, target = as_items(preds, target)
    return (preds - target).abs().mean(dim=-1)


def si_sdr(preds: Tensor, target: Tensor) -> Tensor:
    """Scale-invariant SDR in dB per item, zero-mean, computed in float64: (B,).

    float64 because torchmetrics adds the dtype's eps to both energies, which caps float32 near 80 dB.
    """
    preds, target = as_items(preds, target, dtype=torch.float64)
    return scale_invariant_signal_distortion_ratio(preds, target, zero_mean=True)


# ------------------------------------------------------------------------------------ metrics


class MeanOverItems(Metric):
    """Mean over items of a per-item value; sums as state so that batches and ranks reduce exactly."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # float64 so that a long benchmark's running sum does not drift.
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        """The value of every item: (B,)."""
        raise NotImplementedError

    def update(self, preds: Tensor, target: Tensor) -> None:
        values = self.per_item(preds, target)
        self.last_values = values.detach()  # the batch's per-item values, for per-item reports
        self.total += values.to(torch.float64).sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        return self.total / self.count


@register("metric", "spectral_convergence")
class SpectralConvergence(MeanOverItems):
    """Mean over items of Jukebox's linear spectral convergence (lower is better).

    The benchmark reports it in dB as ``to_db(metric.compute())``, 20 * log10 of this mean linear
    value (not the mean of per-item dB values).
    """

    higher_is_better = False
    per_item = staticmethod(spectral_convergence)

    @property
    def settings(self) -> dict[str, Any]:
        """The STFT and eps settings, for a report."""
        return {"n_fft": SC_N_FFT, "hop_length": SC_HOP_LENGTH, "win_length": SC_WIN_LENGTH, "eps": SC_EPS}


@register("metric", "multi_resolution_stft")
class MultiResolutionSTFT(MeanOverItems):
    """Mean over items of auraloss's multi-resolution STFT loss, at Jukebox's resolutions by default."""

    higher_is_better = False

    def __init__(
        self,
        fft_sizes: Sequence[int] = MULTISPEC_N_FFTS,
        hop_sizes: Sequence[int] = MULTISPEC_HOP_LENGTHS,
        win_lengths: Sequence[int] = MULTISPEC_WINDOW_LENGTHS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not len(fft_sizes) == len(hop_sizes) == len(win_lengths) > 0:
            raise ValueError(
                f"fft_sizes, hop_sizes and win_lengths need one entry per resolution, "
                f"got {list(fft_sizes)}, {list(hop_sizes)} and {list(win_lengths)}"
            )
        self.fft_sizes, self.hop_sizes, self.win_lengths = tuple(fft_sizes), tuple(hop_sizes), tuple(win_lengths)

    def per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        return multi_resolution_stft(preds, target, self.fft_sizes, self.hop_sizes, self.win_lengths)

    @property
    def settings(self) -> dict[str, Any]:
        """The resolutions, for a report (named so as not to hide ``nn.Module.parameters()``)."""
        return {"fft_sizes": self.fft_sizes, "hop_sizes": self.hop_sizes, "win_lengths": self.win_lengths}


@register("metric", "log_mel_distance")
class LogMelDistance(MeanOverItems):
    """Mean over items of the multi-scale log-mel L1 distance (see `log_mel_distance`)."""

    higher_is_better = False

    def __init__(
        self,
        sample_rate: int,
        n_ffts: Sequence[int] = LOG_MEL_N_FFTS,
        n_mels: int = LOG_MEL_N_MELS,
        f_min: float = 0.0,
        f_max: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sample_rate, self.n_ffts, self.n_mels = sample_rate, tuple(n_ffts), n_mels
        self.f_min, self.f_max = float(f_min), float(sample_rate / 2 if f_max is None else f_max)
        # Fails here, not at the first update, when the band or a scale cannot hold the filters.
        self.n_mels_per_scale = tuple(fit_n_mels(sample_rate, n, n_mels, self.f_min, self.f_max) for n in self.n_ffts)

    def per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        return log_mel_distance(preds, target, self.sample_rate, self.n_ffts, self.n_mels, self.f_min, self.f_max)

    @property
    def settings(self) -> dict[str, Any]:
        """The scales and mel bands actually used, for a report."""
        return {
            "sample_rate": self.sample_rate,
            "n_ffts": self.n_ffts,
            "hop_lengths": tuple(n // 4 for n in self.n_ffts),
            "n_mels": self.n_mels_per_scale,
            "f_min": self.f_min,
            "f_max": self.f_max,
        }


@register("metric", "waveform_l1")
class WaveformL1(MeanOverItems):
    """Mean over items of the mean absolute sample error."""

    higher_is_better = False
    per_item = staticmethod(waveform_l1)


@register("metric", "si_sdr")
class SISDR(MeanOverItems):
    """Mean over items of the zero-mean scale-invariant SDR in dB, computed in float64."""

    higher_is_better = True
    per_item = staticmethod(si_sdr)
