"""The musicality statistics on constructed signals: tones, noise, silence and Gaussians."""

from __future__ import annotations

import math

import pytest
import torch

from jukebox_pl.metrics.musicality import (
    PITCH_CLARITY,
    GaussianFit,
    fit_gaussian,
    frechet_distance,
    log_mel_frames,
    longest_run,
    pink_noise,
    pitch_clarity,
    set_statistics,
    spectral_flatness,
    white_noise,
)

SAMPLE_RATE = 16000


def tone(hz: float, seconds: float, amplitude: float = 0.3, phase: float = 0.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SAMPLE_RATE), dtype=torch.float64) / SAMPLE_RATE
    return amplitude * torch.sin(2 * math.pi * hz * t + phase)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))


def test_a_sine_is_pitched_in_every_frame_and_has_a_near_zero_flatness(generator):
    hz = float(torch.empty(()).uniform_(80, 900, generator=generator))
    sine = tone(hz, 2.0, phase=float(torch.rand((), generator=generator)) * 6.0)
    assert float(pitch_clarity(sine, SAMPLE_RATE).min()) > 0.99
    assert float(spectral_flatness(sine, SAMPLE_RATE).mean()) < 1e-3


def test_a_harmonic_note_is_pitched_and_a_smooth_noise_is_not(generator):
    hz = float(torch.empty(()).uniform_(100, 400, generator=generator))
    note = sum(tone(hz * k, 1.0, amplitude=0.3 / k) for k in range(1, 6))
    assert float((pitch_clarity(note, SAMPLE_RATE) >= PITCH_CLARITY).double().mean()) == 1.0
    # Low-passed noise decays slowly at small lags; the clarity must not take that for a period.
    smooth = torch.nn.functional.avg_pool1d(white_noise(SAMPLE_RATE, generator)[None, None], 9, 1, 4)[0, 0]
    assert float((pitch_clarity(smooth, SAMPLE_RATE) >= PITCH_CLARITY).double().mean()) < 0.05


def test_white_noise_has_no_pitch_and_a_flatness_near_exp_minus_gamma(generator):
    noise = white_noise(3 * SAMPLE_RATE, generator)
    assert float((pitch_clarity(noise, SAMPLE_RATE) >= PITCH_CLARITY).double().mean()) == 0.0
    assert float(spectral_flatness(noise, SAMPLE_RATE).mean()) == pytest.approx(math.exp(-0.5772156649), abs=0.02)


def test_pink_noise_is_less_flat_than_white_noise_and_unpitched(generator):
    pink = pink_noise(3 * SAMPLE_RATE, generator)
    assert float(pink.pow(2).mean().sqrt()) == pytest.approx(0.1)
    assert float(spectral_flatness(pink, SAMPLE_RATE).mean()) < 0.4
    assert float((pitch_clarity(pink, SAMPLE_RATE) >= PITCH_CLARITY).double().mean()) < 0.05


def test_identical_sets_are_at_distance_zero_and_distance_is_symmetric(generator):
    mixing = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    frames = torch.randn(500, 6, generator=generator, dtype=torch.float64) @ mixing
    other = torch.randn(400, 6, generator=generator, dtype=torch.float64) * 2 + 1
    a, b = fit_gaussian(frames), fit_gaussian(other)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, b) > 1.0


def test_frechet_distance_of_diagonal_gaussians_has_its_closed_form(generator):
    dims = 5
    mean_a, mean_b = torch.randn(dims, generator=generator, dtype=torch.float64), torch.zeros(dims, dtype=torch.float64)
    var_a = torch.rand(dims, generator=generator, dtype=torch.float64) + 0.5
    var_b = torch.rand(dims, generator=generator, dtype=torch.float64) + 0.5
    a, b = GaussianFit(mean_a, torch.diag(var_a)), GaussianFit(mean_b, torch.diag(var_b))
    expected = float((mean_a - mean_b).pow(2).sum() + (var_a.sqrt() - var_b.sqrt()).pow(2).sum())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_set_statistics_count_silence_and_distance_to_a_reference(generator):
    hz = float(torch.empty(()).uniform_(150, 500, generator=generator))
    music = tone(hz, 3.0)
    reference = fit_gaussian(log_mel_frames(music, SAMPLE_RATE))
    gap = float(torch.empty(()).uniform_(1.2, 2.0, generator=generator))
    with_gap = torch.cat([tone(hz, 1.0), torch.zeros(int(gap * SAMPLE_RATE), dtype=torch.float64), tone(hz, 1.0)])
    row = set_statistics([with_gap], SAMPLE_RATE, reference)
    assert row.longest_silence == pytest.approx(gap, abs=0.1)
    assert row.silent_fraction == pytest.approx(gap / (gap + 2.0), abs=0.05)
    assert row.pitched_fraction == pytest.approx(1 - row.silent_fraction, abs=0.05)
    noise_row = set_statistics([white_noise(3 * SAMPLE_RATE, generator)], SAMPLE_RATE, reference)
    same_row = set_statistics([tone(hz, 3.0, phase=1.0)], SAMPLE_RATE, reference)
    assert same_row.frechet < 1e-3 * noise_row.frechet
    assert noise_row.longest_silence == 0.0 and noise_row.pitched_fraction == 0.0


def test_longest_run_finds_the_longest_stretch_of_true():
    flags = torch.tensor([True, False, True, True, True, False, True, True])
    assert longest_run(flags) == 3
    assert longest_run(torch.zeros(4, dtype=torch.bool)) == 0
