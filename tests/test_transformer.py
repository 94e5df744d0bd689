"""Factorized attention, its KV cache and the Jukebox transformer (``jukebox_pl.modules.attention/transformer``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jukebox_pl.modules.attention import (
    JUKEBOX_ATTN_FUNCS,
    PATTERNS,
    Attention,
    KVCache,
    explicit_mask,
    prime_key_len,
    resolve_pattern,
)
from jukebox_pl.modules.transformer import (
    PositionEmbedding,
    ResAttnBlock,
    Transformer,
    layer_patterns,
    quick_gelu,
)

WIDTH, HEADS, N_CTX, BLOCKS, PRIME_LEN, N_ENCODER = 16, 2, 24, 4, 5, 7  # block_ctx 6, prime keys 8
CHUNKS = (5, 1, 7, 3, 8)  # a prime that ends mid-block, single tokens, chunks across block boundaries


def make_attention(pattern: str, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(WIDTH, N_CTX, HEADS, pattern, blocks=BLOCKS, attn_mult=1.0, prime_len=PRIME_LEN).eval()


def inputs(pattern: str, seed: int, length: int = N_CTX) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, length, WIDTH, generator=generator)
    encoder_states = torch.randn(2, N_ENCODER, WIDTH, generator=generator) if pattern == "cross" else None
    return x, encoder_states


def softmax_attention(q, k, v, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain masked softmax attention; a query with no visible key outputs 0 (Jukebox's zero block)."""
    b, tq, c = q.shape

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, x.shape[1], heads, c // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // heads)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
    return (weights @ split(v)).transpose(1, 2).reshape(b, tq, c)


def decode_in_steps(model, x, encoder_states, steps, cache):
    outputs, start = [], 0
    for n in steps:
        outputs.append(model(x[:, start : start + n], encoder_states, cache))
        start += n
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_outputs_do_not_depend_on_later_inputs(pattern: str) -> None:
    attn = make_attention(pattern)
    x, encoder_states = inputs(pattern, seed=1)
    t = 9
    changed = x.clone()
    changed[:, t + 1 :] = torch.randn(changed[:, t + 1 :].shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before, after = attn(x, encoder_states), attn(changed, encoder_states)
    assert torch.equal(before[:, : t + 1], after[:, : t + 1])
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])


@pytest.mark.parametrize("length", [N_CTX, 17])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_equals_softmax_attention_under_its_explicit_mask(pattern: str, length: int) -> None:
    attn = make_attention(pattern, seed=3)
    x, encoder_states = inputs(pattern, seed=4, length=length)
    with torch.no_grad():
        if pattern == "cross":
            q, (k, v) = attn.c_attn(x), attn.c_enc_kv(encoder_states).chunk(2, dim=-1)
            mask = explicit_mask(pattern, length, n_encoder=N_ENCODER)
        else:
            q, k, v = attn.c_attn(x).chunk(3, dim=-1)
            mask = explicit_mask(pattern, N_CTX, BLOCKS, PRIME_LEN)[:length, :length]
        expected = attn.c_proj(softmax_attention(q, k, v, mask, HEADS))
        actual = attn(x, encoder_states)
    assert (actual - expected).abs().max() < 1e-5


def test_explicit_masks_draw_jukebox_rows_columns_and_previous_rows() -> None:
    # n_ctx 8 in 2 blocks of 4: position 5 is offset 1 of block 1.
    assert explicit_mask("block", 8, 2)[5].nonzero().flatten().tolist() == [4, 5]
    assert explicit_mask("transpose_block", 8, 2)[5].nonzero().flatten().tolist() == [1, 5]
    assert explicit_mask("prev_block", 8, 2)[5].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert not explicit_mask("prev_block", 8, 2)[:4].any()
    assert explicit_mask(0, 8)[5].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("steps", [(1,) * N_CTX, CHUNKS], ids=["one_token_at_a_time", "chunks"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_cached_decoding_equals_the_full_pass(pattern: str, steps: tuple[int, ...]) -> None:
    attn = make_attention(pattern, seed=5)
    x, encoder_states = inputs(pattern, seed=6)
    with torch.no_grad():
        full = attn(x, encoder_states)
        stepped = decode_in_steps(attn, x, encoder_states, steps, KVCache())
    assert (full - stepped).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("pattern", "kept"),
    [("dense", 17), ("block", 5), ("transpose_block", 17), ("prev_block", 11), ("prime", 8), ("cross", N_ENCODER)],
)
def test_cache_keeps_only_the_keys_later_positions_can_see(pattern: str, kept: int) -> None:
    # After 17 positions (block_ctx 6): block 2 holds 12..16, its previous block 6..11.
    attn = make_attention(pattern)
    x, encoder_states = inputs(pattern, seed=7)
    cache = KVCache()
    with torch.no_grad():
        decode_in_steps(attn, x, encoder_states, (10, 1, 6), cache)
    assert cache.sample_t == 17
    assert cache.key.shape == cache.value.shape == (2, kept, WIDTH)


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Non-zero weights everywhere, so that zero-initialised (cross) layers take part in the comparison."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


@pytest.mark.parametrize(("attn_order", "depth"), [(6, 4), (12, 16)])
def test_transformer_cached_decoding_equals_the_full_pass_for_mixed_orders(attn_order: int, depth: int) -> None:
    torch.manual_seed(8)
    model = Transformer(WIDTH, N_CTX, HEADS, depth, attn_order, blocks=BLOCKS, prime_len=PRIME_LEN).eval()
    randomize_(model, seed=9)
    x, encoder_states = inputs("cross" if attn_order == 6 else "dense", seed=10)
    with torch.no_grad():
        full = model(x, encoder_states)
        stepped = decode_in_steps(model, x, encoder_states, CHUNKS, model.new_caches())
        tokens = decode_in_steps(model, x, encoder_states, (1,) * N_CTX, model.new_caches())
    assert (full - stepped).abs().max() < 1e-4
    assert (full - tokens).abs().max() < 1e-4


@pytest.mark.parametrize("pattern", ["block", "transpose_block", "prev_block"])
def test_factorized_patterns_never_attend_over_the_whole_context(pattern: str, monkeypatch: pytest.MonkeyPatch) -> None:
    n_ctx, blocks = 48, 4  # block_ctx 12: key lengths must stay <= 12
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append((k.shape[-2], attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.manual_seed(11)
    attn = Attention(WIDTH, n_ctx, HEADS, pattern, blocks=blocks).eval()
    x = torch.randn(2, n_ctx, WIDTH, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        attn(x)
        decode_in_steps(attn, x, None, (7, 1, 1, 20, 19), KVCache())
    assert len(calls) >= 4  # the full pass, and the cached chunks and steps
    # No call sees more than a block's worth of keys; a mask, where one is needed (columns of a chunk), is
    # one query per row over at most a block of keys, never (n_ctx, n_ctx).
    assert all(keys <= n_ctx // blocks for keys, _ in calls)
    assert all(mask is None or mask.shape[-2:] == (1, keys) for keys, mask in calls)


def test_block_parameter_count_matches_the_jukebox_formula() -> None:
    width, attn_mult, mlp_mult = 48, 0.25, 1.0
    block = ResAttnBlock(width, n_ctx=32, heads=4, pattern="block", blocks=4, attn_mult=attn_mult, mlp_mult=mlp_mult)
    n_state, n_mlp = int(width * attn_mult), int(width * mlp_mult)
    attention = width * 3 * n_state + 3 * n_state + n_state * width + width
    mlp = width * n_mlp + n_mlp + n_mlp * width + width
    assert sum(p.numel() for p in block.parameters()) == attention + mlp + 4 * width


def test_quick_gelu_is_x_times_sigmoid_of_1_702_x() -> None:
    x = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    expected = torch.tensor([-0.0643414, 0.0, 0.8457958, 2.9819287])  # x / (1 + exp(-1.702 x))
    assert torch.allclose(quick_gelu(x), expected, atol=1e-6)


def test_checkpointing_blocks_gives_the_same_gradients() -> None:
    grads = []
    for checkpoint_blocks in (False, True):
        torch.manual_seed(13)
        model = Transformer(WIDTH, N_CTX, HEADS, 3, attn_order=2, blocks=BLOCKS, checkpoint_blocks=checkpoint_blocks)
        x = torch.randn(2, N_CTX, WIDTH, generator=torch.Generator().manual_seed(14), requires_grad=True)
        model(x).square().mean().backward()
        grads.append([x.grad, *(p.grad for p in model.parameters())])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


def test_attn_orders_follow_the_jukebox_presets() -> None:
    assert layer_patterns(2, 4) == ["block", "transpose_block", "prev_block", "block"]
    lyrics_5b = layer_patterns(10, 79)  # prior_5b_lyrics: a cross attention every 10th layer from layer 18
    assert [i for i, p in enumerate(lyrics_5b) if p == "cross"] == list(range(18, 79, 10))
    lyrics_1b = layer_patterns(12, 72)  # prior_1b_lyrics, alignment_layer 63 is a prime layer
    assert {i: lyrics_1b[i] for i in (15, 31, 47, 63)} == {15: "prime", 31: "prime", 47: "dense", 63: "prime"}
    assert layer_patterns(12, 72)[:3] == ["block", "transpose_block", "prev_block"]
    with pytest.raises(ValueError, match="valid orders"):
        layer_patterns(4, 2)


def test_cross_attention_layers_start_at_zero() -> None:
    model = Transformer(WIDTH, N_CTX, HEADS, 4, attn_order=6, blocks=BLOCKS)
    cross = model.blocks[3]
    assert model.patterns[3] == "cross"
    assert not cross.attn.c_proj.weight.any() and not cross.mlp.c_proj.weight.any()
    assert model.blocks[0].attn.c_proj.weight.any()


def test_prime_keys_round_past_a_multiple_of_blocks_as_jukebox() -> None:
    assert prime_key_len(384, 64) == 448  # prior_1b_lyrics: 384 lyric tokens, 64 blocks
    assert prime_key_len(PRIME_LEN, BLOCKS) == 8


def test_patterns_are_named_by_string_or_jukebox_id() -> None:
    assert [resolve_pattern(i) for i in JUKEBOX_ATTN_FUNCS] == list(JUKEBOX_ATTN_FUNCS.values())
    with pytest.raises(ValueError, match="valid ids"):
        resolve_pattern(4)
    with pytest.raises(ValueError, match="transpose_block"):
        resolve_pattern("column")


def test_position_embedding_slices_from_the_sampling_position() -> None:
    embedding = PositionEmbedding(N_CTX, WIDTH)
    assert torch.equal(embedding(1, start=5), embedding(N_CTX)[5:6])
