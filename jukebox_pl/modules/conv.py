"""CPU convolutions that compute every item of a batch alike (`batch_invariant`), for encoding and decoding.

On the CPU, oneDNN picks its convolution kernels by the input's shape and the number of threads, so the same
audio came out a few last bits apart in another batch, and a vector close to the border between two codes could
take either. PyTorch's own CPU convolutions (im2col and a matrix product per item) give every item the same
result whatever the batch and the thread count; inside `batch_invariant` the VQ-VAE's convolutions compute
that. Its `Conv1d` layers do the same arithmetic faster (the codes and audio of the released and the demo's
VQ-VAE came out equal to the bit; other shapes within float32 rounding): the columns are built a few thousand
steps at a time into a buffer the allocator reuses, where PyTorch's own path maps tens of megabytes afresh for
every call, and for dilated kernels goes through a slower general routine. Measured on an AMD
EPYC, two threads, one 64-channel layer over 110,272 steps: a dilated 3-tap convolution 173 ms against 226, a
plain 3-tap one 45 against 79 (oneDNN: 149 for the dilated one; it differs with the thread count, so training
keeps it and encoding does not).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_INVARIANT: contextvars.ContextVar[bool] = contextvars.ContextVar("jukebox_pl_batch_invariant", default=False)


@contextlib.contextmanager
def batch_invariant(device: torch.device) -> Iterator[None]:
    """Convolutions that compute each item of a batch the same way, whatever the batch size and thread count.

    oneDNN is turned off for the block (PyTorch's own CPU convolutions) and `Conv1d` layers run as an explicit
    im2col and one matrix product per item. cuDNN also picks its algorithms by shape: on a GPU nothing is
    changed.
    """
    if device.type != "cpu":
        yield
        return
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    token = _INVARIANT.set(True)
    try:
        yield
    finally:
        _INVARIANT.reset(token)
        torch.backends.mkldnn.enabled = enabled


def im2col_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int, dilation: int
) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, stride, padding, dilation)`` (zero padding, one group) as PyTorch's own CPU
    path computes it: each item's columns (in_channels * kernel, T_out), then ``bias + weight @ columns``.

    The columns are built `_COLUMNS` output steps at a time from views of the padded input, one per tap, into a
    buffer that stays small enough for the allocator to reuse (the whole matrix, tens of megabytes, was mapped
    afresh on every call, and its page faults cost more than the product); a 1x1 convolution multiplies the
    input itself.
    """
    out_channels, in_channels, kernel = weight.shape
    if padding:
        x = F.pad(x, (padding, padding))
    length = (x.shape[-1] - dilation * (kernel - 1) - 1) // stride + 1
    matrix = weight.reshape(out_channels, in_channels * kernel)
    shift = (bias if bias is not None else weight.new_zeros(out_channels))[:, None]
    out = x.new_empty(x.shape[0], out_channels, length)
    for item, signal in enumerate(x):
        if kernel == 1 and stride == 1:
            torch.addmm(shift, matrix, signal, out=out[item])
            continue
        for first in range(0, length, _COLUMNS):
            count = min(_COLUMNS, length - first)
            start, span = first * stride, stride * (count - 1) + 1
            taps = [signal[:, start + tap * dilation : start + tap * dilation + span : stride] for tap in range(kernel)]
            columns = torch.stack(taps, dim=1).reshape(in_channels * kernel, count)  # rows as the weight's (c, tap)
            torch.addmm(shift, matrix, columns, out=out[item, :, first : first + count])
    return out


_COLUMNS = 4096  # output steps whose columns are built at once: 3 MiB for 64 channels and 3 taps


class Conv1d(nn.Conv1d):
    """`nn.Conv1d` (the same parameters and state) whose CPU forward without gradients inside `batch_invariant`
    is `im2col_conv1d`: PyTorch's own arithmetic, faster."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _INVARIANT.get() or x.device.type != "cpu" or self.groups != 1 or torch.is_grad_enabled():
            return super().forward(x)
        if self.padding_mode != "zeros" or not isinstance(self.padding, tuple):
            return super().forward(x)
        return im2col_conv1d(x, self.weight, self.bias, self.stride[0], self.padding[0], self.dilation[0])
