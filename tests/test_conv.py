"""The VQ-VAE's CPU convolutions inside `batch_invariant`: explicit matrix products, a block of steps at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jukebox_pl.modules import conv, resnet1d
from jukebox_pl.modules.conv import (
    Conv1d,
    ConvTranspose1d,
    batch_invariant,
    im2col_conv1d,
    phase_conv_transpose1d,
    residual_unit,
    shifted_conv1d,
)
from jukebox_pl.modules.resnet1d import ResidualUnit
from jukebox_pl.registry import build


def _blocks(monkeypatch) -> None:
    monkeypatch.setattr(conv, "_COLUMNS", int(torch.randint(5, 40, ())))  # many blocks of steps, a short last one


@pytest.mark.parametrize(
    ("in_channels", "kernel", "stride", "padding", "dilation", "bias"),
    [
        (8, 3, 1, 9, 9, True),
        (8, 3, 1, 1, 1, False),
        (8, 5, 1, 0, 2, True),
        (8, 3, 1, 400, 400, True),
        (8, 1, 1, 0, 1, True),
        (1, 4, 2, 1, 1, True),
        (6, 16, 8, 4, 1, True),
    ],
    ids=["dilated", "plain-no-bias", "unpadded", "taps-beyond-the-signal", "1x1", "one-channel-strided", "stride-8"],
)
def test_explicit_convolutions_compute_pytorchs_convolution(
    in_channels: int, kernel: int, stride: int, padding: int, dilation: int, bias: bool, monkeypatch
) -> None:
    _blocks(monkeypatch)
    x = torch.randn(3, in_channels, int(torch.randint(100, 300, ())))
    weight = torch.randn(5, in_channels, kernel)
    shift = torch.randn(5) if bias else None
    expected = F.conv1d(x, weight, shift, stride, padding, dilation)
    if stride == 1 and kernel > 1:
        ours = shifted_conv1d(x, weight, shift, padding, dilation)
    else:
        ours = im2col_conv1d(x, weight, shift, stride, padding, dilation)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "kernel", "stride", "padding"),
    [(8, 8, 4, 2, 1), (6, 1, 4, 2, 1), (5, 7, 8, 4, 2), (4, 4, 5, 2, 0), (4, 3, 3, 1, 1), (3, 4, 16, 8, 4)],
    ids=["jukebox-stride-2", "to-one-channel", "stride-4", "odd-kernel-unpadded", "stride-1", "stride-8"],
)
def test_phase_transposed_convolution_computes_pytorchs(
    in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, monkeypatch
) -> None:
    _blocks(monkeypatch)
    x = torch.randn(2, in_channels, int(torch.randint(50, 150, ())))
    weight, shift = torch.randn(in_channels, out_channels, kernel), torch.randn(out_channels)
    expected = F.conv_transpose1d(x, weight, shift, stride, padding)
    ours = phase_conv_transpose1d(x, weight, shift, stride, padding)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_the_blockwise_residual_unit_computes_the_layers_one_after_another(scale: float, monkeypatch) -> None:
    _blocks(monkeypatch)
    dilation = int(torch.randint(1, 30, ()))
    unit = ResidualUnit(6, 4, dilation=dilation, scale=scale)
    x = torch.randn(2, 6, int(torch.randint(60, 200, ())))
    with torch.no_grad():
        expected = unit(x)  # outside batch_invariant: PyTorch's layers
        ours = residual_unit(x, unit.dilated, unit.mix, scale)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_the_explicit_products_are_used_only_inside_batch_invariant_without_gradients(monkeypatch) -> None:
    calls: list[str] = []

    def spy(name: str, function):
        return lambda *args: calls.append(name) or function(*args)

    monkeypatch.setattr(conv, "shifted_conv1d", spy("shifted", lambda x, w, b, p, d: F.conv1d(x, w, b, 1, p, d)))
    monkeypatch.setattr(conv, "im2col_conv1d", spy("im2col", F.conv1d))
    monkeypatch.setattr(conv, "phase_conv_transpose1d", spy("phases", F.conv_transpose1d))

    def unit(x: torch.Tensor, dilated: Conv1d, mix: Conv1d, scale: float) -> torch.Tensor:
        hidden = F.conv1d(x.relu(), dilated.weight, dilated.bias, 1, dilated.padding, dilated.dilation)
        return x + scale * F.conv1d(hidden.relu(), mix.weight, mix.bias)

    monkeypatch.setattr(resnet1d, "residual_unit", spy("unit", unit))
    layers = [
        (Conv1d(4, 6, kernel_size=3, padding=3, dilation=3), "shifted"),
        (Conv1d(4, 6, kernel_size=4, stride=2, padding=1), "im2col"),
        (Conv1d(4, 6, kernel_size=1), "im2col"),
        (ConvTranspose1d(4, 6, kernel_size=4, stride=2, padding=1), "phases"),
        (ResidualUnit(4, 4, dilation=3), "unit"),
    ]
    x = torch.randn(2, 4, 50)
    for layer, path in layers:
        calls.clear()
        with torch.no_grad():
            outside = layer(x)
            with batch_invariant(x.device):
                inside = layer(x)
        assert calls == [path]
        torch.testing.assert_close(inside, outside, rtol=1e-5, atol=1e-5)
        with batch_invariant(x.device):
            trained = layer(x)  # gradients on: PyTorch's own path, which autograd can follow
        assert calls == [path] and trained.requires_grad
    assert torch.backends.mkldnn.enabled and not conv._INVARIANT.get()  # both restored on leaving


def test_the_reference_vqvae_encodes_our_weights_to_our_codes(jukebox_reference) -> None:
    # transformers' deprecated Jukebox VQ-VAE (the optional `bench` extra), given our released-size weights, finds
    # the same codes and decodes them to the same audio: the encode benchmark compares the same computation.
    reference = jukebox_reference
    torch.manual_seed(int(torch.randint(0, 1000, ())))
    vqvae = build("vqvae", {"_component_": "jukebox_vqvae"}).eval()
    audio = 0.1 * torch.randn(2, 1, 128 * 24)
    with torch.no_grad():
        for encoder, bottleneck in zip(vqvae.encoders, vqvae.bottlenecks, strict=True):
            latents = encoder(audio)
            bottleneck.codebook.copy_(
                latents.permute(0, 2, 1).reshape(-1, 64)[torch.randint(0, latents.shape[-1], (2048,))]
            )
        theirs = reference.reference_vqvae(vqvae)
        ours_codes, their_codes = vqvae.encode(audio), theirs.encode(audio.transpose(1, 2))
        with batch_invariant(audio.device):
            latents = [encoder(audio) for encoder in vqvae.encoders]
        for level, (ours, their) in enumerate(zip(ours_codes, their_codes, strict=True)):
            # Neighbouring latents of a random network are close, and both sides round differently (oneDNN against
            # explicit products): where the codes differ, the reference's code must be as near as ours to within
            # float32 rounding, which fixes the code of every row clear of a tie.
            rows = latents[level].permute(0, 2, 1).reshape(-1, 64).double()
            codebook = vqvae.bottlenecks[level].codebook.double()
            differ = (ours != their).flatten()
            distances = torch.cdist(rows, torch.unique(codebook, dim=0)).pow(2).sort(1).values
            clear = (distances[:, 1] - distances[:, 0]) > 1e-4 * rows.pow(2).sum(1)  # far above float32 rounding
            assert clear.float().mean() > 1 / 3, level  # rows whose code the bound below fixes exactly
            nearest = ((rows[differ] - codebook[ours.flatten()[differ]]) ** 2).sum(1)
            other = ((rows[differ] - codebook[their.flatten()[differ]]) ** 2).sum(1)
            assert torch.all(other - nearest <= 1e-5 * rows[differ].pow(2).sum(1)), (level, other - nearest)
        assert len(set(ours_codes[0].flatten().tolist())) > 50
        for level, codes in enumerate(ours_codes):
            ours_audio = vqvae.decode(codes, level)
            their_audio = theirs.decode([codes], level, level + 1).transpose(1, 2)
            torch.testing.assert_close(ours_audio, their_audio, rtol=1e-4, atol=1e-4 * float(ours_audio.abs().max()))
