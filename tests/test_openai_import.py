"""Importing OpenAI's released Jukebox weights, on tiny random state dicts in OpenAI's exact names and shapes.

The key names and shapes in ``tests/data/openai/*_tiny.json`` were listed from openai/jukebox's own
modules built at the tiny sizes of `TINY` (a VQ-VAE of width 8, priors of width 16). Each tiny model
is the released row of hparams.py with smaller sizes, described as openai/jukebox describes models
(``vqvae,upsampler_level_0,n_ctx=32,...``), so the import reads it through the same table as the
released files. The tests fill the shapes with random numbers, import them, and compare what the
imported models compute with OpenAI's computation, restated here from openai/jukebox
(``vqvae/encdec.py``, ``vqvae/resnet.py``, ``vqvae/bottleneck.py``, ``transformer/factored_attention.py``,
``transformer/transformer.py``, ``prior/autoregressive.py``, ``prior/conditioners.py``, ``prior/prior.py``)
with the released hyper-parameters stated in the tests, not read from the table.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from jukebox_pl.checkpoints.export import CheckpointError, load, load_vocabularies
from jukebox_pl.checkpoints.openai import import_model, read_ids, read_state_dict, to_openai, to_ours
from jukebox_pl.checkpoints.openai_hparams import (
    HparamsError,
    parse_hps,
    prior_spec,
    released_spec,
    setup_hparams,
    vqvae_spec,
)
from jukebox_pl.cli import main
from jukebox_pl.errors import UntrustedCodeError
from jukebox_pl.modules.transformer import ResAttnBlock
from jukebox_pl.registry import build

DATA = Path(__file__).parent / "data" / "openai"
TINY_VQVAE = "width=8,depth=2,emb_width=8,l_bins=32"
TINY_PRIOR = f"{TINY_VQVAE},n_ctx=32,prior_width=16,heads=2,blocks=4"
TINY_UPSAMPLER = f"{TINY_PRIOR},prior_depth=4,cond_width=8,cond_depth=2"
# Each tiny model: (its description in openai/jukebox's hyper-parameters, the file of its names and shapes).
# The two upsamplers have the same names and shapes: hparams.py builds both from `upsamplers`, and each
# conditioner upsamples the level above by 2 ** 2 (downs_t[level + 1] = 2), so the level-1 file serves both.
TINY = {
    "vqvae": (f"vqvae,{TINY_VQVAE}", "vqvae"),
    "prior_5b": (f"vqvae,prior_5b,{TINY_PRIOR},prior_depth=4", "prior_5b"),
    "prior_5b_lyrics": (f"vqvae,prior_5b_lyrics,{TINY_PRIOR},prior_depth=20,n_tokens=8,prime_width=8,"
                        "prime_depth=2,prime_heads=2,prime_blocks=4", "prior_5b_lyrics"),
    "prior_1b_lyrics": (f"vqvae,prior_1b_lyrics,{TINY_PRIOR},prior_depth=16,n_tokens=8", "prior_1b_lyrics"),
    "upsampler_level_1": (f"vqvae,upsampler_level_1,{TINY_UPSAMPLER}", "upsampler_level_1"),
    "upsampler_level_0": (f"vqvae,upsampler_level_0,{TINY_UPSAMPLER}", "upsampler_level_1"),
}  # fmt: skip
TIED = {"prior_1b_lyrics", "upsampler_level_1", "upsampler_level_0"}  # x_out is x_emb (merged_decoder false)


def spec(name: str) -> dict:
    hps = setup_hparams(TINY[name][0])
    return vqvae_spec(hps) if name == "vqvae" else prior_spec(hps)


def openai_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under OpenAI's names and shapes for the tiny `name` model."""
    shapes = json.loads((DATA / f"{TINY[name][1]}_tiny.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(shape, generator=generator) * 0.1 for key, shape in shapes.items()}
    if name in TIED:
        state["prior.x_out.weight"] = state["prior.x_emb.weight"]
    return state


def write_ids(folder: Path) -> Path:
    for version in ("v2", "v3"):
        (folder / f"{version}_artist_ids.txt").write_text("unknown;0\nella fitzgerald;1\nnina simone;2\n")
        (folder / f"{version}_genre_ids.txt").write_text("unknown;0\njazz;1\nsoul;2\n")
    return folder


def imported(name: str, tmp_path: Path, seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The tiny `name` model written as OpenAI's file, imported by `import_model` and loaded back."""
    source = openai_state(name, seed)
    weights = tmp_path / f"{name}.pth.tar"
    torch.save({"model": source}, weights)
    part = "vqvae" if name == "vqvae" else "prior"
    folder = import_model(part, weights, tmp_path / name, TINY[name][0], write_ids(tmp_path))
    return load(folder), source


@pytest.mark.parametrize("name", list(TINY))
def test_every_tensor_lands_where_it_should_and_exports_back_unchanged(name: str) -> None:
    source = openai_state(name)
    module = build(None, spec(name)).eval()
    module.load_state_dict(to_ours(module, source, name))
    back = to_openai(module)
    assert set(back) == set(source)
    for key, tensor in source.items():
        assert torch.equal(back[key], tensor), key


def test_an_incomplete_or_foreign_state_dict_is_one_error_listing_every_problem() -> None:
    source = openai_state("prior_5b")
    del source["prior.transformer._attn_mods.1.ln_0.weight"]
    source["prior.transformer._attn_mods.9.ln_0.weight"] = torch.zeros(16)
    source["prior.x_emb.weight"] = torch.zeros(33, 16)
    module = build(None, spec("prior_5b"))
    with pytest.raises(CheckpointError) as caught:
        to_ours(module, source, "prior_level_2.pth.tar")
    message = str(caught.value)
    assert "(3 problems)" in message
    assert "missing prior.transformer._attn_mods.1.ln_0.weight" in message
    assert "unexpected prior.transformer._attn_mods.9.ln_0.weight" in message
    assert "prior.x_emb.weight: shape (33, 16) does not fit our x_emb.weight (32, 16)" in message
    tied = openai_state("prior_1b_lyrics")
    tied["prior.x_out.weight"] = tied["prior.x_out.weight"] + 1
    with pytest.raises(CheckpointError, match="x_out.weight differs from prior.x_emb.weight"):
        to_ours(build(None, spec("prior_1b_lyrics")), tied, "prior_level_2.pth.tar")


# ------------------------------------------------------------------- OpenAI's computation, restated
def res_unit(x: torch.Tensor, s: dict, prefix: str, dilation: int, scale: float = 1.0) -> torch.Tensor:
    """openai/jukebox ResConv1DBlock: x + res_scale * conv1x1(relu(conv3_dilated(relu(x))))."""
    h = F.conv1d(F.relu(x), s[f"{prefix}.model.1.weight"], s[f"{prefix}.model.1.bias"], padding=dilation,
                 dilation=dilation)  # fmt: skip
    return x + scale * F.conv1d(F.relu(h), s[f"{prefix}.model.3.weight"], s[f"{prefix}.model.3.bias"])


DOWNS, GROWTH, DEPTHS = (3, 2, 2), 3, (4, 2, 2)  # hparams.py vqvae: downs_t, dilation growth; depth 2 x (2, 1, 1)


def openai_encode(s: dict, audio: torch.Tensor, level: int) -> torch.Tensor:
    """Encoder of `level`: per stage, EncoderConvBlock = (conv k4 s2 p1, Resnet1D) x down_t, then conv k3."""
    x, depth = audio, DEPTHS[level]
    for stage in range(level + 1):
        prefix = f"encoders.{level}.level_blocks.{stage}.model"
        for step in range(DOWNS[stage]):
            x = F.conv1d(x, s[f"{prefix}.{step}.0.weight"], s[f"{prefix}.{step}.0.bias"], stride=2, padding=1)
            for unit in range(depth):
                x = res_unit(x, s, f"{prefix}.{step}.1.model.{unit}", GROWTH**unit)
        x = F.conv1d(x, s[f"{prefix}.{DOWNS[stage]}.weight"], s[f"{prefix}.{DOWNS[stage]}.bias"], padding=1)
    return x


def openai_quantise(s: dict, latents: torch.Tensor, level: int) -> torch.Tensor:
    """BottleneckBlock.quantise: the nearest codebook row by |x|^2 - 2 x.k + |k|^2."""
    k = s[f"bottleneck.level_blocks.{level}.k"]
    x = latents.permute(0, 2, 1).reshape(-1, k.shape[1])
    distance = (x**2).sum(-1, keepdim=True) - 2 * x @ k.t() + (k.t() ** 2).sum(0, keepdim=True)
    return distance.argmin(-1).view(latents.shape[0], -1)


def openai_decode(s: dict, codes: torch.Tensor, level: int) -> torch.Tensor:
    """Decoder of `level` (all_levels=False): stages from the deepest, each DecoderConvBock = conv k3, then
    (Resnet1D with reversed dilations, convT k4 s2 p1) x down_t; then the output conv."""
    x, depth = F.embedding(codes, s[f"bottleneck.level_blocks.{level}.k"]).permute(0, 2, 1), DEPTHS[level]
    for stage in reversed(range(level + 1)):
        prefix = f"decoders.{level}.level_blocks.{stage}.model"
        x = F.conv1d(x, s[f"{prefix}.0.weight"], s[f"{prefix}.0.bias"], padding=1)
        for step in range(1, DOWNS[stage] + 1):
            for unit in range(depth):
                x = res_unit(x, s, f"{prefix}.{step}.0.model.{unit}", GROWTH ** (depth - 1 - unit))
            x = F.conv_transpose1d(x, s[f"{prefix}.{step}.1.weight"], s[f"{prefix}.{step}.1.bias"], stride=2, padding=1)
    return F.conv1d(x, s[f"decoders.{level}.out.weight"], s[f"decoders.{level}.out.bias"], padding=1)


def test_an_imported_vqvae_encodes_and_decodes_every_level_as_openais(tmp_path: Path) -> None:
    vqvae, s = imported("vqvae", tmp_path, seed=1)
    audio = torch.randn(2, 1, 512, generator=torch.Generator().manual_seed(2))
    codes = vqvae.encode(audio)
    with torch.no_grad():
        for level in range(3):
            latents = openai_encode(s, audio, level)
            assert torch.allclose(vqvae.encoders[level](audio), latents, atol=1e-5)
            assert torch.equal(codes[level], openai_quantise(s, latents, level))
            assert torch.allclose(vqvae.decode(codes[level], level), openai_decode(s, codes[level], level), atol=1e-5)


def pattern_mask(pattern: int, n: int, block_ctx: int, prime_keys: int = 0) -> torch.Tensor:
    """Which keys each query sees, from openai/jukebox's attention functions (ids 0, 1, 2, 3, 7)."""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return {
        0: j <= i,
        1: (j <= i) & (j // block_ctx == i // block_ctx),
        2: (j <= i) & (j % block_ctx == i % block_ctx),
        3: j // block_ctx == i // block_ctx - 1,
        7: (j <= i) & (j < prime_keys),
    }[pattern]


def openai_block(
    x: torch.Tensor, s: dict, prefix: str, heads: int, mask: torch.Tensor | None, encoder=None
) -> torch.Tensor:
    """ResAttnBlock of openai/jukebox: a = attn(ln_0(x)); m = mlp(ln_1(x + a)); x + a + m (Conv1D: x @ w + b).

    res_scale is 1: hparams.py `prior_attn_block` and `prime_attn_block` keep res_scale False, and no
    released model sets it.
    """

    def conv1d(h, name):
        return h @ s[f"{prefix}.{name}.w"] + s[f"{prefix}.{name}.b"]

    def ln(h, name):  # LayerNorm, eps 1e-5
        return F.layer_norm(h, h.shape[-1:], s[f"{prefix}.{name}.weight"], s[f"{prefix}.{name}.bias"], 1e-5)

    h = ln(x, "ln_0")
    if encoder is None:
        q, k, v = conv1d(h, "attn.c_attn").chunk(3, dim=-1)
    else:  # cross attention: keys and values from the encoder states
        q = conv1d(h, "attn.c_attn")
        k, v = (encoder @ s[f"{prefix}.attn.c_enc_kv.w"] + s[f"{prefix}.attn.c_enc_kv.b"]).chunk(2, dim=-1)

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    scale = 1 / math.sqrt(math.sqrt(q.shape[-1]))  # Jukebox scales q and k by d^-1/4 each
    w = (q * scale) @ (k * scale).transpose(-1, -2)
    if mask is not None:
        w = w.masked_fill(~mask, -1e9)
    w = w.softmax(-1)
    if mask is not None:
        w = w * mask.any(-1, keepdim=True)  # a query that sees nothing (prev_block, first block) gets zeros
    a = (w @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    a = conv1d(a, "attn.c_proj")
    hidden = conv1d(ln(x + a, "ln_1"), "mlp.c_fc")
    m = conv1d(hidden * torch.sigmoid(1.702 * hidden), "mlp.c_proj")  # quick-GELU
    return x + a + m


# openai/jukebox transformer.py: attn_order -> the attention function of layer d.
ATTN_FUNCS = {
    2: lambda d: [1, 2, 3][d % 3],
    10: lambda d: [*[1, 2, 3] * 3, *([1, 2, 3] * 3 + [6]) * 7][d % 79],
    12: lambda d: [7, 7, 0][d % 3] if d % 16 == 15 else [1, 2, 3][d % 3],
}


def openai_transformer(x, s, prefix, attn_order, depth, heads, blocks, prime_len=0, encoder=None) -> torch.Tensor:
    n = x.shape[1]
    prime_keys = (prime_len // blocks + 1) * blocks  # FactoredAttention._prime_len
    for d in range(depth):
        function = ATTN_FUNCS[attn_order](d)
        mask = None if function == 6 else pattern_mask(function, n, n // blocks, prime_keys)
        x = openai_block(x, s, f"{prefix}._attn_mods.{d}", heads, mask, encoder if function == 6 else None)
    return x


def openai_autoregressive(s, prefix, tokens, start, x_cond, add_cond_after, **transformer) -> torch.Tensor:
    """ConditionalAutoregressive2D.forward up to x_out: tokens embedded and rolled by one behind the start
    vector, + pos_emb + x_cond, the transformer, and x_cond again unless merged_decoder."""
    x = F.embedding(tokens, s[f"{prefix}.x_emb.weight"])
    x = torch.cat([start, x[:, :-1]], dim=1) + s[f"{prefix}.pos_emb.pos_emb"] + x_cond
    x = openai_transformer(x, s, f"{prefix}.transformer", **transformer)
    return x + x_cond if add_cond_after else x


def openai_labels(s, artist, genres, timing, n_time, durations=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """LabelConditioner: artist + bag of genres (padding -1 ignored) as the start vector; the three binned
    RangeEmbeddings of total length, absolute and relative position when there is a time signal."""
    genre = torch.stack([s["y_emb.bow_genre_emb.emb.weight"][g[g >= 0]].sum(0) for g in genres])
    start = (s["y_emb.artist_emb.emb.weight"][artist] + genre)[:, None]
    if durations is None:
        return start, None
    (low, high, bins), sr = durations, 44100

    def range_emb(name, first, last, pos_min, pos_max, n):
        position = first[:, None] + (last - first)[:, None] * (torch.arange(n) / n)
        return s[f"y_emb.{name}.emb.weight"][(bins * ((position - pos_min) / (pos_max - pos_min))).floor().long()]

    total, offset, length = (timing[:, i].float() for i in range(3))
    end = offset + length
    positions = (
        range_emb("total_length_emb", total, total, low * sr, high * sr, 1)
        + range_emb("absolute_pos_emb", offset, end, 0.0, high * sr, n_time)
        + range_emb("relative_pos_emb", offset / total, (end / total).clamp(0, 1), 0.0, 1.0, n_time)
    )
    return start, positions


def openai_conditioner(s, upper_codes, res_scale) -> torch.Tensor:
    """Conditioner: x_emb of the upper codes, DecoderConvBock (conv k3; (Resnet1D, convT k4 s2 p1) x 2, the
    dilations not reversed, cycle 8, units named blocks.U since cond_c_res=1), LayerNorm."""
    p, depth = "conditioner_blocks.0", 2
    x = F.embedding(upper_codes, s[f"{p}.x_emb.weight"]).permute(0, 2, 1)
    x = F.conv1d(x, s[f"{p}.cond.model.0.weight"], s[f"{p}.cond.model.0.bias"], padding=1)
    for step in (1, 2):
        for unit in range(depth):
            scale = 1 / math.sqrt(depth) if res_scale else 1.0  # Resnet1D: res_scale 1/sqrt(n_depth) when on
            x = res_unit(x, s, f"{p}.cond.model.{step}.0.blocks.{unit}", 3 ** (unit % 8), scale)
        x = F.conv_transpose1d(x, s[f"{p}.cond.model.{step}.1.weight"], s[f"{p}.cond.model.{step}.1.bias"],
                               stride=2, padding=1)  # fmt: skip
    x = x.permute(0, 2, 1)
    return F.layer_norm(x, x.shape[-1:], s[f"{p}.ln.weight"], s[f"{p}.ln.bias"], 1e-5)


# hparams.py: (min_duration, max_duration, t_bins) of the top priors' time signal.
DURATIONS = {
    "prior_5b": (60.0, 600.0, 128),
    "prior_5b_lyrics": (23.8, 600.0, 128),
    "prior_1b_lyrics": (17.84, 600.0, 64),
}
# hparams.py: cond_res_scale=True in upsampler_level_1 only; upsampler_level_0 keeps cond_conv_block's False.
COND_RES_SCALE = {"upsampler_level_1": True, "upsampler_level_0": False}
N_CTX, WIDTH, HEADS, BLOCKS, LYRIC_TOKENS = 32, 16, 2, 4, 8


def openai_logits(name: str, s: dict, batch: dict) -> torch.Tensor:
    """SimplePrior.z_forward's logits for the tiny `name` prior (merged vocabulary first lyrics, then codes)."""
    codes, artist, genres = batch["codes"], batch["artist"], batch["genres"]
    transformer = {"heads": HEADS, "blocks": BLOCKS}
    if name.startswith("upsampler"):
        start, _ = openai_labels(s, artist, genres, None, N_CTX)
        x_cond = openai_conditioner(s, batch["upper_codes"], COND_RES_SCALE[name])
        x = openai_autoregressive(s, "prior", codes, start, x_cond, True, attn_order=2, depth=4, **transformer)
        return x @ s["prior.x_out.weight"].t()
    start, positions = openai_labels(s, artist, genres, batch["timing"], N_CTX, DURATIONS[name])
    if name == "prior_5b":  # merged_decoder: its own x_out, the conditioning only at the input
        x = openai_autoregressive(s, "prior", codes, start, positions, False, attn_order=2, depth=4, **transformer)
    elif name == "prior_5b_lyrics":  # the lyrics encoder's states, projected and normed, are the cross keys
        prime = batch["lyrics"]
        lyric_start = s["prime_prior.start_token"].expand(prime.shape[0], 1, -1)
        encoded = openai_autoregressive(s, "prime_prior", prime, lyric_start, 0.0, True, attn_order=2, depth=2,
                                        heads=2, blocks=4)  # fmt: skip
        encoder = F.layer_norm(encoded @ s["prime_state_proj.w"] + s["prime_state_proj.b"], (WIDTH,),
                               s["prime_state_ln.weight"], s["prime_state_ln.bias"], 1e-5)  # fmt: skip
        x = openai_autoregressive(s, "prior", codes, start, positions, False, attn_order=10, depth=20,
                                  encoder=encoder, **transformer)  # fmt: skip
    else:  # single_enc_dec: lyrics then codes shifted past the 79 lyric tokens
        return openai_merged_logits(s, torch.cat([batch["lyrics"], codes + 79], dim=1), start, positions)
    return x @ s["prior.x_out.weight"].t()


def openai_merged_logits(s: dict, tokens: torch.Tensor, start: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The 1B model's logits over its merged vocabulary for a merged sequence (prior_preprocess's output):
    no conditioning on the lyric positions, the time signal on the codes' (B, n_tokens + n_ctx, 79 + codes)."""
    x_cond = torch.cat([torch.zeros(tokens.shape[0], LYRIC_TOKENS, WIDTH), positions], dim=1)
    x = openai_autoregressive(s, "prior", tokens, start, x_cond, True, attn_order=12, depth=16,
                              prime_len=LYRIC_TOKENS, heads=HEADS, blocks=BLOCKS)  # fmt: skip
    return x @ s["prior.x_out.weight"].t()


def prior_batch(name: str, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    max_genres = 1 if name == "prior_1b_lyrics" else 5
    genres = torch.full((2, max_genres), -1)
    genres[0, 0], genres[1, :1] = 2, 1
    if max_genres > 1:
        genres[0, 1] = 119
    batch = {
        "codes": torch.randint(0, 32, (2, N_CTX), generator=generator),
        "artist": torch.tensor([1, 2]),
        "genres": genres,
        "timing": torch.tensor([[3_000_000, 441_000, N_CTX * 128], [2_700_000, 0, N_CTX * 128]]),
        "upper_codes": torch.randint(0, 32, (2, N_CTX // 4), generator=generator),
    }
    if name != "prior_5b":
        batch["lyrics"] = torch.randint(0, 79, (2, LYRIC_TOKENS), generator=generator)
    return batch


@pytest.mark.parametrize(
    "name", ["prior_5b", "prior_5b_lyrics", "prior_1b_lyrics", "upsampler_level_1", "upsampler_level_0"]
)
def test_an_imported_prior_gives_openais_logits(name: str, tmp_path: Path) -> None:
    prior, s = imported(name, tmp_path, seed=3)
    batch = prior_batch(name, seed=4)
    if not name.startswith("upsampler"):
        del batch["upper_codes"]
    with torch.no_grad():
        logits, _ = prior(batch)
        expected = openai_logits(name, s, batch)
    assert logits.shape == expected.shape
    assert torch.allclose(logits, expected, atol=1e-5), (logits - expected).abs().max()


def test_the_imported_lyrics_encoder_gives_openais_states_and_lyric_logits(tmp_path: Path) -> None:
    prior, s = imported("prior_5b_lyrics", tmp_path, seed=5)
    lyrics = prior_batch("prior_5b_lyrics", seed=6)["lyrics"]
    start = s["prime_prior.start_token"].expand(2, 1, -1)
    with torch.no_grad():
        states, lyric_logits = prior.lyrics(lyrics)
        encoded = openai_autoregressive(s, "prime_prior", lyrics, start, 0.0, True, attn_order=2, depth=2, heads=2,
                                        blocks=4)  # fmt: skip
        expected = F.layer_norm(encoded @ s["prime_state_proj.w"] + s["prime_state_proj.b"], (WIDTH,),
                                s["prime_state_ln.weight"], s["prime_state_ln.bias"], 1e-5)  # fmt: skip
    assert torch.allclose(states, expected, atol=1e-5)
    assert torch.allclose(lyric_logits, expected @ s["prime_x_out.weight"].t(), atol=1e-5)  # get_prime_loss


def test_merged_draws_are_openais_for_the_same_logits_and_random_stream(tmp_path: Path) -> None:
    prior, s = imported("prior_1b_lyrics", tmp_path, seed=8)
    batch = prior_batch("prior_1b_lyrics", seed=9)
    labels = {key: batch[key] for key in ("artist", "genres", "timing", "lyrics")}
    length, temperature, seed = 8, 0.9, 10
    codes = prior.sample(labels, length, temperature=temperature, generator=torch.Generator().manual_seed(seed),
                         draw_from="merged")  # fmt: skip
    # openai/jukebox primed_sample: per step the logits of the merged vocabulary / temp, Categorical(...).sample()
    # from the global random stream, the drawn token fed back as it is; prior_postprocess: clamp(token - 79, min=0).
    start, positions = openai_labels(
        s, batch["artist"], batch["genres"], batch["timing"], N_CTX, DURATIONS["prior_1b_lyrics"]
    )
    sequence = torch.cat([batch["lyrics"], torch.zeros(2, N_CTX, dtype=torch.long)], dim=1)
    torch.manual_seed(seed)
    with torch.no_grad():
        for position in range(LYRIC_TOKENS, LYRIC_TOKENS + length):
            logits = openai_merged_logits(s, sequence, start, positions)[:, position]
            sequence[:, position] = torch.distributions.Categorical(logits=logits / temperature).sample()
    drawn = sequence[:, LYRIC_TOKENS : LYRIC_TOKENS + length]
    assert (drawn < 79).any() and (drawn >= 79).any()  # lyric tokens were drawn, and codes
    assert torch.equal(codes, (drawn - 79).clamp(min=0))
    default = prior.sample(labels, length, temperature=temperature, generator=torch.Generator().manual_seed(seed))
    assert not torch.equal(default, codes)  # drawing only among the codes takes other draws


@pytest.mark.parametrize(
    ("name", "layer", "pattern"),
    [
        ("prior_5b", 0, 1),
        ("prior_5b", 1, 2),
        ("prior_5b", 2, 3),
        ("prior_5b_lyrics", 18, 6),
        ("prior_1b_lyrics", 15, 7),
    ],
)
def test_imported_transformer_blocks_compute_openais_attention(name: str, layer: int, pattern: int) -> None:
    source = openai_state(name, seed=3)
    module = build(None, spec(name)).eval()
    module.load_state_dict(to_ours(module, source, name))
    prefix = f"prior.transformer._attn_mods.{layer}"
    generator = torch.Generator().manual_seed(4)
    n = module.n_tokens + module.n_ctx
    x = torch.randn(2, n, 16, generator=generator)
    encoder = torch.randn(2, 8, 16, generator=generator) if pattern == 6 else None
    mask = None if pattern == 6 else pattern_mask(pattern, n, n // 4, prime_keys=(8 // 4 + 1) * 4)
    with torch.no_grad():
        ours = module.transformer.blocks[layer](x, encoder)
        theirs = openai_block(x, source, prefix, heads=2, mask=mask, encoder=encoder)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_a_dense_block_imported_by_name_computes_openais_attention() -> None:
    block = ResAttnBlock(16, 32, 2, "dense").eval()
    generator = torch.Generator().manual_seed(5)
    names = {"ln_0": "ln_0", "ln_1": "ln_1", "attn.c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj",
             "mlp.c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}  # fmt: skip
    s = {}
    with torch.no_grad():
        for ours, theirs in names.items():
            layer = block.get_submodule(ours)
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.2)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.2)
            is_norm = ours.startswith("ln")
            s[f"b.{theirs}.{'weight' if is_norm else 'w'}"] = layer.weight if is_norm else layer.weight.t()
            s[f"b.{theirs}.{'bias' if is_norm else 'b'}"] = layer.bias
        x = torch.randn(2, 32, 16, generator=generator)
        assert torch.allclose(block(x), openai_block(x, s, "b", 2, pattern_mask(0, 32, 8)), atol=1e-5)


# ------------------------------------------------------------------------- the released hyper-parameters
def test_each_upsampler_states_its_own_conditioner_scaling() -> None:
    assert released_spec("upsampler_level_1")["upper"]["res_scale"] is True
    assert released_spec("upsampler_level_0")["upper"]["res_scale"] is False
    with torch.device("meta"):  # the released sizes: shapes only
        middle, bottom = build("prior", "upsampler"), build("prior", "upsampler_level_0")
    assert (middle.level, middle.hop_length, bottom.level, bottom.hop_length) == (1, 32, 0, 8)
    assert middle.upper.cond[1][0].scale == 0.25 and bottom.upper.cond[1][0].scale == 1.0  # 1/sqrt(cond_depth 16)


def test_hps_are_read_as_openai_jukebox_reads_them() -> None:
    names, values = parse_hps("small_vqvae,small_labelled_prior,level=1,labels=False,y_bins=(10,100),loss_fn=l2")
    assert names == ["small_vqvae", "small_labelled_prior"]
    assert values == {"level": 1, "labels": False, "y_bins": (10, 100), "loss_fn": "l2"}
    hps = setup_hparams("small_vqvae,small_prior,n_ctx=4096,level=1,labels=false")
    spec = prior_spec(hps)
    assert (spec["n_ctx"], spec["width"], spec["depth"], spec["codebook_size"], spec["hop_length"]) == (
        4096, 1024, 48, 1024, 256)  # fmt: skip
    assert "labels" not in spec and "upper" not in spec
    with pytest.raises(HparamsError, match="unknown openai/jukebox hyper-parameter set 'small_prio'.*small_prior"):
        setup_hparams("small_vqvae,small_prio")
    with pytest.raises(HparamsError, match="'n_cxt' is not an openai/jukebox hyper-parameter.*'n_ctx'"):
        setup_hparams("small_vqvae,small_prior,n_cxt=10")


# ------------------------------------------------------------------------------ files and ids
def test_a_pickle_that_would_run_code_is_refused_and_its_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    bad = tmp_path / "prior_level_2.pth.tar"
    bad.write_bytes(pickle.dumps({"model": {"prior.x_emb.weight": torch.zeros(2)}, "extra": Payload()}))
    with pytest.raises(CheckpointError, match="refused: the file holds more than tensors"):
        read_state_dict(bad)
    assert main(["import", "openai", "--model", "5b", "--prior", str(bad), "--ids", str(tmp_path),
                 "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_id_files_give_vocabularies_with_aliases_and_unused_ids(tmp_path: Path) -> None:
    ids = tmp_path / "v3_artist_ids.txt"
    ids.write_text("unknown;0\nvarious;0\n;0\nthe beatles;3\nbeatles;3\nella fitzgerald;1\nThe Beatles!;7\n")
    vocabulary = read_ids(ids, "artist")
    assert len(vocabulary) == 4 and vocabulary.id("The Beatles") == vocabulary.id("Beatles") == 3
    assert vocabulary.names[2] == "" and "Beatles" not in vocabulary.names and vocabulary.id("various") == 0
    (tmp_path / "bad.txt").write_text("unknown;0\nno separator here\n")
    with pytest.raises(CheckpointError, match="bad.txt:2: expected 'name;id'"):
        read_ids(tmp_path / "bad.txt", "artist")


@pytest.mark.parametrize("zip_format", [True, False])
def test_both_torch_file_formats_import_to_an_export_that_loads_with_its_vocabularies(
    zip_format: bool, tmp_path: Path
) -> None:
    source = openai_state("prior_1b_lyrics", seed=7)
    weights = tmp_path / "prior_level_2.pth.tar"
    torch.save({"model": source}, weights, _use_new_zipfile_serialization=zip_format)
    folder = import_model("prior", weights, tmp_path / "out", TINY["prior_1b_lyrics"][0], write_ids(tmp_path))
    assert folder == tmp_path / "out" / "prior"
    prior = load(folder)
    assert all(torch.equal(tensor, source[key]) for key, tensor in to_openai(prior).items())
    assert load_vocabularies(folder)["artists"].id("Nina Simone") == 2


# ------------------------------------------------------------------------------ custom sizes
def small_checkpoint(hps: str, path: Path, stored: bool = False) -> dict[str, torch.Tensor]:
    """A random checkpoint of the model `hps` describes, written in openai/jukebox's format."""
    values = setup_hparams(hps)
    module = build(None, prior_spec(values))
    state = to_openai(module, cond_c_res=bool(values["cond_c_res"]))
    torch.save({"model": state, **({"hps": {**values, "bs": 4, "name": "mine"}} if stored else {})}, path)
    return state


SMALL = "small_vqvae,small_prior,level=1,labels=false,n_ctx=64,prior_width=32,prior_depth=3,blocks=8"


def test_the_command_imports_a_checkpoint_of_its_own_size_described_by_hps(tmp_path: Path, run_cli) -> None:
    vqvae = build(None, vqvae_spec(setup_hparams("small_vqvae")))  # small_vqvae at its own size
    torch.save({"model": to_openai(vqvae)}, tmp_path / "vqvae.pth.tar")
    source = small_checkpoint(SMALL, tmp_path / "prior.pth.tar")
    code, out, err = run_cli("import", "openai", "--hps", SMALL, "--vqvae", tmp_path / "vqvae.pth.tar",
                             "--prior", tmp_path / "prior.pth.tar", "--out", tmp_path / "mine")  # fmt: skip
    assert code == 0, err
    assert f"-> {tmp_path / 'mine' / 'prior'}" in out
    prior, imported_vqvae = load(tmp_path / "mine" / "prior"), load(tmp_path / "mine" / "vqvae")
    assert (prior.level, prior.n_ctx, prior.hop_length, prior.codebook_size) == (1, 64, 256, 1024)
    assert all(torch.equal(tensor, source[key]) for key, tensor in to_openai(prior).items())
    assert imported_vqvae.hop_lengths == [32, 256] and imported_vqvae.sample_rate == 22050


def test_a_wrong_hps_is_one_error_listing_every_tensor_that_does_not_fit(tmp_path: Path, run_cli) -> None:
    small_checkpoint(SMALL, tmp_path / "prior.pth.tar")
    wrong = SMALL.replace("prior_width=32", "prior_width=24").replace("prior_depth=3", "prior_depth=4")
    code, _, err = run_cli("import", "openai", "--hps", wrong, "--prior", tmp_path / "prior.pth.tar",
                           "--out", tmp_path / "mine")  # fmt: skip
    assert code == 2 and err.count("error:") == 1
    assert "(described by small_vqvae,small_prior" in err
    for expected in ("prior.x_emb.weight: shape (1024, 32) does not fit our x_emb.weight (1024, 24)",
                     "prior.pos_emb.pos_emb: shape (64, 32)", "missing prior.transformer._attn_mods.3.ln_0.weight",
                     "prior.transformer._attn_mods.2.mlp.c_fc.w: shape (32, 32)"):  # fmt: skip
        assert expected in err
    assert not (tmp_path / "mine").exists()


def test_the_hps_a_checkpoint_stores_describe_it_and_place_an_upsampler(tmp_path: Path, run_cli) -> None:
    upsampler = "small_vqvae,small_upsampler,level=0,labels=false,n_ctx=64,prior_width=32,prior_depth=3,blocks=8"
    source = small_checkpoint(f"{upsampler},cond_width=16,cond_depth=2", tmp_path / "up.pth.tar", stored=True)
    code, _, err = run_cli("import", "openai", "--prior", tmp_path / "up.pth.tar", "--out", tmp_path / "mine")
    assert code == 0, err
    prior = load(tmp_path / "mine" / "upsampler_level_0")
    assert prior.upper.ratio == 8 and prior.hop_length == 32  # small_vqvae: hops 2**5, then 2**3 coarser
    assert all(torch.equal(tensor, source[key]) for key, tensor in to_openai(prior).items())
    torch.save({"model": source}, tmp_path / "bare.pth.tar")
    code, _, err = run_cli("import", "openai", "--prior", tmp_path / "bare.pth.tar", "--out", tmp_path / "bare")
    assert code == 2 and "holds no hyper-parameters ('hps'); describe the model with --hps" in err


@pytest.mark.slow
def test_a_small_prior_at_its_own_size_imports_with_its_hps(tmp_path: Path, run_cli) -> None:
    hps = "small_vqvae,small_prior,level=1,labels=false"  # README: train.py --hps=small_vqvae,small_prior --level=1
    source = small_checkpoint(hps, tmp_path / "prior.pth.tar")
    code, _, err = run_cli("import", "openai", "--hps", hps, "--prior", tmp_path / "prior.pth.tar",
                           "--out", tmp_path / "mine")  # fmt: skip
    assert code == 0, err
    prior = load(tmp_path / "mine" / "prior")
    assert (prior.n_ctx, prior.x_emb.embedding_dim, len(prior.transformer.blocks)) == (8192, 1024, 48)
    assert all(torch.equal(tensor, source[key]) for key, tensor in to_openai(prior).items())


def test_an_imported_model_loads_without_trust_and_refuses_code_planted_in_its_recipe(tmp_path: Path) -> None:
    seed = int(torch.randint(0, 2**31, ()))
    torch.save({"model": openai_state("vqvae", seed)}, tmp_path / "vqvae.pth.tar")
    out = import_model("vqvae", tmp_path / "vqvae.pth.tar", tmp_path / "vqvae", TINY["vqvae"][0])
    source = openai_state("vqvae", seed)
    assert all(torch.equal(tensor, source[key]) for key, tensor in to_openai(load(out)).items())

    marker = tmp_path / "payload_ran"
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    recipe["model"]["vqvae"]["bottleneck"] = {"_component_": "os:system", "command": f"touch {marker}"}
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(UntrustedCodeError) as error:
        load(out)
    assert str(error.value).startswith(
        f"{out / 'recipe.yaml'}: model.vqvae.bottleneck._component_: 'os:system' is a dotted path"
    )
    assert not marker.exists()
