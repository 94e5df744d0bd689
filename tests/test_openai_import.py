"""Importing OpenAI's released Jukebox weights, on tiny random state dicts in OpenAI's exact names and shapes.

The key names and shapes in ``tests/data/openai/*_tiny.json`` were listed from openai/jukebox's own
modules built at the tiny sizes of `SPECS` (a VQ-VAE of width 8, priors of width 16). Each test
fills them with random numbers, imports them, and checks that every tensor lands where it
should and that the imported modules compute what OpenAI's layers compute, restated here from
openai/jukebox (``vqvae/encdec.py``, ``vqvae/resnet.py``, ``transformer/factored_attention.py``,
``transformer/transformer.py``, ``prior/conditioners.py``).
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
from jukebox_pl.cli import main
from jukebox_pl.errors import UntrustedCodeError
from jukebox_pl.modules.transformer import ResAttnBlock
from jukebox_pl.registry import build

DATA = Path(__file__).parent / "data" / "openai"
LABELS_V2 = {"_component_": "label", "n_artists": 4111, "n_genres": 120, "max_genres": 5, "t_bins": 128}
LABELS_V3 = {"_component_": "label", "n_artists": 7898, "n_genres": 604, "max_genres": 1, "t_bins": 64}
PRIOR = {"_component_": "prior/jukebox", "codebook_size": 32, "n_ctx": 32, "width": 16, "heads": 2, "blocks": 4}
SPECS = {
    "vqvae": {"_component_": "vqvae/jukebox", "downs": [3, 2, 2], "strides": [2, 2, 2], "emb_width": 8, "width": 8,
              "depth": 2, "multipliers": [2, 1, 1], "bottleneck": {"_component_": "ema_vq", "codebook_size": 32}},
    "prior_5b": {**PRIOR, "level": 2, "hop_length": 128, "depth": 4, "attn_order": 2, "merged_decoder": True,
                 "labels": {**LABELS_V2, "min_duration": 60.0, "max_duration": 600.0}},
    "prior_5b_lyrics": {**PRIOR, "level": 2, "hop_length": 128, "depth": 20, "attn_order": 10, "merged_decoder": True,
                        "labels": {**LABELS_V2, "min_duration": 23.8, "max_duration": 600.0},
                        "lyrics": {"_component_": "lyrics", "n_tokens": 8, "vocab": 80, "width": 8, "depth": 2,
                                   "heads": 2, "attn_order": 2, "blocks": 4}},
    "prior_1b_lyrics": {**PRIOR, "level": 2, "hop_length": 128, "depth": 16, "attn_order": 12, "n_tokens": 8,
                        "lyric_vocab": 79, "lyrics_version": "v3",
                        "labels": {**LABELS_V3, "min_duration": 17.84, "max_duration": 600.0}},
    "upsampler_level_1": {**PRIOR, "level": 1, "hop_length": 32, "depth": 4, "attn_order": 2,
                          "labels": {**LABELS_V2, "include_time_signal": False},
                          "upper": {"_component_": "upper_codes", "codebook_size": 32, "down": 2, "stride": 2,
                                    "cond_width": 8, "cond_depth": 2, "dilation_growth_rate": 3, "dilation_cycle": 8,
                                    "res_scale": True}},
}  # fmt: skip
TIED = {"prior_1b_lyrics", "upsampler_level_1"}  # x_out shares x_emb's weight (merged_decoder false)


def openai_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under OpenAI's names and shapes for the tiny `name` model."""
    shapes = json.loads((DATA / f"{name}_tiny.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(shape, generator=generator) * 0.1 for key, shape in shapes.items()}
    if name in TIED:
        state["prior.x_out.weight"] = state["prior.x_emb.weight"]
    return state


def imported(name: str, seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    source = openai_state(name, seed)
    module = build(None, SPECS[name]).eval()
    module.load_state_dict(to_ours(module, source, name))
    return module, source


@pytest.mark.parametrize("name", list(SPECS))
def test_every_tensor_lands_where_it_should_and_exports_back_unchanged(name: str) -> None:
    module, source = imported(name)
    back = to_openai(module)
    assert set(back) == set(source)
    for key, tensor in source.items():
        assert torch.equal(back[key], tensor), key


def test_an_incomplete_or_foreign_state_dict_is_one_error_listing_every_problem() -> None:
    source = openai_state("prior_5b")
    del source["prior.transformer._attn_mods.1.ln_0.weight"]
    source["prior.transformer._attn_mods.9.ln_0.weight"] = torch.zeros(16)
    source["prior.x_emb.weight"] = torch.zeros(33, 16)
    module = build(None, SPECS["prior_5b"])
    with pytest.raises(CheckpointError) as caught:
        to_ours(module, source, "prior_level_2.pth.tar")
    message = str(caught.value)
    assert "missing prior.transformer._attn_mods.1.ln_0.weight" in message
    assert "unexpected prior.transformer._attn_mods.9.ln_0.weight" in message
    assert "prior.x_emb.weight: shape (33, 16) does not fit our x_emb.weight (32, 16)" in message
    tied = openai_state("prior_1b_lyrics")
    tied["prior.x_out.weight"] = tied["prior.x_out.weight"] + 1
    with pytest.raises(CheckpointError, match="x_out.weight differs from prior.x_emb.weight"):
        to_ours(build(None, SPECS["prior_1b_lyrics"]), tied, "prior_level_2.pth.tar")


# ------------------------------------------------------------------- OpenAI's computation, restated
def res_unit(x: torch.Tensor, state: dict, prefix: str, dilation: int) -> torch.Tensor:
    """openai/jukebox ResConv1DBlock: x + conv1x1(relu(conv3_dilated(relu(x))))."""
    h = F.conv1d(F.relu(x), state[f"{prefix}.model.1.weight"], state[f"{prefix}.model.1.bias"], padding=dilation,
                 dilation=dilation)  # fmt: skip
    return x + F.conv1d(F.relu(h), state[f"{prefix}.model.3.weight"], state[f"{prefix}.model.3.bias"])


def test_an_imported_level_encodes_and_decodes_as_openais_layers() -> None:
    module, s = imported("vqvae", seed=1)
    audio = torch.randn(2, 1, 256, generator=torch.Generator().manual_seed(2))
    depth, growth = 4, 3  # level 0: depth 2 x multiplier 2; dilation growth 3 (hparams.py vqvae)
    x = audio
    for step in range(3):  # EncoderConvBlock: (conv k4 s2 p1, Resnet1D) x down_t, then conv k3
        prefix = f"encoders.0.level_blocks.0.model.{step}"
        x = F.conv1d(x, s[f"{prefix}.0.weight"], s[f"{prefix}.0.bias"], stride=2, padding=1)
        for unit in range(depth):
            x = res_unit(x, s, f"{prefix}.1.model.{unit}", growth**unit)
    latents = F.conv1d(
        x, s["encoders.0.level_blocks.0.model.3.weight"], s["encoders.0.level_blocks.0.model.3.bias"], padding=1
    )
    with torch.no_grad():
        assert torch.allclose(module.encoders[0](audio), latents, atol=1e-5)
        y = F.conv1d(
            latents,
            s["decoders.0.level_blocks.0.model.0.weight"],
            s["decoders.0.level_blocks.0.model.0.bias"],
            padding=1,
        )
        for step in range(1, 4):  # DecoderConvBock: conv k3, then (Resnet1D reversed, convT k4 s2 p1) x down_t
            prefix = f"decoders.0.level_blocks.0.model.{step}"
            for unit in range(depth):
                y = res_unit(y, s, f"{prefix}.0.model.{unit}", growth ** (depth - 1 - unit))
            y = F.conv_transpose1d(y, s[f"{prefix}.1.weight"], s[f"{prefix}.1.bias"], stride=2, padding=1)
        audio_out = F.conv1d(y, s["decoders.0.out.weight"], s["decoders.0.out.bias"], padding=1)
        assert torch.allclose(module.decoders[0](latents), audio_out, atol=1e-5)  # fmt: skip


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
    """ResAttnBlock of openai/jukebox: a = attn(ln_0(x)); m = mlp(ln_1(x + a)); x + a + m (Conv1D: x @ w + b)."""

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
    module, s = imported(name, seed=3)
    prefix = f"prior.transformer._attn_mods.{layer}"
    generator = torch.Generator().manual_seed(4)
    n = module.n_tokens + module.n_ctx
    x = torch.randn(2, n, 16, generator=generator)
    encoder = torch.randn(2, 8, 16, generator=generator) if pattern == 6 else None
    mask = None if pattern == 6 else pattern_mask(pattern, n, n // 4, prime_keys=(8 // 4 + 1) * 4)
    with torch.no_grad():
        ours = module.transformer.blocks[layer](x, encoder)
        theirs = openai_block(x, s, prefix, heads=2, mask=mask, encoder=encoder)
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


def test_the_imported_label_conditioner_embeds_as_openais() -> None:
    module, s = imported("prior_5b", seed=6)
    artist, genres = torch.tensor([7, 4000]), torch.tensor([[3, 9, -1, -1, -1], [119, -1, -1, -1, -1]])
    total, offset, n_ctx, hop = 3_000_000, 441_000, 32, 128
    timing = torch.tensor([[total, offset, n_ctx * hop]] * 2)
    with torch.no_grad():
        start, positions = module.labels(artist, genres, timing)
    # LabelConditioner: artist + sum of the bag of genres (padding -1 ignored) as the start token.
    expected = s["y_emb.artist_emb.emb.weight"][artist] + torch.stack(
        [s["y_emb.bow_genre_emb.emb.weight"][g[g >= 0]].sum(0) for g in genres]
    )
    assert torch.allclose(start[:, 0], expected, atol=1e-6)

    def range_emb(name, start_value, end_value, low, high, n_time, bins=128):
        position = start_value + (end_value - start_value) * torch.arange(n_time) / n_time
        index = ((position - low) / (high - low) * bins).floor().long()
        return s[f"y_emb.{name}.emb.weight"][index]

    sr, end = 44100, offset + n_ctx * hop
    expected = (
        range_emb("total_length_emb", total, total, 60 * sr, 600 * sr, 1)
        + range_emb("absolute_pos_emb", offset, end, 0, 600 * sr, n_ctx)
        + range_emb("relative_pos_emb", offset / total, end / total, 0.0, 1.0, n_ctx)
    )
    assert torch.allclose(positions[0], expected, atol=1e-6)


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


def test_import_writes_an_export_that_loads_with_its_vocabularies(tmp_path: Path) -> None:
    torch.save({"model": openai_state("prior_1b_lyrics", seed=7)}, tmp_path / "prior_level_2.pth.tar")
    (tmp_path / "v3_artist_ids.txt").write_text("unknown;0\nella fitzgerald;1\nnina simone;2\n")
    (tmp_path / "v3_genre_ids.txt").write_text("unknown;0\njazz;1\nsoul;2\n")
    out = import_model("1b_lyrics", tmp_path / "prior_level_2.pth.tar", tmp_path / "prior", tmp_path,
                       spec=SPECS["prior_1b_lyrics"])  # fmt: skip
    prior = load(out)
    source = openai_state("prior_1b_lyrics", seed=7)
    assert all(torch.equal(tensor, source[key]) for key, tensor in to_openai(prior).items())
    assert load_vocabularies(out)["artists"].id("Nina Simone") == 2


def test_an_imported_model_loads_without_trust_and_refuses_code_planted_in_its_recipe(tmp_path: Path) -> None:
    seed = int(torch.randint(0, 2**31, ()))
    torch.save({"model": openai_state("vqvae", seed)}, tmp_path / "vqvae.pth.tar")
    out = import_model("vqvae", tmp_path / "vqvae.pth.tar", tmp_path / "vqvae", spec=SPECS["vqvae"])
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
