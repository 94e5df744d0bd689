"""Jukebox's factorized self-attention, cross attention and prime attention, with a KV cache for sampling.

Jukebox (Dhariwal et al., 2020, appendix B.2; openai/jukebox ``transformer/factored_attention.py``) replaces
dense attention over 8192 tokens by three sparse patterns that take turns from layer to layer. The sequence of
length ``n_ctx`` is cut into ``blocks`` blocks of ``block_ctx = n_ctx // blocks`` tokens:

    pattern            Jukebox id  query i attends to key j when
    "dense"            0           j <= i
    "block"            1           j <= i and j is in i's block                           (a "row")
    "transpose_block"  2           j <= i and j has i's offset inside its block           (a "column")
    "prev_block"       3           j is in the block before i's; the first block sees zeros
    "cross"            6           every encoder (lyric) state; keys/values come from the encoder
    "prime"            7           j <= i and j < prime_key_len(prime_len, blocks)  (single enc-dec lyrics)

Jukebox ids 4 and 5 ("summary" attention to the last positions of each block) are used by no released model
and are left out. The factorized patterns never build an (n_ctx, n_ctx) tensor: they fold the sequence into
blocks (rows) or columns and run `scaled_dot_product_attention` over ``block_ctx`` or ``blocks`` keys, so
memory grows linearly with the context. `explicit_mask` gives the dense definition, for tests and docs.

Incremental decoding: pass a `KVCache` (one per layer, start with ``KVCache()``) to `Attention.forward`; each
call consumes the next ``T >= 1`` positions (one token while sampling, a longer chunk to prime) and keeps only
the keys and values later positions can still see:

    dense             every key so far
    block             the keys of the current block
    transpose_block   every key so far (each offset's column is needed again in every later block)
    prev_block        the previous block and the current one
    cross             the encoder keys/values, projected once on the first call
    prime             the first prime_key_len keys

Example::

    attn = Attention(width=64, n_ctx=32, heads=2, pattern="block", blocks=4)
    x = torch.randn(2, 32, 64)                                             # (B, T, width)
    y = attn(x)                                                            # (B, T, width)
    cache = KVCache()
    y_steps = torch.cat([attn(x_t, cache=cache) for x_t in x.split(1, dim=1)], dim=1)  # equals y
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

PATTERNS = ("dense", "block", "transpose_block", "prev_block", "cross", "prime")

# openai/jukebox factored_attention.py: the attn_func ids of FactoredAttention (4 and 5 are left out, see above).
JUKEBOX_ATTN_FUNCS = {0: "dense", 1: "block", 2: "transpose_block", 3: "prev_block", 6: "cross", 7: "prime"}


def resolve_pattern(pattern: str | int) -> str:
    """The pattern's name, from a name or a Jukebox attn_func id; unknown ones are refused with the valid ones."""
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        if pattern not in JUKEBOX_ATTN_FUNCS:
            raise ValueError(f"Jukebox attn_func {pattern} is not implemented; valid ids: {sorted(JUKEBOX_ATTN_FUNCS)}")
        return JUKEBOX_ATTN_FUNCS[pattern]
    if pattern not in PATTERNS:
        raise ValueError(f"unknown attention pattern {pattern!r}; valid patterns: {', '.join(PATTERNS)}")
    return pattern


def prime_key_len(prime_len: int, blocks: int) -> int:
    """How many leading keys prime attention sees: `prime_len` rounded up past a multiple of `blocks`.

    openai/jukebox ``FactoredAttention._prime_len``: ``(prime_len // blocks + 1) * blocks``. It rounds with the
    number of blocks, not the block length, and always adds at least one token: with the 1B lyrics model's 384
    lyric tokens and 64 blocks the music sees 448 keys, the lyrics and the first 64 music tokens. We keep it so
    that imported weights see what they were trained with.
    """
    return (prime_len // blocks + 1) * blocks


def explicit_mask(
    pattern: str | int,
    n_ctx: int,
    blocks: int | None = None,
    prime_len: int | None = None,
    n_encoder: int | None = None,
) -> torch.Tensor:
    """The pattern as a dense bool mask (n_ctx, n_keys), True where query i may see key j. For tests and docs only.

    Keys are the sequence itself (n_keys = n_ctx) except for "cross", whose keys are the `n_encoder` encoder
    states. A row with no True ("prev_block", first block) attends to zero keys and values, so its output is 0.
    The mask of a prefix of length T is ``mask[:T, :T]``.
    """
    pattern = resolve_pattern(pattern)
    if pattern == "cross":
        return torch.ones(n_ctx, n_encoder, dtype=torch.bool)
    i = torch.arange(n_ctx)[:, None]
    j = torch.arange(n_ctx)[None, :]
    causal = j <= i
    if pattern == "dense":
        return causal
    if pattern == "prime":
        return causal & (j < prime_key_len(prime_len, blocks))
    block_ctx = n_ctx // blocks
    if pattern == "block":
        return causal & (j // block_ctx == i // block_ctx)
    if pattern == "transpose_block":
        return causal & (j % block_ctx == i % block_ctx)
    return j // block_ctx == i // block_ctx - 1  # prev_block


def multihead_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    is_causal: bool = False,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention on merged-head tensors: q (N, Tq, C), k and v (N, Tk, C) -> (N, Tq, C).

    The scale is SDPA's 1/sqrt(C / heads), as Jukebox's ``_attn`` (1/sqrt(sqrt(d)) on both q and k).
    `is_causal` is only used with Tq == Tk, where top-left and bottom-right alignment agree.
    """
    n, tq, c = q.shape

    def split(x: torch.Tensor) -> torch.Tensor:  # (N, T, C) -> (N, heads, T, C // heads)
        return x.reshape(x.shape[0], x.shape[1], heads, c // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        split(q), split(k), split(v), attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
    )
    return out.transpose(1, 2).reshape(n, tq, c)


def causal_mask(n_queries: int, n_keys: int, first_query: int, device: torch.device) -> torch.Tensor | None:
    """Bool (n_queries, n_keys) mask for queries at positions first_query.. over keys at positions 0..; None if T=1.

    A single query is the newest position, so it may see every cached key and needs no mask. A chunk (priming)
    gets a mask of the size of its score matrix.
    """
    if n_queries == 1:
        return None
    queries = torch.arange(first_query, first_query + n_queries, device=device)[:, None]
    return torch.arange(n_keys, device=device)[None, :] <= queries


# Full-sequence patterns. q, k, v: (B, T, C) from position 0, T a multiple of block_ctx for the factorized ones.


def block_attention(q, k, v, heads: int, block_ctx: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention inside each block of `block_ctx` positions (Jukebox attn_func 1)."""
    b, t, c = q.shape

    def rows(x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B * blocks, block_ctx, C)
        return x.reshape(b * t // block_ctx, block_ctx, c)

    return multihead_sdpa(rows(q), rows(k), rows(v), heads, is_causal=True, dropout_p=dropout_p).reshape(b, t, c)


def transpose_block_attention(q, k, v, heads: int, block_ctx: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention along each column: the same offset in every earlier block (Jukebox attn_func 2)."""
    b, t, c = q.shape
    n_blocks = t // block_ctx

    def columns(x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B * block_ctx, blocks, C)
        return x.reshape(b, n_blocks, block_ctx, c).transpose(1, 2).reshape(b * block_ctx, n_blocks, c)

    out = multihead_sdpa(columns(q), columns(k), columns(v), heads, is_causal=True, dropout_p=dropout_p)
    return out.reshape(b, block_ctx, n_blocks, c).transpose(1, 2).reshape(b, t, c)


def prev_block_attention(q, k, v, heads: int, block_ctx: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Each block attends to the whole previous block, without a mask (Jukebox attn_func 3).

    The first block has no previous block: as Jukebox's ``prev_block_attn`` it attends to a block of zero keys
    and values, a uniform softmax over zeros, so its output is 0.
    """
    b, t, c = q.shape

    def previous(x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B * blocks, block_ctx, C), shifted by a block
        x = x.reshape(b, t // block_ctx, block_ctx, c)
        return F.pad(x[:, :-1], (0, 0, 0, 0, 1, 0)).reshape(b * t // block_ctx, block_ctx, c)

    q = q.reshape(b * t // block_ctx, block_ctx, c)
    return multihead_sdpa(q, previous(k), previous(v), heads, dropout_p=dropout_p).reshape(b, t, c)


def prime_attention(q, k, v, heads: int, n_prime_keys: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention restricted to the first `n_prime_keys` keys (Jukebox attn_func 7).

    Split in two so that no mask is built: the prefix attends causally to itself, the later positions see every
    prefix key (all in their past).
    """
    p = min(n_prime_keys, q.shape[1])
    k, v = k[:, :p], v[:, :p]
    prefix = multihead_sdpa(q[:, :p], k, v, heads, is_causal=True, dropout_p=dropout_p)
    if q.shape[1] == p:
        return prefix
    rest = multihead_sdpa(q[:, p:], k, v, heads, dropout_p=dropout_p)
    return torch.cat([prefix, rest], dim=1)


FACTORIZED_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "block": block_attention,
    "transpose_block": transpose_block_attention,
    "prev_block": prev_block_attention,
}


def init_linear_(linear: nn.Linear, init_scale: float = 1.0, zero: bool = False) -> None:
    """Jukebox's Conv1D init (``transformer/ops.py``): weight N(0, 0.02 * init_scale) or zeros, bias zeros."""
    if zero:
        nn.init.zeros_(linear.weight)
    else:
        nn.init.normal_(linear.weight, std=0.02 * init_scale)
    nn.init.zeros_(linear.bias)


class KVCache:
    """What one attention layer keeps between incremental calls; start each sample with a fresh ``KVCache()``.

    `key` and `value` are (B, S, n_state) views of the positions later queries can still see, S depending on
    the pattern (see the module docstring); `sample_t` is the number of positions consumed so far. A
    cross-attention cache holds the projected encoder states. New keys are written into a buffer that grows
    by doubling, so a decoding step does not copy the whole cache.
    """

    def __init__(self) -> None:
        self.sample_t = 0
        self._keys: torch.Tensor | None = None  # (B, capacity, n_state)
        self._values: torch.Tensor | None = None
        self._begin = self._end = 0  # the live part of the buffers

    @property
    def key(self) -> torch.Tensor | None:
        return None if self._keys is None else self._keys[:, self._begin : self._end]

    @property
    def value(self) -> torch.Tensor | None:
        return None if self._values is None else self._values[:, self._begin : self._end]

    def set(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Hold `key` and `value` (B, S, n_state) as they are (the encoder states of a cross layer)."""
        self._keys, self._values, self._begin, self._end = key, value, 0, key.shape[1]

    def append(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Add the keys and values (B, T, n_state) of the next T positions."""
        n, live = key.shape[1], self._end - self._begin
        if self._keys is None or self._end + n > self._keys.shape[1]:
            capacity = max(2 * (live + n), 64)
            keys, values = (x.new_empty(x.shape[0], capacity, x.shape[2]) for x in (key, value))
            if self._keys is not None and live:
                keys[:, :live], values[:, :live] = self.key, self.value
            self._keys, self._values, self._begin, self._end = keys, values, 0, live
        self._keys[:, self._end : self._end + n] = key
        self._values[:, self._end : self._end + n] = value
        self._end += n

    def drop(self, n: int) -> None:
        """Forget the `n` oldest positions: no later query can see them."""
        self._begin = min(self._begin + n, self._end)


class Attention(nn.Module):
    """Multi-head attention with one of Jukebox's patterns: (B, T, width) -> (B, T, width).

    Projections as Jukebox's ``FactoredAttention``: ``c_attn`` width -> 3 * n_state (q, k, v), or for "cross"
    width -> n_state (q) plus ``c_enc_kv`` encoder_width -> 2 * n_state (k, v); ``c_proj`` n_state -> width;
    n_state = int(width * attn_mult) (Jukebox m_attn 0.25).
    """

    def __init__(
        self,
        width: int,
        n_ctx: int,
        heads: int,
        pattern: str | int = "dense",
        blocks: int | None = None,
        attn_mult: float = 0.25,
        prime_len: int | None = None,
        encoder_width: int | None = None,
        attn_dropout: float = 0.0,
        resid_dropout: float = 0.0,
        zero_out: bool = False,
        init_scale: float = 1.0,
    ):
        super().__init__()
        self.pattern = resolve_pattern(pattern)
        self.n_ctx = n_ctx
        self.heads = heads
        self.n_state = int(width * attn_mult)
        if self.n_state % heads:
            raise ValueError(
                f"n_state {self.n_state} (width {width} * attn_mult {attn_mult}) is not a multiple of heads {heads}"
            )
        self.block_ctx = None
        if self.pattern in FACTORIZED_FUNCTIONS or self.pattern == "prime":
            if blocks is None or n_ctx % blocks:
                raise ValueError(f"{self.pattern!r} attention needs blocks dividing n_ctx {n_ctx}, got {blocks}")
            self.block_ctx = n_ctx // blocks
        self.n_prime_keys = None
        if self.pattern == "prime":
            if prime_len is None:
                raise ValueError("'prime' attention needs prime_len, the length of the lyric prefix")
            self.n_prime_keys = prime_key_len(prime_len, blocks)

        if self.pattern == "cross":
            self.c_attn = nn.Linear(width, self.n_state)
            self.c_enc_kv = nn.Linear(encoder_width or width, 2 * self.n_state)
            init_linear_(self.c_enc_kv, init_scale)
        else:
            self.c_attn = nn.Linear(width, 3 * self.n_state)
        self.c_proj = nn.Linear(self.n_state, width)
        init_linear_(self.c_attn, init_scale)
        init_linear_(self.c_proj, init_scale, zero=zero_out)
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout)

    def forward(
        self, x: torch.Tensor, encoder_states: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """x (B, T, width) -> (B, T, width). encoder_states (B, S, encoder_width): "cross" only.

        Without a cache, x holds positions 0..T-1. With one, x holds the next T positions after the
        ``cache.sample_t`` already seen, and the cache is updated in place.
        """
        if encoder_states is not None and self.pattern != "cross":
            raise ValueError(f"encoder_states are for 'cross' attention; this layer is {self.pattern!r}")
        dropout_p = self.attn_dropout if self.training else 0.0
        if self.pattern == "cross":
            a = multihead_sdpa(
                self.c_attn(x), *self._encoder_kv(encoder_states, cache), self.heads, dropout_p=dropout_p
            )
            if cache is not None:
                cache.sample_t += x.shape[1]
        else:
            q, k, v = self.c_attn(x).chunk(3, dim=-1)  # (B, T, n_state) each
            a = self._attend(q, k, v, dropout_p) if cache is None else self._attend_cached(q, k, v, cache)
        return self.resid_dropout(self.c_proj(a))

    def attention_weights(self, x: torch.Tensor, encoder_states: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax weights (B, heads, T, S) of queries 0..T-1 over the keys a "cross" or "prime" layer reads.

        For lyric alignment (openai/jukebox ``align.py``): "cross" keys are the S encoder states; "prime"
        keys are the first S = min(T, prime keys) positions, masked causally. The weights are computed
        explicitly (SDPA does not return them), with SDPA's scale 1/sqrt(C / heads).
        """
        if self.pattern == "cross":
            q = self.c_attn(x)
            k, _ = self._encoder_kv(encoder_states, None)
            mask = None
        elif self.pattern == "prime":
            q, k, _ = self.c_attn(x).chunk(3, dim=-1)
            k = k[:, : self.n_prime_keys]
            mask = causal_mask(q.shape[1], k.shape[1], 0, q.device)
        else:
            raise ValueError(f"attention weights are read from 'cross' or 'prime' layers; this one is {self.pattern!r}")
        b, t, c = q.shape
        q = q.reshape(b, t, self.heads, c // self.heads).transpose(1, 2)  # (B, heads, T, C / heads)
        k = k.reshape(b, k.shape[1], self.heads, c // self.heads).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(c // self.heads)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1)

    def _encoder_kv(self, encoder_states: torch.Tensor | None, cache: KVCache | None) -> tuple[torch.Tensor, ...]:
        if cache is not None and cache.key is not None:
            return cache.key, cache.value
        if encoder_states is None:
            raise ValueError("'cross' attention needs encoder_states (B, S, encoder_width)")
        key, value = self.c_enc_kv(encoder_states).chunk(2, dim=-1)  # (B, S, n_state) each
        if cache is not None:  # the encoder states do not change while sampling: project them once
            cache.set(key, value)
        return key, value

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """The pattern over positions 0..T-1 (or a window that starts at a block boundary): (B, T, n_state)."""
        if self.pattern == "prime":
            return prime_attention(q, k, v, self.heads, self.n_prime_keys, dropout_p)
        if self.pattern == "dense":  # causal attention over every earlier position (Jukebox attn_func 0)
            return multihead_sdpa(q, k, v, self.heads, is_causal=True, dropout_p=dropout_p)
        t = q.shape[1]
        # Causal patterns: padding at the end is seen only by padding, so short sequences pad to whole blocks.
        pad = -t % self.block_ctx
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        return FACTORIZED_FUNCTIONS[self.pattern](q, k, v, self.heads, self.block_ctx, dropout_p)[:, :t]

    def _cache_start(self, sample_t: int) -> int:
        """The first position that positions >= sample_t can still see (prime keys are capped separately)."""
        if self.pattern == "block":
            return sample_t - sample_t % self.block_ctx
        if self.pattern == "prev_block":
            return max(sample_t // self.block_ctx - 1, 0) * self.block_ctx
        return 0

    def _attend_cached(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Queries at positions t0..t0+T-1 over the cached keys plus their own; updates the cache."""
        t0, t = cache.sample_t, q.shape[1]
        start = self._cache_start(t0)  # the cache holds positions start..t0-1
        if self.pattern == "prime":  # positions past the prime keys are never read: not kept
            keep = max(min(t, self.n_prime_keys - t0), 0)
            k, v = k[:, :keep], v[:, :keep]
        if k.shape[1]:
            cache.append(k, v)
        k, v = cache.key, cache.value  # positions start..t0+T-1 (prime: at most the prime keys)
        if self.pattern in ("dense", "prime"):
            a = multihead_sdpa(q, k, v, self.heads, attn_mask=causal_mask(t, k.shape[1], t0, q.device))
        elif t == 1:
            a = self._attend_one(q, k, v, t0)
        elif self.pattern == "transpose_block":
            a = self._attend_columns(q, k, v, t0)
        else:
            # block / prev_block: the window start..t0+T-1 begins at a block boundary and spans a few blocks;
            # pad the queries back to it and run the full-sequence pattern; the padded queries are dropped.
            offset = t0 - start
            a = self._attend(F.pad(q, (0, 0, offset, 0)), k, v)[:, offset:]
        cache.drop(self._cache_start(t0 + t) - start)
        cache.sample_t = t0 + t
        return a

    def _attend_one(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t0: int) -> torch.Tensor:
        """The query at position t0 (B, 1, n_state) over exactly the keys it sees: no padding, no mask."""
        if self.pattern == "block":  # the cache holds this block's start..t0
            return multihead_sdpa(q, k, v, self.heads)
        if self.pattern == "transpose_block":  # this offset in every block so far
            column = slice(t0 % self.block_ctx, None, self.block_ctx)
            return multihead_sdpa(q, k[:, column], v[:, column], self.heads)
        if t0 < self.block_ctx:  # prev_block in the first block: zero keys and values give 0
            return torch.zeros_like(q)
        return multihead_sdpa(q, k[:, : self.block_ctx], v[:, : self.block_ctx], self.heads)  # the whole previous block

    def _columns(self, x: torch.Tensor, positions: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """Keys (B, S, C) -> for each query position, its column: (B * len(positions), n_blocks, C)."""
        b, s, c = x.shape
        x = F.pad(x, (0, 0, 0, n_blocks * self.block_ctx - s)).reshape(b, n_blocks, self.block_ctx, c)
        x = x[:, :, positions % self.block_ctx]  # (B, n_blocks, n, C)
        return x.transpose(1, 2).reshape(b * len(positions), n_blocks, c)

    def _attend_columns(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t0: int) -> torch.Tensor:
        """transpose_block for a chunk of queries at t0..t0+T-1 over the keys of positions 0..t0+T-1.

        Each query gathers its own column (one key per block so far), so the work is T x blocks rather than
        the whole history's columns; chunks longer than a block go block by block to bound the gather.
        """
        b, t, c = q.shape
        if t0 == 0:
            return self._attend(q, k, v)
        outputs = []
        for first in range(0, t, self.block_ctx):
            queries = q[:, first : first + self.block_ctx]
            n, end = queries.shape[1], t0 + first + queries.shape[1]  # keys of positions 0..end-1
            n_blocks = -(-end // self.block_ctx)
            positions = torch.arange(t0 + first, end, device=q.device)
            keys, values = (self._columns(x[:, :end], positions, n_blocks) for x in (k, v))
            visible = torch.arange(n_blocks, device=q.device)[None, :] <= (positions // self.block_ctx)[:, None]
            mask = visible[None, :, None, :].expand(b, n, 1, n_blocks).reshape(b * n, 1, 1, n_blocks)
            a = multihead_sdpa(queries.reshape(b * n, 1, c), keys, values, self.heads, attn_mask=mask)
            outputs.append(a.reshape(b, n, c))
        return torch.cat(outputs, dim=1)
