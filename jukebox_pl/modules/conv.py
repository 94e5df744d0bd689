"""CPU convolutions that compute every item of a batch alike (`batch_invariant`), for encoding and decoding.

On the CPU, oneDNN picks its convolution kernels by the input's shape and the number of threads, so the same
audio came out a few last bits apart in another batch, and a vector close to the border between two codes could
take either. Inside `batch_invariant` the VQ-VAE's layers compute each item on its own, as explicit matrix
products in an order fixed by the layer's shape alone, a block of `_COLUMNS` output steps at a time:

- `Conv1d`, stride 1 (`shifted_conv1d`): one product per tap on the input shifted by the tap's offset, summed
  into the output block in place; no columns and no padded copy are written.
- `Conv1d`, strided or 1x1 (`im2col_conv1d`): PyTorch's own im2col arithmetic, its columns built a block at a
  time into a buffer the allocator reuses.
- `ConvTranspose1d` (`phase_conv_transpose1d`): each output phase (every `stride`-th step) is a short stride-1
  convolution of the input, computed as above and written in place.
- A residual unit (`residual_unit`, called by `ResidualUnit`): both convolutions of a block in turn, so that the
  hidden activations stay in cache.

Measured on an AMD EPYC (AVX2), two threads, one 64-channel layer over 110,272 steps (medians of 9 rounds in
turns, ms): a 3-tap convolution dilated 27: PyTorch's own 122, block im2col 87, shifted products 41, oneDNN 76;
undilated: 86, 71, 30, 63; a transposed convolution (kernel 4, stride 2): PyTorch's own 203, by phases 86,
oneDNN 210; a residual unit (dilation 27): oneDNN's layers 107, the explicit layers one after another 70,
block by block 52. Training keeps oneDNN (autograd needs PyTorch's layers; batch invariance does not matter
there).
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

    oneDNN is turned off for the block (PyTorch's own CPU convolutions, for any layer other than this module's)
    and this module's layers run as explicit matrix products, item by item. cuDNN also picks its algorithms by
    shape: on a GPU nothing is changed.
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


def _sum_of_products(
    block: torch.Tensor, shift: torch.Tensor, products: list[tuple[torch.Tensor, int]], signal: torch.Tensor, first: int
) -> torch.Tensor:
    """``block[:, i] = shift + sum(matrix @ signal[:, first + offset + i])`` over `products` in their order, where a
    step outside the signal reads zeros: each product is one matrix product on a view, accumulated in place."""
    count, steps = block.shape[1], signal.shape[1]
    block.copy_(shift.expand_as(block))
    for matrix, offset in products:
        start = first + offset
        low, high = max(0, -start), min(count, steps - start)
        if low < high:
            block[:, low:high].addmm_(matrix, signal[:, start + low : start + high])
    return block


def _shift(bias: torch.Tensor | None, weight: torch.Tensor, channels: int) -> torch.Tensor:
    return (bias if bias is not None else weight.new_zeros(channels))[:, None]


def _tap_products(weight: torch.Tensor, padding: int, dilation: int) -> list[tuple[torch.Tensor, int]]:
    """A stride-1 convolution's taps: each one's ``(out, in)`` matrix and the offset of the input it reads."""
    return [(matrix, tap * dilation - padding) for tap, matrix in enumerate(weight.permute(2, 0, 1).contiguous())]


def shifted_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, dilation: int
) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, 1, padding, dilation)`` (zero padding, one group, stride 1) as one matrix product
    per tap and per block of output steps, each accumulated into the output in place.

    A tap of a stride-1 convolution reads the input shifted by ``tap * dilation - padding``: a view that a matrix
    product takes as it is, so neither columns (``kernel`` times the input) nor a padded copy are written. The
    output is filled `_COLUMNS` steps at a time so that the block being summed stays in cache; each step's sum runs
    tap by tap in an order that depends on neither the batch nor the thread count.
    """
    out_channels, _, kernel = weight.shape
    length = x.shape[-1] + 2 * padding - dilation * (kernel - 1)
    products = _tap_products(weight, padding, dilation)
    shift = _shift(bias, weight, out_channels)
    out = x.new_empty(x.shape[0], out_channels, length)
    for item, signal in enumerate(x):
        for first in range(0, length, _COLUMNS):
            block = out[item, :, first : first + _COLUMNS]
            _sum_of_products(block, shift, products, signal, first)
    return out


def residual_unit(x: torch.Tensor, dilated: nn.Conv1d, mix: nn.Conv1d, scale: float) -> torch.Tensor:
    """``x + scale * mix(relu(dilated(relu(x))))`` for a stride-1 `dilated` convolution and a 1x1 `mix`, a block
    of `_COLUMNS` steps at a time: the hidden activations of a block stay in cache between the two products
    rather than going to memory and back three times. The arithmetic is `shifted_conv1d`'s and
    `im2col_conv1d`'s, in the same order."""
    hidden = dilated.weight.shape[0]
    products = _tap_products(dilated.weight, dilated.padding[0], dilated.dilation[0])
    shift, mixing = _shift(dilated.bias, dilated.weight, hidden), mix.weight[:, :, 0]
    mix_shift = _shift(mix.bias, mixing, mixing.shape[0])
    activated = torch.relu(x)
    out = torch.empty_like(x)
    buffer = x.new_empty(hidden, _COLUMNS)
    for item, signal in enumerate(activated):
        for first in range(0, x.shape[-1], _COLUMNS):
            block = out[item, :, first : first + _COLUMNS]
            inner = _sum_of_products(buffer[:, : block.shape[1]], shift, products, signal, first).relu_()
            torch.addmm(mix_shift, mixing, inner, out=block)
            if scale != 1.0:
                block.mul_(scale)
            block.add_(x[item, :, first : first + _COLUMNS])
    return out


def phase_conv_transpose1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    """``F.conv_transpose1d(x, weight, bias, stride, padding)`` (one group, no output padding or dilation), one
    output phase at a time.

    Output step ``stride * j + r`` (before the padding is cropped) sums taps ``r, r + stride, ...`` of inputs
    ``j, j - 1, ...``: each phase is a short stride-1 convolution of the input, computed as one matrix product per
    tap on a shifted view, `_COLUMNS` steps at a time, then written to every `stride`-th output step. PyTorch's
    own path without oneDNN multiplies the whole input into columns (``kernel`` times the output's size),
    zeroes an output and adds the columns back into it.
    """
    _, out_channels, kernel = weight.shape
    length = (x.shape[-1] - 1) * stride - 2 * padding + kernel
    taps = weight.permute(2, 1, 0).contiguous()  # (kernel, out, in)
    shift = _shift(bias, weight, out_channels)
    out = x.new_empty(x.shape[0], out_channels, length)
    buffer = x.new_empty(out_channels, _COLUMNS)
    for item, signal in enumerate(x):
        for phase in range(stride):
            products = [(taps[tap], -m) for m, tap in enumerate(range(phase, kernel, stride))]
            first_block = -((phase - padding) // stride)  # the first j whose step lands inside the crop
            last_block = (length - 1 + padding - phase) // stride
            for first in range(first_block, last_block + 1, _COLUMNS):
                count = min(_COLUMNS, last_block + 1 - first)
                block = _sum_of_products(buffer[:, :count], shift, products, signal, first)
                step = stride * first + phase - padding
                out[item, :, step : step + stride * (count - 1) + 1 : stride] = block
    return out


_COLUMNS = 4096  # output steps computed at once: a 1 MiB block of 64 channels, 3 MiB of im2col columns


def explicit(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether `layer` computes `x` with this module's products: inside `batch_invariant`, on the CPU, without
    gradients (autograd follows PyTorch's own path), one group and zero padding given as numbers."""
    return (
        _INVARIANT.get()
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and isinstance(layer.padding, tuple)
    )


class Conv1d(nn.Conv1d):
    """`nn.Conv1d` (the same parameters and state) whose CPU forward without gradients inside `batch_invariant`
    is `shifted_conv1d` (stride 1, more than one tap) or `im2col_conv1d` (strided, or 1x1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not explicit(self, x):
            return super().forward(x)
        (kernel,), (stride,), (padding,), (dilation,) = self.kernel_size, self.stride, self.padding, self.dilation
        if stride == 1 and kernel > 1:
            return shifted_conv1d(x, self.weight, self.bias, padding, dilation)
        return im2col_conv1d(x, self.weight, self.bias, stride, padding, dilation)


class ConvTranspose1d(nn.ConvTranspose1d):
    """`nn.ConvTranspose1d` (the same parameters and state) whose CPU forward without gradients inside
    `batch_invariant` is `phase_conv_transpose1d` (no dilation or output padding, at least `stride` taps)."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if not explicit(self, x):  # training: PyTorch's own, with no other check on the way
            return super().forward(x, output_size)
        (kernel,), (stride,), (padding,) = self.kernel_size, self.stride, self.padding
        if output_size is not None or self.output_padding != (0,) or self.dilation != (1,) or kernel < stride:
            return super().forward(x, output_size)
        return phase_conv_transpose1d(x, self.weight, self.bias, stride, padding)
