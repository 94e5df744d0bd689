"""Reconstruction and codebook metrics: per-item values against hand computations, and exact reductions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from auraloss.freq import MultiResolutionSTFTLoss

from jukebox_pl import registry
from jukebox_pl.metrics.codebook import CodebookUsage, bitrate_kbps, codebook_statistics
from jukebox_pl.metrics.spectral import (
    SISDR,
    LogMelDistance,
    MultiResolutionSTFT,
    SpectralConvergence,
    WaveformL1,
    fit_n_mels,
    hz_to_mel,
    log_mel_distance,
    mel_filterbank,
    mel_to_hz,
    multi_resolution_stft,
    si_sdr,
    spectral_convergence,
    to_db,
    waveform_l1,
)

SAMPLE_RATE = 16_000


def noise(seed: int, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fresh Gaussian noise, reproducible from `seed`."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def numpy_stft_magnitude(signal: np.ndarray, n_fft: int, hop_length: int, win_length: int) -> np.ndarray:
    """|STFT| in float64 built by hand: reflect padding, a periodic Hann window centred in n_fft, rfft."""
    padded = np.pad(signal, n_fft // 2, mode="reflect")
    window = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    window[left : left + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    n_frames = 1 + (len(padded) - n_fft) // hop_length
    frames = np.stack([padded[i * hop_length : i * hop_length + n_fft] for i in range(n_frames)])
    return np.abs(np.fft.rfft(frames * window, axis=-1))


# ------------------------------------------------------------------------ spectral convergence


def test_spectral_convergence_of_identical_signals_is_zero() -> None:
    audio = noise(0, 2, 1, SAMPLE_RATE)
    assert torch.equal(spectral_convergence(audio, audio), torch.zeros(2))


def test_spectral_convergence_matches_hand_computed_stft_norms() -> None:
    target, preds = noise(1, 3, SAMPLE_RATE), noise(2, 3, SAMPLE_RATE)
    preds = target + 0.3 * preds
    expected = []
    for p, t in zip(preds.double().numpy(), target.double().numpy(), strict=True):
        spec_target = numpy_stft_magnitude(t, 2048, 256, 1536)
        spec_preds = numpy_stft_magnitude(p, 2048, 256, 1536)
        expected.append(np.linalg.norm(spec_target - spec_preds) / max(np.linalg.norm(spec_target), 2e-3))
    result = spectral_convergence(preds, target)
    assert result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-4)


def test_spectral_convergence_is_masked_to_zero_for_a_silent_target() -> None:
    target = noise(3, 2, SAMPLE_RATE)
    target[1] = 0.0
    result = spectral_convergence(noise(4, 2, SAMPLE_RATE), target)
    assert result[0] > 0.5
    assert result[1] == 0.0


def test_spectral_convergence_of_a_silent_output_is_one() -> None:
    target = noise(5, 2, 1, SAMPLE_RATE)
    torch.testing.assert_close(spectral_convergence(torch.zeros_like(target), target), torch.ones(2))


def test_spectral_convergence_is_computed_in_float32_for_half_precision_inputs() -> None:
    target, preds = noise(6, 2, SAMPLE_RATE).bfloat16(), noise(7, 2, SAMPLE_RATE).bfloat16()
    result = spectral_convergence(preds, target)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, spectral_convergence(preds.float(), target.float()))


def test_to_db_is_twenty_log10_of_the_ratio() -> None:
    torch.testing.assert_close(to_db(0.1), torch.tensor(-20.0))
    torch.testing.assert_close(to_db(torch.tensor([1.0, 10.0])), torch.tensor([0.0, 20.0]))


def test_spectral_convergence_metric_is_the_mean_of_linear_per_item_values() -> None:
    target, preds = noise(8, 4, 1, SAMPLE_RATE), noise(9, 4, 1, SAMPLE_RATE)
    metric = SpectralConvergence()
    metric.update(preds, target)
    torch.testing.assert_close(metric.compute().float(), spectral_convergence(preds, target).mean())
    assert metric.settings == {"n_fft": 2048, "hop_length": 256, "win_length": 1536, "eps": 2e-3}


# ----------------------------------------------------------------------- multi-resolution STFT


def test_multi_resolution_stft_matches_auraloss_called_on_each_item() -> None:
    target, preds = noise(10, 3, 1, SAMPLE_RATE), noise(11, 3, 1, SAMPLE_RATE)
    preds = target + 0.1 * preds
    loss = MultiResolutionSTFTLoss(fft_sizes=[2048, 1024, 512], hop_sizes=[240, 120, 50], win_lengths=[1200, 600, 240])
    expected = torch.stack([loss(preds[i : i + 1], target[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(multi_resolution_stft(preds, target), expected)


def test_multi_resolution_stft_reports_jukebox_resolutions_and_keeps_module_parameters() -> None:
    metric = MultiResolutionSTFT()
    assert metric.settings == {
        "fft_sizes": (2048, 1024, 512),
        "hop_sizes": (240, 120, 50),
        "win_lengths": (1200, 600, 240),
    }
    assert list(metric.parameters()) == []  # nn.Module.parameters() is not shadowed by the settings
    with pytest.raises(ValueError, match="one entry per resolution"):
        MultiResolutionSTFT(fft_sizes=(1024,), hop_sizes=(256, 128), win_lengths=(1024,))


def test_multi_resolution_stft_uses_configured_resolutions() -> None:
    target, preds = noise(12, 2, SAMPLE_RATE), noise(13, 2, SAMPLE_RATE)
    metric = MultiResolutionSTFT(fft_sizes=(512,), hop_sizes=(128,), win_lengths=(512,))
    metric.update(preds, target)
    expected = [
        MultiResolutionSTFTLoss([512], [128], [512])(p[None, None], t[None, None])
        for p, t in zip(preds, target, strict=True)
    ]
    torch.testing.assert_close(metric.compute().float(), torch.stack(expected).mean())


# ---------------------------------------------------------------------------------------- mel


def test_hz_to_mel_follows_slaneys_linear_then_logarithmic_scale() -> None:
    hz = torch.tensor([0.0, 200.0, 1000.0, 6400.0], dtype=torch.float64)
    torch.testing.assert_close(hz_to_mel(hz), torch.tensor([0.0, 3.0, 15.0, 42.0], dtype=torch.float64))
    frequencies = torch.rand(100, generator=torch.Generator().manual_seed(14), dtype=torch.float64) * 22_050
    torch.testing.assert_close(mel_to_hz(hz_to_mel(frequencies)), frequencies)


def test_mel_filterbank_rows_are_triangles_peaking_at_one() -> None:
    filterbank = mel_filterbank(SAMPLE_RATE, 4096, 40)
    assert filterbank.shape == (40, 2049)
    assert filterbank.min() >= 0.0 and filterbank.max() <= 1.0
    for row in filterbank:
        support = row.nonzero().flatten()
        assert torch.equal(support, torch.arange(support[0], support[-1] + 1))  # one contiguous run
        peak = int(row.argmax())
        assert row[peak] > 0.9  # bins 3.9 Hz apart land close to every centre
        assert (row[support[0] : peak + 1].diff() >= 0).all() and (row[peak : support[-1] + 1].diff() <= 0).all()


def test_mel_filterbank_covers_the_band_with_increasing_centres_and_no_empty_row() -> None:
    f_min, f_max = 50.0, 7000.0
    filterbank = mel_filterbank(SAMPLE_RATE, 512, 64, f_min=f_min, f_max=f_max)
    bin_hz = torch.linspace(0, SAMPLE_RATE / 2, 257)
    inside = (bin_hz > f_min) & (bin_hz < f_max)
    assert (filterbank.sum(dim=0)[inside] > 0).all()
    assert (filterbank.sum(dim=0)[~inside] == 0).all()
    assert (filterbank.sum(dim=1) > 0).all()
    assert (filterbank.argmax(dim=1).diff() >= 0).all()


def test_mel_filterbank_refuses_filters_narrower_than_an_fft_bin() -> None:
    with pytest.raises(ValueError, match="cover no FFT bin"):
        mel_filterbank(44_100, 256, 80)
    with pytest.raises(ValueError, match="f_min < f_max"):
        mel_filterbank(SAMPLE_RATE, 512, 40, f_max=9000.0)


def test_fit_n_mels_keeps_the_count_when_it_fits_and_shrinks_it_until_every_filter_has_a_bin() -> None:
    assert fit_n_mels(SAMPLE_RATE, 1024, 80) == 80
    fitted = fit_n_mels(44_100, 256, 80)
    assert fitted < 80
    assert (mel_filterbank(44_100, 256, fitted).sum(dim=1) > 0).all()
    assert LogMelDistance(44_100).settings["n_mels"] == (80, 80, 80, fitted)


# ----------------------------------------------------------------------------- log-mel distance


def test_log_mel_distance_of_identical_signals_is_zero() -> None:
    audio = noise(15, 2, 1, SAMPLE_RATE)
    assert torch.equal(log_mel_distance(audio, audio, SAMPLE_RATE), torch.zeros(2))


def test_log_mel_distance_grows_with_added_noise() -> None:
    target, added = noise(16, 2, SAMPLE_RATE), noise(17, 2, SAMPLE_RATE)
    distances = torch.stack(
        [log_mel_distance(target + level * added, target, SAMPLE_RATE) for level in (0.01, 0.1, 1.0)]
    )
    assert (distances > 0).all()
    assert (distances.diff(dim=0) > 0).all()


def test_log_mel_distance_matches_a_hand_computed_single_scale() -> None:
    target, preds = noise(18, 2, SAMPLE_RATE), noise(19, 2, SAMPLE_RATE)
    filterbank = mel_filterbank(SAMPLE_RATE, 512, 40)
    window = torch.hann_window(512)
    mel = [filterbank @ torch.stft(x, 512, 128, 512, window, return_complex=True).abs() for x in (preds, target)]
    expected = (torch.log(mel[1] + 1e-5) - torch.log(mel[0] + 1e-5)).abs().mean(dim=(1, 2))
    torch.testing.assert_close(log_mel_distance(preds, target, SAMPLE_RATE, n_ffts=(512,), n_mels=40), expected)


# ------------------------------------------------------------------------ waveform L1 and SI-SDR


def test_waveform_l1_is_the_mean_absolute_difference_of_each_item() -> None:
    preds = torch.tensor([[[0.0, 1.0, -1.0, 0.5]], [[2.0, 2.0, 2.0, 2.0]]])
    target = torch.tensor([[[0.0, 0.0, 0.0, 0.0]], [[1.0, 3.0, 1.0, 3.0]]])
    torch.testing.assert_close(waveform_l1(preds, target), torch.tensor([0.625, 1.0]))


def test_si_sdr_of_a_scaled_copy_exceeds_100_db() -> None:
    target = noise(20, 2, 1, SAMPLE_RATE)
    assert (si_sdr(0.5 * target, target) > 100.0).all()


def test_si_sdr_of_orthogonal_noise_equals_the_constructed_snr() -> None:
    snrs_db = torch.tensor([0.0, 10.0, 25.0], dtype=torch.float64)
    target = noise(21, 3, SAMPLE_RATE, dtype=torch.float64)
    target -= target.mean(dim=-1, keepdim=True)
    residual = noise(22, 3, SAMPLE_RATE, dtype=torch.float64)
    residual -= residual.mean(dim=-1, keepdim=True)
    # Remove the target's direction so the optimal scale is exactly 1 and the residual is all noise.
    residual -= (residual * target).sum(-1, keepdim=True) / (target * target).sum(-1, keepdim=True) * target
    energy_ratio = (target**2).sum(-1) / (residual**2).sum(-1)
    residual *= torch.sqrt(energy_ratio / 10 ** (snrs_db / 10))[:, None]
    torch.testing.assert_close(si_sdr(target + residual, target), snrs_db, atol=1e-9, rtol=0)


def test_si_sdr_is_computed_in_float64_from_float32_inputs() -> None:
    target, preds = noise(23, 2, SAMPLE_RATE), noise(24, 2, SAMPLE_RATE)
    result = si_sdr(preds, target)
    assert result.dtype == torch.float64
    metric = SISDR()
    metric.update(preds, target)
    torch.testing.assert_close(metric.compute(), result.mean())


# ------------------------------------------------------------------------------ reductions


METRICS = {
    "spectral_convergence": lambda: SpectralConvergence(),
    "multi_resolution_stft": lambda: MultiResolutionSTFT(),
    "log_mel_distance": lambda: LogMelDistance(SAMPLE_RATE),
    "waveform_l1": lambda: WaveformL1(),
    "si_sdr": lambda: SISDR(),
}


@pytest.mark.parametrize("name", list(METRICS))
def test_two_updates_and_merged_ranks_equal_one_update_on_the_concatenated_batch(name: str) -> None:
    target = noise(25, 5, 1, SAMPLE_RATE)
    preds = target + 0.2 * noise(26, 5, 1, SAMPLE_RATE)
    whole, in_two, first_rank, second_rank = (METRICS[name]() for _ in range(4))
    whole.update(preds, target)
    in_two.update(preds[:2], target[:2])
    in_two.update(preds[2:], target[2:])
    first_rank.update(preds[:3], target[:3])
    second_rank.update(preds[3:], target[3:])
    first_rank.merge_state(second_rank)  # the same reductions that sync across ranks
    torch.testing.assert_close(in_two.compute(), whole.compute())
    torch.testing.assert_close(first_rank.compute(), whole.compute())


@pytest.mark.parametrize("name", list(METRICS))
def test_metrics_accept_audio_with_or_without_the_channel_axis(name: str) -> None:
    target, preds = noise(27, 2, SAMPLE_RATE), noise(28, 2, SAMPLE_RATE)
    with_channel, without_channel = METRICS[name](), METRICS[name]()
    with_channel.update(preds[:, None], target[:, None])
    without_channel.update(preds, target)
    torch.testing.assert_close(with_channel.compute(), without_channel.compute())


def test_metrics_refuse_mismatched_or_multichannel_audio() -> None:
    with pytest.raises(ValueError, match="same shape"):
        waveform_l1(torch.zeros(2, 100), torch.zeros(2, 101))
    with pytest.raises(ValueError, match=r"\(B, 1, T\) or \(B, T\)"):
        waveform_l1(torch.zeros(2, 2, 100), torch.zeros(2, 2, 100))


def test_every_metric_is_registered_under_its_name() -> None:
    expected = {
        "spectral_convergence": SpectralConvergence,
        "multi_resolution_stft": MultiResolutionSTFT,
        "log_mel_distance": LogMelDistance,
        "waveform_l1": WaveformL1,
        "si_sdr": SISDR,
        "codebook_usage": CodebookUsage,
    }
    for name, cls in expected.items():
        assert registry.get("metric", name).target is cls


# -------------------------------------------------------------------------------- codebook


def test_codebook_usage_of_codes_uniform_over_half_the_codebook_is_exactly_two_bits() -> None:
    usage = CodebookUsage(codebook_size=8)
    codes = torch.tensor([1, 3, 5, 7]).repeat(2, 25)  # (2, 100), each of 4 codes 50 times
    usage.update(codes)
    stats = usage.compute()
    assert all(isinstance(value, torch.Tensor) for value in stats.values())
    assert stats["entropy_bits"].item() == pytest.approx(2.0, abs=1e-12)
    assert stats["perplexity"].item() == pytest.approx(4.0, abs=1e-12)
    assert (stats["used"].item(), stats["dead"].item()) == (4, 4)
    assert stats["usage"].item() == pytest.approx(0.5)


def test_codebook_usage_counts_across_updates_and_ranks() -> None:
    codes = torch.randint(0, 16, (3, 50), generator=torch.Generator().manual_seed(29))
    whole, first_rank, second_rank = CodebookUsage(16), CodebookUsage(16), CodebookUsage(16)
    whole.update(codes)
    first_rank.update(codes[:1])
    first_rank.update(codes[1:2])
    second_rank.update(codes[2:])
    first_rank.merge_state(second_rank)
    assert torch.equal(first_rank.counts, torch.bincount(codes.flatten(), minlength=16))
    for key, value in whole.compute().items():
        torch.testing.assert_close(first_rank.compute()[key], value)


def test_codebook_statistics_of_skewed_counts_match_hand_entropy() -> None:
    stats = codebook_statistics(torch.tensor([6, 2, 0, 0]))
    entropy = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert stats["entropy_bits"].item() == pytest.approx(entropy, abs=1e-12)
    assert stats["perplexity"].item() == pytest.approx(2**entropy, abs=1e-12)
    assert (stats["used"].item(), stats["dead"].item(), stats["usage"].item()) == (2, 2, 0.5)


def test_codebook_usage_refuses_float_or_out_of_range_codes() -> None:
    usage = CodebookUsage(codebook_size=4)
    with pytest.raises(TypeError, match="integer"):
        usage.update(torch.zeros(3))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        usage.update(torch.tensor([0, 4]))


def test_bitrate_kbps_of_jukebox_levels() -> None:
    # Jukebox: 2048 codes at hops 8, 32 and 128 on 44.1 kHz audio.
    assert bitrate_kbps(2048, 8, 44_100) == pytest.approx(60.6375)
    assert bitrate_kbps(2048, 32, 44_100) == pytest.approx(15.159375)
    assert bitrate_kbps(2048, 128, 44_100) == pytest.approx(3.78984375)
    assert bitrate_kbps(1024, 320, 24_000) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="positive"):
        bitrate_kbps(2048, 0, 44_100)
