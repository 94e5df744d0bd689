"""The VQ-VAE's CPU convolutions inside `batch_invariant`: PyTorch's own arithmetic, built a few columns at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jukebox_pl.modules import conv
from jukebox_pl.modules.conv import Conv1d, batch_invariant, im2col_conv1d
from jukebox_pl.registry import build


@pytest.mark.parametrize(
    ("in_channels", "kernel", "stride", "padding", "dilation", "bias"),
    [
        (8, 3, 1, 9, 9, True),
        (8, 3, 1, 1, 1, False),
        (8, 1, 1, 0, 1, True),
        (1, 4, 2, 1, 1, True),
        (6, 16, 8, 4, 1, True),
    ],
    ids=["dilated", "plain-no-bias", "1x1", "one-channel-strided", "stride-8"],
)
def test_im2col_convolution_is_pytorchs_own(
    in_channels: int, kernel: int, stride: int, padding: int, dilation: int, bias: bool, monkeypatch
) -> None:
    monkeypatch.setattr(conv, "_COLUMNS", int(torch.randint(5, 40, ())))  # many blocks of columns, a short last one
    x = torch.randn(3, in_channels, int(torch.randint(100, 300, ())))
    weight = torch.randn(5, in_channels, kernel)
    shift = torch.randn(5) if bias else None
    with torch.backends.mkldnn.flags(enabled=False):
        expected = F.conv1d(x, weight, shift, stride, padding, dilation)
    ours = im2col_conv1d(x, weight, shift, stride, padding, dilation)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)  # equal to the bit for the VQ-VAEs' shapes


def test_conv1d_takes_the_im2col_path_only_inside_batch_invariant_without_gradients(monkeypatch) -> None:
    layer = Conv1d(4, 6, kernel_size=3, padding=3, dilation=3)
    x = torch.randn(2, 4, 50)
    calls = []
    monkeypatch.setattr(conv, "im2col_conv1d", lambda *args: calls.append(args) or F.conv1d(*args))
    with torch.no_grad():
        outside = layer(x)
        with batch_invariant(x.device):
            inside = layer(x)
    assert len(calls) == 1
    torch.testing.assert_close(inside, outside, rtol=1e-5, atol=1e-5)
    with batch_invariant(x.device):
        trained = layer(x)  # gradients on: PyTorch's own path, which autograd can follow
    assert len(calls) == 1 and trained.requires_grad
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
        assert all(torch.equal(a, b) for a, b in zip(ours_codes, their_codes, strict=True))
        assert len(set(ours_codes[0].flatten().tolist())) > 50
        for level, codes in enumerate(ours_codes):
            ours_audio = vqvae.decode(codes, level)
            their_audio = theirs.decode([codes], level, level + 1).transpose(1, 2)
            torch.testing.assert_close(ours_audio, their_audio, rtol=1e-4, atol=1e-4 * float(ours_audio.abs().max()))
