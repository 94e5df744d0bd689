"""Reconstruction losses and the data bandwidth, against values computed by hand with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jukebox_pl import build
from jukebox_pl.vqvae.losses import Bandwidth, measure_bandwidth


def _pair(seed: int, batch: int = 3, length: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(batch, 1, length, generator=generator) * 0.3
    output = target + torch.randn(batch, 1, length, generator=generator) * 0.1
    return output, target


def _numpy_stft_magnitude(x: np.ndarray, n_fft: int, hop: int, window_length: int) -> np.ndarray:
    """Centred, reflect-padded STFT with a periodic Hann window, written out frame by frame."""
    n = np.arange(window_length)
    window = np.zeros(n_fft)
    start = (n_fft - window_length) // 2
    window[start : start + window_length] = 0.5 - 0.5 * np.cos(2 * np.pi * n / window_length)
    padded = np.pad(x, n_fft // 2, mode="reflect")
    frames = 1 + len(x) // hop
    return np.stack([np.abs(np.fft.rfft(padded[t * hop : t * hop + n_fft] * window)) for t in range(frames)], 1)


BANDWIDTH = Bandwidth(l1=0.25, l2=0.09, spec=40.0)


def test_l1_l2_and_linf_divide_by_the_bandwidth():
    output, target = _pair(0)
    error = (output - target).numpy().reshape(3, -1).astype(np.float64)
    l1 = build("loss", "l1")(output, target, BANDWIDTH)
    l2 = build("loss", "l2")(output, target, BANDWIDTH)
    linf = build("loss", {"_component_": "linf", "k": 50})(output, target, BANDWIDTH)
    assert float(l1) == pytest.approx(np.abs(error).mean() / 0.25, rel=1e-5)
    assert float(l2) == pytest.approx((error**2).mean() / 0.09, rel=1e-5)
    top = np.sort(error**2, axis=1)[:, -50:]
    assert float(linf) == pytest.approx(top.mean() / 0.09, rel=1e-5)


def test_lmix_is_the_weighted_sum_of_its_parts():
    output, target = _pair(1)
    mix = build("loss", {"_component_": "lmix", "l1": 0.5, "l2": 1.0, "linf": 0.02, "linf_k": 100})
    parts = {name: build("loss", name) for name in ("l1", "l2")}
    linf = build("loss", {"_component_": "linf", "k": 100})
    expected = 0.5 * parts["l1"](output, target, BANDWIDTH) + parts["l2"](output, target, BANDWIDTH)
    expected = expected + 0.02 * linf(output, target, BANDWIDTH)
    torch.testing.assert_close(mix(output, target, BANDWIDTH), expected)


def test_multispectral_loss_matches_a_frame_by_frame_stft():
    output, target = _pair(2, batch=2, length=3000)
    resolutions = ([512, 256], [100, 64], [400, 128])
    loss = build("loss", {"_component_": "multispectral", "n_ffts": resolutions[0], "hop_lengths": resolutions[1],
                          "window_lengths": resolutions[2]})  # fmt: skip
    per_item = []
    for item in range(2):
        x, y = target[item, 0].double().numpy(), output[item, 0].double().numpy()
        distances = [
            np.linalg.norm(_numpy_stft_magnitude(x, *r) - _numpy_stft_magnitude(y, *r))
            for r in zip(*resolutions, strict=True)
        ]
        per_item.append(np.mean(distances))
    assert float(loss(output, target, BANDWIDTH)) == pytest.approx(np.mean(per_item) / 40.0, rel=1e-4)


def test_multispectral_defaults_are_jukebox_resolutions():
    loss = build("loss", "multispectral")
    assert loss.resolutions == [(2048, 240, 1200), (1024, 120, 600), (512, 50, 240)]
    with pytest.raises(ValueError, match="same"):
        build("loss", {"_component_": "multispectral", "n_ffts": [512], "hop_lengths": [], "window_lengths": []})


def test_the_log_magnitude_term_is_auralosss_computed_from_the_same_stfts():
    from auraloss.freq import MultiResolutionSTFTLoss

    output, target = _pair(6, batch=2, length=4096)
    resolutions = ([512, 256], [100, 64], [400, 128])
    spec = {"_component_": "multispectral", "n_ffts": resolutions[0], "hop_lengths": resolutions[1],
            "window_lengths": resolutions[2]}  # fmt: skip
    weight = float(torch.rand(()) + 0.05)
    plain = build("loss", spec)(output, target, BANDWIDTH)
    with_log = build("loss", {**spec, "log_weight": weight, "log_floor": 1e-4})(output, target, BANDWIDTH)
    # auraloss floors the power at eps, so its magnitude floor is sqrt(eps).
    log_only = MultiResolutionSTFTLoss(*resolutions, w_sc=0.0, w_log_mag=1.0, w_lin_mag=0.0, eps=1e-8)
    assert float(with_log - plain) == pytest.approx(weight * float(log_only(output, target)), rel=1e-4)
    with pytest.raises(ValueError, match="log_weight"):
        build("loss", {**spec, "log_weight": -1.0})


def test_the_log_magnitude_term_hears_a_noise_floor_that_jukeboxs_term_does_not():
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    t = torch.arange(8192) / 16000.0
    note = torch.sin(2 * torch.pi * 440.0 * t) * (t < 0.25)  # a note, then silence
    hiss = note + 1e-3 * torch.randn(8192, generator=generator)  # the same with a -60 dB noise floor
    bandwidth = measure_bandwidth([note[None, None]])
    plain, with_log = build("loss", "multispectral"), build("loss", {"_component_": "multispectral", "log_weight": 0.1})
    jukebox_term = float(plain(hiss[None, None], note[None, None], bandwidth))
    log_term = float(with_log(hiss[None, None], note[None, None], bandwidth)) - jukebox_term
    assert jukebox_term < 0.01  # the hiss is 60 dB down: Jukebox's term barely moves
    assert log_term > 10 * jukebox_term  # every silent bin counts in the log term
    assert float(with_log(note[None, None], note[None, None], bandwidth)) == pytest.approx(0.0, abs=1e-6)


def test_spectral_losses_run_in_float32_under_autocast():
    output, target = _pair(3, batch=2, length=4096)
    reference = build("loss", "multispectral")(output, target, BANDWIDTH)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = build("loss", "multispectral")(output.bfloat16(), target.bfloat16(), BANDWIDTH)
    assert mixed.dtype == torch.float32
    assert float(mixed) == pytest.approx(float(reference), rel=2e-2)  # only the bf16 inputs differ


def test_auraloss_mrstft_is_registered_and_scale_free():
    output, target = _pair(4, batch=2, length=8192)
    loss = build("loss", "mrstft")
    value = loss(output, target, BANDWIDTH)
    assert float(value) > 0
    assert float(loss(output * 3, target * 3, BANDWIDTH)) == pytest.approx(float(value), rel=1e-3)
    assert float(loss(target, target, BANDWIDTH)) == pytest.approx(0.0, abs=1e-5)


def test_bandwidth_is_the_variance_mean_magnitude_and_mean_spectral_norm():
    generator = torch.Generator().manual_seed(5)
    batches = [torch.randn(2, 1, 5000, generator=generator) * 0.2 + 0.05 for _ in range(3)]
    bandwidth = measure_bandwidth(batches)
    everything = torch.cat(batches).double().numpy()
    assert bandwidth.l2 == pytest.approx(everything.var(), rel=1e-9)
    assert bandwidth.l1 == pytest.approx(np.abs(everything).mean(), rel=1e-9)
    norms = [np.linalg.norm(_numpy_stft_magnitude(crop[0], 2048, 256, 1536)) for crop in everything]
    assert bandwidth.spec == pytest.approx(np.mean(norms), rel=1e-4)


def test_silent_training_audio_is_refused():
    with pytest.raises(ValueError, match="silent"):
        measure_bandwidth([torch.zeros(2, 1, 4096)])
