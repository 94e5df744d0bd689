"""Musicality statistics of a set of clips: how near its log-mel frames lie to reference songs,
how much of it has a clear pitch, how noise-like its spectrum is, and how much of it is silent.

Each statistic is a pure function of mono audio; `set_statistics` gathers them for one set of
clips against a Gaussian fit of reference frames. The log-mel Fréchet distance is a
mel-statistics analogue of the Fréchet Audio Distance (Kilgour et al. 2019, arXiv:1812.08466)
that needs no downloaded embedding model: Gaussians are fitted to log-mel frames instead of
VGGish embeddings.

Example::

    reference = fit_gaussian(torch.cat([log_mel_frames(song, 16000) for song in held_out]))
    row = set_statistics(samples, 16000, reference)
    print(row.frechet, row.pitched_fraction, row.flatness, row.longest_silence)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from jukebox_pl.metrics.spectral import fit_n_mels, mel_filterbank

FRAME_SECONDS = 0.064  # analysis window: 1024 samples at 16 kHz, three periods of a 50 Hz tone
HOP_SECONDS = 0.016
N_MELS = 40  # few enough bands for a covariance fitted on seconds of frames
LOG_EPS = 1e-5
SILENCE_DB = -50.0  # frame RMS below this many dB under full scale is silence
PITCH_CLARITY = 0.7  # a frame is pitched when its normalised autocorrelation peak reaches this
PITCH_RANGE_HZ = (60.0, 1000.0)


def _frames(audio: Tensor, sample_rate: int) -> Tensor:
    """Mono audio (T,) -> overlapping frames (F, N), float64; audio shorter than a frame is zero-padded."""
    if audio.dim() != 1:
        raise ValueError(f"expected mono audio (samples,), got {tuple(audio.shape)}")
    size, hop = round(FRAME_SECONDS * sample_rate), round(HOP_SECONDS * sample_rate)
    audio = audio.to(torch.float64)
    if audio.numel() < size:
        audio = torch.nn.functional.pad(audio, (0, size - audio.numel()))
    return audio.unfold(0, size, hop)


def frame_rms_db(audio: Tensor, sample_rate: int) -> Tensor:
    """Each frame's RMS in dB under full scale (1.0): (F,)."""
    rms = _frames(audio, sample_rate).pow(2).mean(-1).sqrt()
    return 20.0 * torch.log10(rms.clamp(min=1e-10))


def log_mel_frames(audio: Tensor, sample_rate: int, n_mels: int = N_MELS) -> Tensor:
    """Log mel energies of each frame of mono audio: (F, n_mels), float64, Hann window, Slaney mels."""
    frames = _frames(audio, sample_rate)
    size = frames.shape[-1]
    power = torch.fft.rfft(frames * torch.hann_window(size, periodic=True, dtype=frames.dtype), dim=-1).abs() ** 2
    bank = mel_filterbank(sample_rate, size, fit_n_mels(sample_rate, size, n_mels)).to(frames.dtype)
    return torch.log(power @ bank.T + LOG_EPS)


@dataclass(frozen=True)
class GaussianFit:
    """Mean (D,) and covariance (D, D) of a set of feature frames."""

    mean: Tensor
    covariance: Tensor


def fit_gaussian(frames: Tensor) -> GaussianFit:
    """The maximum-likelihood Gaussian of frames (F, D); needs at least two frames."""
    if frames.dim() != 2 or frames.shape[0] < 2:
        raise ValueError(f"need frames (F >= 2, D), got {tuple(frames.shape)}")
    frames = frames.to(torch.float64)
    mean = frames.mean(0)
    centred = frames - mean
    return GaussianFit(mean, centred.T @ centred / (frames.shape[0] - 1))


def _psd_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: GaussianFit, b: GaussianFit) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, the Fréchet distance of two Gaussians.

    The trace of the matrix square root is taken as that of ``(A^1/2 S_b A^1/2)^1/2`` with
    ``A = S_a``: the same eigenvalues, but a symmetric matrix, so `eigh` is stable on it.
    """
    root_a = _psd_sqrt(a.covariance)
    cross = torch.linalg.eigvalsh(root_a @ b.covariance @ root_a).clamp(min=0).sqrt().sum()
    distance = (a.mean - b.mean).pow(2).sum() + a.covariance.trace() + b.covariance.trace() - 2 * cross
    return max(float(distance), 0.0)


def pitch_clarity(audio: Tensor, sample_rate: int, range_hz: tuple[float, float] = PITCH_RANGE_HZ) -> Tensor:
    """Each frame's periodicity in [0, 1]: the highest peak of its normalised square difference function.

    McLeod and Wyvill's NSDF (2005, "A smarter way to find pitch") is ``2 r(t) / m(t)`` with
    ``r`` the autocorrelation and ``m(t) = sum x[n]^2 + x[n+t]^2`` over the overlap; it is 1 for a
    signal that repeats exactly after ``t`` samples. Lags before the NSDF first turns negative
    are skipped, so that the slow decay of a smooth (low-passed) signal is not taken for a period.
    Only periods within `range_hz` count. (F,), float64.
    """
    frames = _frames(audio, sample_rate)
    frames = frames - frames.mean(-1, keepdim=True)
    size = frames.shape[-1]
    spectrum = torch.fft.rfft(frames, n=2 * size, dim=-1)
    autocorrelation = torch.fft.irfft(spectrum.abs() ** 2, n=2 * size, dim=-1)[:, :size]
    energy = frames.pow(2)
    # m(t) = sum_{n < size - t} x[n]^2 + sum_{n >= t} x[n]^2
    head = torch.cumsum(energy, -1).flip(-1)  # head[t] = sum_{n <= size-1-t} x[n]^2
    tail = torch.cumsum(energy.flip(-1), -1).flip(-1)  # tail[t] = sum_{n >= t} x[n]^2
    nsdf = 2 * autocorrelation / (head + tail).clamp(min=1e-12)
    low, high = math.ceil(sample_rate / range_hz[1]), min(size // 2, math.floor(sample_rate / range_hz[0]))
    lags = torch.arange(size)
    negative = nsdf < 0
    first_negative = torch.where(negative.any(-1), negative.float().argmax(-1), torch.full_like(lags[:1], size))
    allowed = (lags[None] >= low) & (lags[None] <= high) & (lags[None] >= first_negative[:, None])
    return torch.where(allowed, nsdf, torch.zeros_like(nsdf)).amax(-1).clamp(0.0, 1.0)


def spectral_flatness(audio: Tensor, sample_rate: int) -> Tensor:
    """Each frame's geometric over arithmetic mean of its Hann-windowed power spectrum: (F,).

    White noise scores about exp(-Euler's gamma) = 0.56 (exponentially distributed bin powers);
    a pure tone scores near 0. DC and Nyquist bins are left out.
    """
    frames = _frames(audio, sample_rate)
    size = frames.shape[-1]
    power = torch.fft.rfft(frames * torch.hann_window(size, periodic=True, dtype=frames.dtype), dim=-1).abs() ** 2
    power = power[:, 1:-1] + 1e-20
    return torch.exp(torch.log(power).mean(-1)) / power.mean(-1)


def longest_run(flags: Tensor) -> int:
    """The length of the longest run of True in a 1-D boolean tensor."""
    return max((sum(1 for _ in run) for flag, run in itertools.groupby(flags.tolist()) if flag), default=0)


@dataclass(frozen=True)
class SetStatistics:
    """One row of the musicality table."""

    clips: int
    seconds: float
    frechet: float  # log-mel Fréchet distance to the reference
    pitched_fraction: float  # frames with a clear pitch, of all frames
    flatness: float  # mean spectral flatness of the frames that are not silent
    silent_fraction: float
    longest_silence: float  # seconds, the longest in any one clip


def set_statistics(clips: Sequence[Tensor], sample_rate: int, reference: GaussianFit) -> SetStatistics:
    """The musicality statistics of mono `clips` against a `reference` fit of log-mel frames."""
    if not clips:
        raise ValueError("set_statistics needs at least one clip")
    mels, pitched, flatness, silent = [], [], [], []
    longest = 0
    for clip in clips:
        quiet = frame_rms_db(clip, sample_rate) < SILENCE_DB
        mels.append(log_mel_frames(clip, sample_rate))
        pitched.append((pitch_clarity(clip, sample_rate) >= PITCH_CLARITY) & ~quiet)
        flatness.append(spectral_flatness(clip, sample_rate)[~quiet])
        silent.append(quiet)
        longest = max(longest, longest_run(quiet))
    loud = torch.cat(flatness)
    return SetStatistics(
        clips=len(clips),
        seconds=round(sum(clip.numel() for clip in clips) / sample_rate, 2),
        frechet=frechet_distance(fit_gaussian(torch.cat(mels)), reference),
        pitched_fraction=float(torch.cat(pitched).double().mean()),
        flatness=float(loud.mean()) if loud.numel() else float("nan"),
        silent_fraction=float(torch.cat(silent).double().mean()),
        longest_silence=round(longest * HOP_SECONDS, 3),
    )


def white_noise(samples: int, generator: torch.Generator, rms: float = 0.1) -> Tensor:
    """Gaussian white noise of the given RMS: (samples,) float64."""
    return torch.randn(samples, generator=generator, dtype=torch.float64) * rms


def pink_noise(samples: int, generator: torch.Generator, rms: float = 0.1) -> Tensor:
    """Noise whose power falls as 1/f (white noise shaped in the frequency domain): (samples,) float64."""
    spectrum = torch.fft.rfft(torch.randn(samples, generator=generator, dtype=torch.float64))
    frequency = torch.arange(spectrum.numel(), dtype=torch.float64).clamp(min=1.0)
    noise = torch.fft.irfft(spectrum / frequency.sqrt(), n=samples)
    return noise * (rms / noise.pow(2).mean().sqrt().clamp(min=1e-12))
