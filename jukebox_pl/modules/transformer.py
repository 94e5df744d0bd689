"""Jukebox's transformer: pre-LayerNorm residual blocks of factorized attention and a quick-GELU MLP.

openai/jukebox ``transformer/transformer.py``: each block is ``a = attn(ln_0(x))``, ``m = mlp(ln_1(x + a))``,
``x + a + m``; the layers cycle through attention patterns by an ``attn_order`` preset (`ATTN_ORDERS`). The
priors own the token and position embeddings and the output head; `PositionEmbedding` is here for them.

Example::

    model = Transformer(width=64, n_ctx=32, heads=2, depth=6, attn_order=2, blocks=4)
    h = model(torch.randn(2, 32, 64))                                    # (B, T, width)
    caches = model.new_caches()                                          # sampling: one position at a time
    h_t = model(x_t, caches=caches)                                      # x_t (B, 1, width)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from jukebox_pl.modules.attention import Attention, KVCache, init_linear_, resolve_pattern


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(1.702 x)``, the sigmoid approximation of GELU that Jukebox uses (``transformer/ops.py``)."""
    return x * torch.sigmoid(1.702 * x)


def _cycle(*ids: int) -> Callable[[int], int]:
    return lambda layer: ids[layer % len(ids)]


def _every_16th(special: int) -> Callable[[int], int]:
    # Rows, columns and previous rows, except that every 16th layer (15, 31, ...) is special, special or dense
    # by layer % 3.
    return lambda layer: (special, special, 0)[layer % 3] if layer % 16 == 15 else (1, 2, 3)[layer % 3]


# openai/jukebox Transformer.__init__: attn_order -> (layer index -> attn_func id). Orders 3, 4 and 5 use the
# "summary" patterns (ids 4, 5) that no released model uses and are left out.
ATTN_ORDERS: dict[int, Callable[[int], int]] = {
    0: _cycle(0),  # dense everywhere
    1: _cycle(1, 2),  # rows and columns
    2: _cycle(1, 2, 3),  # rows, columns, previous rows: prior_5b, the upsamplers, the 5B lyrics encoder
    6: _cycle(1, 2, 3, 6),
    7: _cycle(*(1, 2, 3) * 5, 6),
    8: _cycle(*(1, 2, 3) * 3, 6),  # small separated encoder-decoder lyrics model
    9: _cycle(1, 2, 3, 0),
    10: _cycle(*(1, 2, 3) * 3, *((1, 2, 3) * 3 + (6,)) * 7),  # prior_5b_lyrics: 79 layers, 7 cross attentions
    11: _every_16th(6),
    12: _every_16th(7),  # prior_1b_lyrics: prime attention to the lyric prefix (single encoder-decoder)
}


def layer_patterns(attn_order: int, depth: int) -> list[str]:
    """The attention pattern of each of `depth` layers under a Jukebox attn_order preset."""
    if attn_order not in ATTN_ORDERS:
        raise ValueError(f"attn_order {attn_order} is not implemented; valid orders: {sorted(ATTN_ORDERS)}")
    return [resolve_pattern(ATTN_ORDERS[attn_order](layer)) for layer in range(depth)]


class MLP(nn.Module):
    """``c_proj(quick_gelu(c_fc(x)))``: (B, T, width) -> (B, T, width) through int(width * mlp_mult) units."""

    def __init__(
        self,
        width: int,
        mlp_mult: float = 1.0,
        resid_dropout: float = 0.0,
        zero_out: bool = False,
        init_scale: float = 1.0,
    ):
        super().__init__()
        hidden = int(width * mlp_mult)  # Jukebox m_mlp 1.0
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)
        init_linear_(self.c_fc, init_scale)
        init_linear_(self.c_proj, init_scale, zero=zero_out)
        self.resid_dropout = nn.Dropout(resid_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resid_dropout(self.c_proj(quick_gelu(self.c_fc(x))))


class ResAttnBlock(nn.Module):
    """One pre-LayerNorm block: ``a = attn(ln_0(x))``, ``m = mlp(ln_1(x + a))``, ``x + res_scale * (a + m)``."""

    def __init__(
        self,
        width: int,
        n_ctx: int,
        heads: int,
        pattern: str | int = "dense",
        mlp_mult: float = 1.0,
        resid_dropout: float = 0.0,
        zero_out: bool = False,
        init_scale: float = 1.0,
        res_scale: float = 1.0,
        **attention: Any,
    ):
        """`attention` holds `Attention`'s other arguments (blocks, attn_mult, prime_len, encoder_width...)."""
        super().__init__()
        shared = dict(resid_dropout=resid_dropout, zero_out=zero_out, init_scale=init_scale)
        self.ln_0 = nn.LayerNorm(width)
        self.attn = Attention(width, n_ctx, heads, pattern, **shared, **attention)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_mult, **shared)
        self.res_scale = res_scale

    def forward(
        self, x: torch.Tensor, encoder_states: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        a = self.attn(self.ln_0(x), encoder_states, cache)
        # Jukebox feeds the MLP x + a unscaled and scales only the sum of the two branches.
        m = self.mlp(self.ln_1(x + a))
        return x + a + m if self.res_scale == 1.0 else x + self.res_scale * (a + m)


class Transformer(nn.Module):
    """`depth` ResAttnBlocks whose attention patterns follow `attn_order`: (B, T, width) -> (B, T, width).

    As openai/jukebox ``Transformer``: cross-attention layers start at zero (their attention and MLP output
    projections are zeroed, ``zero_out`` for attn_func 6), and `res_scale` scales every residual branch by
    1 / depth. `checkpoint_blocks` recomputes each block's activations in the backward pass.
    """

    def __init__(
        self,
        width: int,
        n_ctx: int,
        heads: int,
        depth: int,
        attn_order: int = 0,
        zero_out: bool = False,
        res_scale: bool = False,
        checkpoint_blocks: bool = False,
        **block: Any,
    ):
        """`block` holds `ResAttnBlock`'s other arguments (blocks, attn_mult, mlp_mult, prime_len, encoder_width,
        dropouts, init_scale)."""
        super().__init__()
        self.patterns = layer_patterns(attn_order, depth)
        scale = 1.0 / depth if res_scale else 1.0
        self.blocks = nn.ModuleList(
            ResAttnBlock(
                width, n_ctx, heads, pattern, zero_out=zero_out or pattern == "cross", res_scale=scale, **block
            )
            for pattern in self.patterns
        )
        self.checkpoint_blocks = checkpoint_blocks

    def new_caches(self) -> list[KVCache]:
        """Empty caches, one per layer, for a new round of incremental decoding."""
        return [KVCache() for _ in self.blocks]

    def forward(
        self,
        x: torch.Tensor,
        encoder_states: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """x (B, T, width), encoder_states (B, S, encoder_width) for cross layers, caches from `new_caches`.

        With caches, x holds the next T positions after those already seen (see `Attention.forward`).
        """
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"got {len(caches)} caches for {len(self.blocks)} layers")
        for i, block in enumerate(self.blocks):
            states = encoder_states if self.patterns[i] == "cross" else None
            cache = None if caches is None else caches[i]
            if self.checkpoint_blocks and cache is None and torch.is_grad_enabled():
                x = checkpoint(block, x, states, use_reentrant=False)
            else:
                x = block(x, states, cache)
        return x

    def attention_weights(
        self, x: torch.Tensor, layer: int, encoder_states: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The attention weights (B, heads, T, S) of layer `layer` ("cross" or "prime") for input x (B, T, width)."""
        if not 0 <= layer < len(self.blocks):
            raise ValueError(f"layer {layer} does not exist; the transformer has {len(self.blocks)} layers")
        for i, block in enumerate(self.blocks[:layer]):
            x = block(x, encoder_states if self.patterns[i] == "cross" else None)
        block = self.blocks[layer]
        return block.attn.attention_weights(block.ln_0(x), encoder_states if self.patterns[layer] == "cross" else None)


class PositionEmbedding(nn.Module):
    """Learned positional embedding (n_ctx, width), N(0, 0.01 * init_scale) as Jukebox's prior (``get_normal``)."""

    def __init__(self, n_ctx: int, width: int, init_scale: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_ctx, width) * (0.01 * init_scale))

    def forward(self, length: int, start: int = 0) -> torch.Tensor:
        """Embeddings of positions start..start+length-1: (length, width); sampling passes start = sample_t."""
        return self.weight[start : start + length]
