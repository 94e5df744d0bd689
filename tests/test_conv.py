"""The VQ-VAE's CPU convolutions inside `batch_invariant`: PyTorch's own arithmetic, built a few columns at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jukebox_pl.modules import conv
from jukebox_pl.modules.conv import Conv1d, batch_invariant, im2col_conv1d


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
