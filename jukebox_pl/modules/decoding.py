"""One decoding step of a `Transformer` at the cost of reading its weights: static KV caches, fused small ops.

Sampling draws one code per step, and at batch 1 a step is a chain of matrix-vector products: the time to
stream the weights once is its floor. `Transformer.forward` with `KVCache`s pays, on top of that floor, the
generality of the training path (module calls, chunk bookkeeping, caches that grow, SDPA's set-up for one
query). `StaticDecoder` runs the same maths for exactly one position of every sample in the batch:

- every layer's keys and values live in one buffer (slots, B * heads, 2 * head_width) allocated once, laid
  out for its pattern so that a step reads a fixed number of slots and writes one; slots lead, so that the
  slots a step reads (a column, a block) are one contiguous stretch of memory, cold as it may be after the
  weights have streamed through the caches:

      pattern            slots                            a step reads
      "dense"            n_ctx                            every slot, later ones masked
      "block"            block_ctx, slot = t % block_ctx  every slot, later ones masked
      "transpose_block"  block_ctx columns x blocks       t's column (blocks slots), later blocks masked
      "prev_block"       2 x block_ctx, a ring            the half that is not t's block: zeros in block 0,
                                                          Jukebox's zero block, so no mask is needed
      "prime"            prime keys + 1 spare slot        every slot, past ones and the spare masked
      "cross"            the encoder states, set once     every slot

- the step's position is a tensor and every shape is fixed, so the step is the same graph at every
  position: a CUDA graph replays it (`CudaGraphStep`) and nothing is allocated per step besides
  activations;
- the attention of one query is three batched matrix products (scores with the mask added and the scale
  folded in, softmax, values) instead of SDPA, whose per-call set-up costs more than the work at one query;
- the MLP's quick GELU ``y * sigmoid(1.702 y)`` is ``silu(1.702 y) / 1.702``: the factor 1.702 rides in the
  alpha/beta of the first product and 1 / 1.702 in the alpha of the second, two operations fewer;
- on the CPU in float32 (`_Layer._fuse`), every product writes into a buffer made once: the new key and
  value are a view of the fused projection's output (its columns reordered to the slots' layout), the query
  another, a column or half of a cache a view made once per column; at batch 1 the attention's output and
  the MLP's hidden units lie in rows that end in a constant 1, so that ``x + [a, 1] @ [[W], [bias]]`` is the
  residual add, the product and its bias in one ``addmm`` (the decoder then holds those two products'
  weights a second time, each with its bias as one more row). At batch 1 a step is bound by the
  operations it launches as much as by the weights it reads: a layer now launches 12 where it launched
  25 (16 at batch 16);
- opt-in int8 weights (``quantize="int8"``): each projection runs PyTorch's dynamic int8 linear (fbgemm
  on x86), which reads a quarter of the bytes, called with the operations around it from TorchScript
  functions (`_Int8Scripts`: from Python each call paid tens of microseconds for its packed weights);
- opt-in bf16 weights (``quantize="bf16"``): each projection multiplies bf16 copies of its inputs and
  weights (oneDNN; AMX tiles on CPUs that have them) and hands back float32, so that the residual stream,
  the layer norms, the attention and the cache stay float32. It pays for batches: on this project's CPU
  the products of a batch of 16 took 0.45x the time of float32's, those of one row no less.

The prompt is still fed through `Transformer.forward` in chunks with `KVCache`s; `load` copies what those
caches hold into the static buffers. Example::

    caches = transformer.new_caches()
    transformer(prompt_x, caches=caches)                    # (B, P, width)
    decoder = StaticDecoder(transformer, batch_size=B)
    decoder.load(caches)
    h = decoder.step(x_t, torch.tensor([P]))                # x_t (B, width) -> (B, width)
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from jukebox_pl.modules.attention import Attention, KVCache
from jukebox_pl.modules.transformer import ResAttnBlock, Transformer

logger = logging.getLogger(__name__)
QUICK_GELU = 1.702  # Jukebox's quick GELU: x * sigmoid(1.702 x)
Quantize = Literal["none", "int8", "bf16"]
QUANTIZE: tuple[str, ...] = get_args(Quantize)


def int8_packed(linear: nn.Linear, alpha: float = 1.0, beta: float = 1.0) -> Any:
    """`linear`'s weights as int8 per output channel, ``alpha`` and ``beta`` folded in, packed for
    ``torch.ops.quantized.linear_dynamic`` (fbgemm on x86)."""
    weight = linear.weight.detach().float() * alpha
    scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the deprecation notice of quantized tensors
        qweight = torch.quantize_per_channel(weight, scales.double(), zero_points, axis=0, dtype=torch.qint8)
    bias = None if linear.bias is None else linear.bias.detach().float() * beta
    return torch.ops.quantized.linear_prepack(qweight, bias)


def int8_linear(linear: nn.Linear, alpha: float = 1.0, beta: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``beta * bias + alpha * x @ weight.T`` as a dynamic int8 product: weights int8 per output channel,
    activations per call.

    PyTorch's own quantized kernels (``torch.ops.quantized.linear_dynamic``, fbgemm on x86), the ones
    ``torch.ao.quantization.quantize_dynamic`` installs; used directly so that the model keeps its own
    modules and weights (the int8 copy belongs to the decoder), and so that `alpha` and `beta` are folded into the
    copy for free. PyTorch marks its quantized tensors deprecated in favour of torchao; its weight-only
    int8 product (``torch.ops.aten._weight_int8pack_mm``) measured 4x slower than the fp32 product for one
    row on this project's CPU, where this one is about 4x faster.
    """
    packed, product = int8_packed(linear, alpha, beta), int8_scripts().product
    return lambda x: product(x, packed)


class _Int8Scripts:
    """The int8 step's products and the small operations around them, as TorchScript functions.

    Called from Python, ``torch.ops.quantized.linear_dynamic`` converts its packed-weight argument (a
    TorchBind object) at a cost of its own: on an AVX2 CPU a product of a 16 x 16 weight took 18 to 57 us
    that way against 8 to 13 through a TorchScript function, and an int8 step of the 512 x 24 upsampler
    makes 97 products. A layer's step calls two functions: the layer norm and the fused projection, then,
    after the attention, the output projection, the residual, the MLP and its residual. TorchScript is
    deprecated in favour of `torch.compile`, which does not trace these quantized kernels; its notice is
    silenced here.
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.product = torch.jit.script(_int8_product)
            self.attention_input = torch.jit.script(_int8_attention_input)
            self.attention_output = torch.jit.script(_int8_attention_output)


@functools.cache
def int8_scripts() -> _Int8Scripts:
    """Compiled once a process, on the first int8 decoder."""
    return _Int8Scripts()


def _int8_product(x: torch.Tensor, packed: torch.classes.quantized.LinearPackedParamsBase) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic(x, packed, True)


def _int8_attention_input(
    x: torch.Tensor,
    shape: list[int],
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    packed: torch.classes.quantized.LinearPackedParamsBase,
) -> torch.Tensor:
    """The fused projection of the normed input (B, width)."""
    return torch.ops.quantized.linear_dynamic(torch.layer_norm(x, shape, weight, bias, eps), packed, True)


def _int8_attention_output(
    x: torch.Tensor,
    a: torch.Tensor,
    shape: list[int],
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    res_scale: float,
    proj: torch.classes.quantized.LinearPackedParamsBase,
    fc: torch.classes.quantized.LinearPackedParamsBase,
    mlp: torch.classes.quantized.LinearPackedParamsBase,
) -> torch.Tensor:
    """The block's output from its input x and the attention's a (B, n_state): `_Layer.step`'s arithmetic, the
    quick GELU's factors in the packed weights."""
    a = torch.ops.quantized.linear_dynamic(a, proj, True)
    xa = x + a
    h = torch.layer_norm(xa, shape, weight, bias, eps)
    z = torch.nn.functional.silu(torch.ops.quantized.linear_dynamic(h, fc, True))
    m = torch.ops.quantized.linear_dynamic(z, mlp, True)
    if res_scale == 1.0:
        return xa + m
    return x + res_scale * (a + m)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles); without, oneDNN emulates it."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


@functools.cache
def warn_emulated_bf16() -> None:
    """Once a process (a decoder is made per window)."""
    logger.warning(
        "quantize=bf16: this CPU has no bf16 arithmetic (AVX512-BF16 or AMX), so the bf16 products are emulated "
        "and slower than float32 (0.34x at batch 16 on an AVX2 CPU); quantize=int8 or none is faster here"
    )


def bf16_linear(linear: nn.Linear, alpha: float = 1.0, beta: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``beta * bias + alpha * x @ weight.T`` with bf16 weights and inputs, the product returned in x's dtype.

    The weight is kept as the transpose view of a bf16 copy (out, in): the layout that measured fastest
    for one row and within 7% of a contiguous transpose for 16.
    """
    weight_t = (linear.weight.detach().float() * alpha).to(torch.bfloat16).t()
    bias = linear.bias
    if bias is None:
        return lambda x: torch.mm(x.to(torch.bfloat16), weight_t).to(x.dtype)
    bias = (bias.detach().float() * beta).to(torch.bfloat16)
    return lambda x: torch.addmm(bias, x.to(torch.bfloat16), weight_t).to(x.dtype)


def reduced_linear(
    linear: nn.Linear, quantize: Quantize, alpha: float = 1.0, beta: float = 1.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``beta * bias + alpha * x @ weight.T`` with `quantize`'s weights ("int8" or "bf16")."""
    return (int8_linear if quantize == "int8" else bf16_linear)(linear, alpha, beta)


# (alpha, beta) of the reduced copies, as `_Layer.step` passes them to the fp32 products: c_fc scales its bias
# by the quick GELU's 1.702 too, mlp_proj not.
_REDUCED_FACTORS = {"c_fc": (QUICK_GELU, QUICK_GELU), "mlp_proj": (1.0 / QUICK_GELU, 1.0)}


class _Layer:
    """One block's weights and static cache, and its step."""

    def __init__(self, block: ResAttnBlock, batch_size: int, dtype: torch.dtype, quantize: Quantize) -> None:
        attn: Attention = block.attn
        self.block, self.attn, self.pattern = block, attn, attn.pattern
        self.heads, self.n_state = attn.heads, attn.n_state
        self.head_width = attn.n_state // attn.heads
        self.scale = 1.0 / math.sqrt(self.head_width)
        self.width = block.ln_0.normalized_shape
        self.res_scale = block.res_scale
        device = attn.c_attn.weight.device
        if self.pattern == "dense":
            slots = attn.n_ctx
        elif self.pattern == "block":
            slots = attn.block_ctx
        elif self.pattern == "transpose_block":
            slots = attn.n_ctx  # block_ctx columns of n_ctx // block_ctx blocks
        elif self.pattern == "prev_block":
            slots = 2 * attn.block_ctx
        elif self.pattern == "prime":
            slots = attn.n_prime_keys + 1  # the spare slot takes the keys of later positions, never read
        else:  # cross: set by set_encoder
            slots = 0
        self.kv = torch.zeros(slots, batch_size * self.heads, 2 * self.head_width, dtype=dtype, device=device)
        # (slots, B, heads, 2, head_width): one slot holds a key and its value
        self.slots = self.kv.view(slots, batch_size, self.heads, 2, self.head_width)
        self.static_kv = self.pattern in ("dense", "block", "prime", "cross")  # read in place, no gather
        if self.static_kv:
            self.keys_t, self.values = self.split(self.kv)  # a cross layer's again with every `set_kv`
        # Attribute look-ups on modules cost as much as a small op; a step reads plain tensors.
        self.ln_0 = (block.ln_0.weight.detach(), block.ln_0.bias.detach(), block.ln_0.eps)
        self.ln_1 = (block.ln_1.weight.detach(), block.ln_1.bias.detach(), block.ln_1.eps)
        self.reduced = quantize != "none"
        projections = {
            "c_attn": attn.c_attn if self.pattern == "cross" else self._slot_ordered(attn.c_attn),
            "c_proj": attn.c_proj,
            "c_fc": block.mlp.c_fc,
            "mlp_proj": block.mlp.c_proj,
        }
        self.int8 = quantize == "int8"
        if self.int8:  # the quick GELU's factors folded into the int8 copies (see `step`)
            self.packed = {
                name: int8_packed(layer, *_REDUCED_FACTORS.get(name, (1.0, 1.0))) for name, layer in projections.items()
            }
            self.scripts, self.shape = int8_scripts(), list(self.width)
        elif self.reduced:  # bf16, the same factors folded in
            self.products = {
                name: reduced_linear(layer, quantize, *_REDUCED_FACTORS.get(name, (1.0, 1.0)))
                for name, layer in projections.items()
            }
        else:
            self.weights = {
                name: (layer.bias.detach(), layer.weight.detach().t()) for name, layer in projections.items()
            }
        self.views: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.pattern in ("transpose_block", "prev_block"):  # each column (or half) as views, for the CPU
            parts = attn.block_ctx if self.pattern == "transpose_block" else 2
            self.views = [self.split(part) for part in self.kv.view(parts, -1, *self.kv.shape[1:])]
        # On the CPU, in the cache's dtype, without autocast (see `StaticDecoder.step`): a CUDA graph pays no
        # launch per operation, and an autocast product would not write into a float32 buffer.
        self.fused = not self.reduced and self.res_scale == 1.0 and device.type == "cpu"
        self.fused = self.fused and dtype == attn.c_attn.weight.dtype
        if self.fused:
            self._fuse(batch_size)

    def _slot_ordered(self, c_attn: nn.Linear) -> nn.Linear:
        """A copy of the fused projection whose key and value columns come in the slots' order, (heads, 2, d)
        after the query's n_state, so that the new slot is a view of its output."""
        n, heads, d = self.n_state, self.heads, self.head_width
        device = c_attn.weight.device
        order = torch.arange(2 * n, device=device).view(2, heads, d).transpose(0, 1).flatten() + n
        order = torch.cat([torch.arange(n, device=device), order])
        # skip_init: no initialisation drawn from the global random stream that sampling goes on to use
        copy = skip_init(nn.Linear, c_attn.in_features, c_attn.out_features, device=device, dtype=c_attn.weight.dtype)
        with torch.no_grad():
            copy.weight.copy_(c_attn.weight[order])
            copy.bias.copy_(c_attn.bias[order])
        return copy.requires_grad_(False)

    def _fuse(self, b: int) -> None:
        """Outputs written into buffers made once, biases folded into products: fewer operations a step.

        The new slot and the query are views of the fused projection's output buffer. At batch 1, the
        attention's output and the MLP's hidden units are each written into a row that ends in a constant 1,
        and the next product's weights end in its bias: ``x + [a, 1] @ [[W], [bias]]`` is the residual add, the
        product and its bias in one ``addmm``. (At a larger batch, the rows of the attention's output, one per
        sample and head, cannot also be rows of width n_state + 1, so the bias is added after the product.)
        """
        n, d, heads = self.n_state, self.head_width, self.heads
        device, dtype = self.kv.device, self.weights["c_proj"][1].dtype
        bias, weight_t = self.weights["c_attn"]
        self.qkv_bias, self.qkv_weight_t = bias, weight_t
        self.qkv = torch.empty(b, weight_t.shape[1], dtype=dtype, device=device)
        self.new_slot = self.qkv[:, n:].view(1, b, heads, 2, d) if self.pattern != "cross" else None
        self.query = self.qkv[:, :n].view(heads, 1, d) if b == 1 else None  # a larger batch reshapes a copy
        self.ones = b == 1
        hidden = self.weights["c_fc"][1].shape[1]
        if self.ones:
            self.attn_row = torch.ones(1, n + 1, dtype=dtype, device=device)
            self.attn_out = self.attn_row[:, :n].view(heads, 1, d)
            self.hidden_row = torch.ones(1, hidden + 1, dtype=dtype, device=device)
            self.hidden = self.hidden_row[:, :hidden]
            proj_bias, proj_t = self.weights["c_proj"]
            mlp_bias, mlp_t = self.weights["mlp_proj"]
            self.proj_t = torch.cat([proj_t, proj_bias[None]]).contiguous()  # (n + 1, width)
            self.mlp_t = torch.cat([mlp_t / QUICK_GELU, mlp_bias[None]]).contiguous()  # c_proj(z / 1.702) + bias
        else:
            self.attn_out = torch.empty(b * heads, 1, d, dtype=dtype, device=device)
            self.attn_row = self.attn_out.view(b, n)
            self.hidden = torch.empty(b, hidden, dtype=dtype, device=device)

    def split(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots (S, B * heads, 2d) -> keys transposed (B * heads, d, S) and values (B * heads, S, d), as views."""
        d = self.head_width
        return kv[..., :d].permute(1, 2, 0), kv[..., d:].transpose(0, 1)

    def positions_to_slots(self, positions: torch.Tensor) -> torch.Tensor:
        """The slot each position's key goes to (positions a long tensor)."""
        attn = self.attn
        if self.pattern == "block":
            return positions % attn.block_ctx
        if self.pattern == "transpose_block":
            blocks = attn.n_ctx // attn.block_ctx
            return (positions % attn.block_ctx) * blocks + positions // attn.block_ctx
        if self.pattern == "prev_block":
            return positions % (2 * attn.block_ctx)
        if self.pattern == "prime":
            return positions.clamp(max=attn.n_prime_keys)
        return positions

    def load(self, cache: KVCache) -> None:
        """Copy the keys and values an incremental `KVCache` of this layer holds into the static slots."""
        if self.pattern == "cross":
            if cache.key is not None:
                self.set_kv(cache.key, cache.value)
            return
        t = cache.sample_t
        if self.pattern == "prime":
            first, count = 0, min(t, self.attn.n_prime_keys)
        else:
            first = self.attn._cache_start(t)
            count = t - first
        if not count:
            return
        key_value = self.as_slots(cache.key[:, :count], cache.value[:, :count])
        positions = torch.arange(first, first + count, device=self.kv.device)
        self.slots.index_copy_(0, self.positions_to_slots(positions), key_value.to(self.kv.dtype))

    def as_slots(self, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Keys and values (B, S, n_state) laid out as slots (S, B, heads, 2, head_width)."""
        b, s, _ = key.shape
        return torch.stack([x.view(b, s, self.heads, self.head_width) for x in (key, value)], dim=3).transpose(0, 1)

    def set_kv(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """A cross layer's encoder keys and values (B, S, n_state), fixed for the whole window."""
        self.kv = self.as_slots(key, value).flatten(1, 2).flatten(2).to(self.kv.dtype).contiguous()
        self.keys_t, self.values = self.split(self.kv)

    def linear(self, name: str, x: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
        """``beta * bias + alpha * x @ weight.T`` of one projection (bf16: alpha and beta are in its weights)."""
        if self.reduced:
            return self.products[name](x)
        bias, weight_t = self.weights[name]
        return torch.addmm(bias, x, weight_t, beta=beta, alpha=alpha)

    def keys_values(self, step: _StepState) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys (B * heads, d, S) and values (B * heads, S, d) this layer's query reads at `step`."""
        if self.static_kv:
            return self.keys_t, self.values
        index = step.column if self.pattern == "transpose_block" else step.previous_half
        if isinstance(index, int):  # the CPU: a view made once
            return self.views[index]
        kv = self.kv  # a tensor: gathered, so that a CUDA graph replays the same gather at every position
        if self.pattern == "transpose_block":  # (block_ctx, blocks, B * heads, 2d): t's column
            kv = _pick(kv.view(self.attn.block_ctx, -1, *kv.shape[1:]), index)
        else:  # (2, block_ctx, B * heads, 2d): the other half of the ring
            kv = _pick(kv.view(2, -1, *kv.shape[1:]), index)
        return self.split(kv)

    def scores(self, q: torch.Tensor, step: _StepState) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax of one query per (sample, head) q (B * heads, 1, d) over the slots its pattern sees, and the
        values: (B * heads, 1, S), (B * heads, S, d)."""
        keys_t, values = self.keys_values(step)
        # prev_block and cross see every slot they read: their "mask" is a zero, beta=0 drops it.
        mask = step.masks.get(self.pattern, step.no_mask)
        scores = torch.baddbmm(mask, q, keys_t, beta=0.0 if mask is step.no_mask else 1.0, alpha=self.scale)
        return scores.softmax(dim=-1), values

    def step(self, x: torch.Tensor, step: _StepState) -> torch.Tensor:
        """x (B, width) at position `step.position` -> (B, width); the position's key and value are stored."""
        if self.fused and step.fused:
            return self._fused_step(x, step)
        b, heads, n, d = x.shape[0], self.heads, self.n_state, self.head_width
        if self.int8:
            qkv = self.scripts.attention_input(x, self.shape, *self.ln_0, self.packed["c_attn"])
        else:
            qkv = self.linear("c_attn", torch.layer_norm(x, self.width, *self.ln_0))
        if self.pattern == "cross":
            q = qkv
        else:  # (B, 3 * n_state): q, then k and v in the slots' order
            q = qkv[:, :n]
            key_value = qkv[:, n:].view(1, b, heads, 2, d)
            if key_value.dtype != self.kv.dtype:
                key_value = key_value.to(self.kv.dtype)
            self.slots.index_copy_(0, step.slots[self.pattern], key_value)
        a = torch.bmm(*self.scores(q.reshape(b * heads, 1, d), step)).view(b, n)
        if self.int8:
            packed = self.packed
            return self.scripts.attention_output(
                x, a, self.shape, *self.ln_1, self.res_scale, packed["c_proj"], packed["c_fc"], packed["mlp_proj"]
            )
        a = self.linear("c_proj", a)
        xa = x + a
        h = torch.layer_norm(xa, self.width, *self.ln_1)
        # quick_gelu(y) = silu(1.702 y) / 1.702, with 1.702 and 1 / 1.702 folded into the two products.
        z = F.silu(self.linear("c_fc", h, alpha=QUICK_GELU, beta=QUICK_GELU), inplace=True)
        m = self.linear("mlp_proj", z, alpha=1.0 / QUICK_GELU)  # c_proj(z / 1.702)
        return xa.add_(m) if self.res_scale == 1.0 else x + self.res_scale * (a + m)

    def _fused_step(self, x: torch.Tensor, step: _StepState) -> torch.Tensor:
        """`step`'s maths through the buffers and folded weights of `_fuse`."""
        h = torch.layer_norm(x, self.width, *self.ln_0)
        torch.addmm(self.qkv_bias, h, self.qkv_weight_t, out=self.qkv)
        if self.new_slot is not None:
            self.slots.index_copy_(0, step.slots[self.pattern], self.new_slot)
        q = self.query if self.query is not None else self.qkv[:, : self.n_state].reshape(-1, 1, self.head_width)
        torch.bmm(*self.scores(q, step), out=self.attn_out)
        fc_bias, fc_t = self.weights["c_fc"]
        if self.ones:
            xa = torch.addmm(x, self.attn_row, self.proj_t)
            h = torch.layer_norm(xa, self.width, *self.ln_1)
            F.silu(torch.addmm(fc_bias, h, fc_t, beta=QUICK_GELU, alpha=QUICK_GELU, out=self.hidden), inplace=True)
            return torch.addmm(xa, self.hidden_row, self.mlp_t)
        proj_bias, proj_t = self.weights["c_proj"]
        xa = torch.addmm(x, self.attn_row, proj_t).add_(proj_bias)
        h = torch.layer_norm(xa, self.width, *self.ln_1)
        F.silu(torch.addmm(fc_bias, h, fc_t, beta=QUICK_GELU, alpha=QUICK_GELU, out=self.hidden), inplace=True)
        mlp_bias, mlp_t = self.weights["mlp_proj"]
        return torch.addmm(xa, self.hidden, mlp_t, alpha=1.0 / QUICK_GELU).add_(mlp_bias)


def _pick(view: torch.Tensor, index: int | torch.Tensor) -> torch.Tensor:
    """``view[index]`` along the first dimension: a view for an int, a gathered copy for a tensor."""
    return view[index] if isinstance(index, int) else view.index_select(0, index)[0]


class _StepState:
    """What every layer of one step shares: the slot each pattern writes, its mask, the column to read."""

    def __init__(self, decoder: StaticDecoder, position: torch.Tensor) -> None:
        self.position, self._dtype = position, decoder.dtype
        self.fused = not torch.is_autocast_enabled(position.device.type)
        self.no_mask = decoder.no_mask
        self.slots = {pattern: layer.positions_to_slots(position) for pattern, layer in decoder.pattern_layers.items()}
        self.masks: dict[str, torch.Tensor] = {}
        block_ctx, masks = decoder.block_ctx, decoder.mask_ranges
        if "block" in masks:
            self.masks["block"] = self._additive(masks["block"] <= position % block_ctx)
        # Which column or half to read: a plain index on the CPU, where a view saves copying it every layer;
        # a tensor elsewhere, so that a CUDA graph replays the same gather at every position.
        at = int(position) if position.device.type == "cpu" else position
        if "transpose_block" in masks:
            self.column = at % block_ctx
            self.masks["transpose_block"] = self._additive(masks["transpose_block"] <= position // block_ctx)
        if "prev_block" in decoder.pattern_layers:
            self.previous_half = 1 - (at // block_ctx) % 2
        if "dense" in masks:
            self.masks["dense"] = self._additive(masks["dense"] <= position)
        if "prime" in masks:
            n_prime = decoder.pattern_layers["prime"].attn.n_prime_keys
            self.masks["prime"] = self._additive((masks["prime"] <= position) & (masks["prime"] < n_prime))

    def _additive(self, visible: torch.Tensor) -> torch.Tensor:  # (slots,) bool -> (1, 1, slots): 0 or -inf
        mask = torch.zeros(visible.shape, dtype=self._dtype, device=visible.device)
        return mask.masked_fill_(~visible, float("-inf"))[None, None]


class StaticDecoder:
    """Decode one position at a time through `transformer` for a batch of `batch_size`, caches allocated once.

    `dtype` is the cache's (default: the weights'); `quantize="int8"` runs the projections as dynamic int8
    products (CPU), `quantize="bf16"` as bf16 products. The output of `step` equals
    ``transformer(x[:, None], caches=...)[:, 0]`` to rounding.
    """

    def __init__(
        self,
        transformer: Transformer,
        batch_size: int,
        dtype: torch.dtype | None = None,
        quantize: Quantize = "none",
    ) -> None:
        if quantize not in QUANTIZE:
            raise ValueError(f"quantize is 'none', 'int8' or 'bf16', not {quantize!r}")
        device = next(transformer.parameters()).device
        if quantize == "bf16" and device.type == "cpu" and not cpu_has_bf16():
            warn_emulated_bf16()
        dtype = dtype or next(transformer.parameters()).dtype
        self.dtype = dtype
        self.layers = [_Layer(block, batch_size, dtype, quantize) for block in transformer.blocks]
        self.pattern_layers = {layer.pattern: layer for layer in self.layers}
        factorized = [layer.attn for layer in self.layers if layer.attn.block_ctx is not None]
        self.block_ctx = factorized[0].block_ctx if factorized else None
        self.no_mask = torch.zeros(1, 1, 1, dtype=dtype, device=device)
        self.mask_ranges = {
            pattern: torch.arange(self._mask_length(layer), device=device)
            for pattern, layer in self.pattern_layers.items()
            if pattern in ("block", "transpose_block", "dense", "prime")
        }

    @staticmethod
    def _mask_length(layer: _Layer) -> int:
        return layer.attn.n_ctx // layer.attn.block_ctx if layer.pattern == "transpose_block" else layer.kv.shape[0]

    def load(self, caches: Sequence[KVCache]) -> None:
        """Start from what incremental caches hold after a prompt (or from nothing: fresh caches)."""
        if len(caches) != len(self.layers):
            raise ValueError(f"got {len(caches)} caches for {len(self.layers)} layers")
        for layer, cache in zip(self.layers, caches, strict=True):
            layer.load(cache)

    def set_encoder(self, encoder_states: torch.Tensor) -> None:
        """Project the encoder (lyric) states (B, S, encoder_width) once for every cross-attention layer."""
        for layer in self.layers:
            if layer.pattern == "cross":
                layer.set_kv(*layer.attn.c_enc_kv(encoder_states).chunk(2, dim=-1))

    def step(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """x (B, width): the inputs at `position` (a long tensor of one element) -> the outputs (B, width)."""
        state = _StepState(self, position)
        for layer in self.layers:
            x = layer.step(x, state)
        return x


class CudaGraphStep:
    """`StaticDecoder.step` captured once as a CUDA graph and replayed: one launch per step.

    Inputs are copied into static tensors and the graph's output tensor is returned (overwritten by the
    next replay). Capturing follows PyTorch's ``torch.cuda.graphs`` recipe: warm-up iterations on a side
    stream, then capture. The warm-up steps write into the caches; they run at the first real position
    with the real inputs, so the step that follows overwrites what they wrote.
    """

    def __init__(self, decoder: StaticDecoder, x: torch.Tensor, position: torch.Tensor, warmup: int = 2) -> None:
        self.decoder = decoder
        self.x, self.position = x.clone(), position.clone()
        # Under autocast (a bf16-mixed run), its cache of cast weights must stay out of the graph's memory.
        autocast = torch.autocast(
            "cuda",
            dtype=torch.get_autocast_dtype("cuda"),
            enabled=torch.is_autocast_enabled("cuda"),
            cache_enabled=False,
        )
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), autocast:
            for _ in range(warmup):
                decoder.step(self.x, self.position)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), autocast:
            self.out = decoder.step(self.x, self.position)

    def __call__(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.position.copy_(position)
        self.graph.replay()
        return self.out
