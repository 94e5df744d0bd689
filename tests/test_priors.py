"""The Jukebox prior: released sizes, causality, conditioning, the lyric prefix, training on code shards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

import jukebox_pl
from jukebox_pl import build
from jukebox_pl.priors.prior import bits_per_token

WIDTH, N_CTX = 32, 32
LABELS = {"_component_": "label", "n_artists": 5, "n_genres": 4, "max_genres": 2, "t_bins": 8,
          "min_duration": 0.01, "max_duration": 100.0, "sample_rate": 1000}  # fmt: skip
UPPER = {"_component_": "upper_codes", "codebook_size": 16, "down": 1, "stride": 4, "cond_width": 8, "cond_depth": 1}


def _prior(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = {"_component_": "jukebox", "level": 0, "codebook_size": 16, "n_ctx": N_CTX, "hop_length": 4,
            "width": WIDTH, "depth": 3, "heads": 2, "attn_order": 2, "blocks": 4, **overrides}  # fmt: skip
    prior = build("prior", spec).eval()
    with torch.no_grad():  # the zero-initialised projections would hide every dependency
        for parameter in prior.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return prior


def _batch(seed: int, batch: int = 2, n_tokens: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    window = N_CTX * 4
    return {
        "codes": torch.randint(0, 16, (batch, N_CTX), generator=generator),
        "upper_codes": torch.randint(0, 16, (batch, N_CTX // 4), generator=generator),
        "artist": torch.randint(0, 5, (batch,), generator=generator),
        "genres": torch.tensor([[1, -1], [2, 3]])[:batch],
        "timing": torch.tensor([[5000, 200, window], [8000, 4000, window]])[:batch],
        "lyrics": torch.randint(0, 80, (batch, n_tokens), generator=generator),
    }


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("prior_1b_lyrics", 942_643_200),
        ("upsampler", 981_298_176),
        ("upsampler_level_0", 981_298_176),
        ("prior_5b", 5_060_452_800),
        # 79 decoder layers (7 with cross attention), the 1280 x 18 lyrics encoder of 95,953,600
        ("prior_5b_lyrics", 5_640_506_800),
    ],
)
def test_presets_have_the_released_parameter_counts(preset, expected):
    with torch.device("meta"):  # no memory for the weights
        prior = build("prior", preset)
    assert sum(p.numel() for p in prior.parameters()) == expected


def test_the_prior_is_causal_with_every_conditioning():
    prior = _prior(labels=LABELS, upper=UPPER)
    batch = _batch(1)
    logits, _ = prior(batch)
    for t in (0, 5, 17, N_CTX - 2):
        changed = dict(batch, codes=batch["codes"].clone())
        changed["codes"][:, t + 1 :] = (changed["codes"][:, t + 1 :] + 1) % 16
        other, _ = prior(changed)
        assert torch.equal(logits[:, : t + 2], other[:, : t + 2]), f"position <= {t + 1} saw a later code"
        assert not torch.allclose(logits[:, t + 2 :], other[:, t + 2 :]) if t + 2 < N_CTX else True


def test_labels_change_the_predictions():
    prior = _prior(labels=LABELS)
    batch = _batch(2)
    logits, _ = prior(batch)
    changes = {
        "artist": (batch["artist"] + 1) % 5,
        "genres": torch.tensor([[3, -1], [1, -1]]),
        "timing": torch.tensor([[9000, 3000, N_CTX * 4], [6000, 0, N_CTX * 4]]),
    }
    for key, value in changes.items():
        other, _ = prior(dict(batch, **{key: value}))
        assert not torch.allclose(logits, other), f"{key} did not change the output"


def test_upper_codes_act_where_they_are_in_time():
    prior = _prior(upper=UPPER)
    batch = _batch(3)
    logits, _ = prior(batch)
    changed = dict(batch, upper_codes=batch["upper_codes"].clone())
    changed["upper_codes"][:, 5] = (changed["upper_codes"][:, 5] + 1) % 16  # covers positions 20..23
    difference = (prior(changed)[0] - logits).abs().amax(dim=(0, 2))
    # Two 3-tap convolutions reach upper codes 3..7, the transposed conv (kernel 8, stride 4, padding 2) turns
    # them into positions from 3 * 4 - 2 = 10 on; attention carries that forward, never back.
    assert difference[:10].max() == 0 and difference[20:24].min() > 0


def test_the_lyric_prefix_is_modelled_in_a_merged_vocabulary_with_a_weighted_loss():
    prior = _prior(labels=LABELS, n_tokens=8, lyric_vocab=80, prime_loss_fraction=0.4)
    batch = _batch(4, n_tokens=8)
    logits, tokens = prior(batch)
    assert logits.shape == (2, 8 + N_CTX, 80 + 16)
    assert torch.equal(tokens[:, :8], batch["lyrics"]) and torch.equal(tokens[:, 8:], batch["codes"] + 80)
    loss, parts = prior.losses(batch)
    lyric = bits_per_token(logits[:, :8], tokens[:, :8])
    generated = bits_per_token(logits[:, 8:], tokens[:, 8:])
    torch.testing.assert_close(parts["lyric_bits_per_token"], lyric)
    torch.testing.assert_close(loss, (0.4 * lyric * 8 + generated * N_CTX) / (8 + N_CTX))
    changed = dict(batch, lyrics=(batch["lyrics"] + 1) % 80)
    assert not torch.allclose(prior(changed)[0][:, 8:], logits[:, 8:]), "the music did not hear the lyrics"


LYRICS = {"_component_": "lyrics", "n_tokens": 8, "vocab": 80, "width": 16, "depth": 2, "heads": 2, "blocks": 2}


def test_a_separate_lyrics_encoder_feeds_the_cross_attention_layers():
    prior = _prior(labels=LABELS, lyrics=LYRICS, attn_order=6, depth=4)  # layer 3 attends to the lyrics
    assert prior.transformer.patterns[3] == "cross"
    batch = _batch(6, n_tokens=8)
    logits, tokens = prior(batch)
    assert logits.shape == (2, N_CTX, 16) and torch.equal(tokens, batch["codes"])
    changed = dict(batch, lyrics=(batch["lyrics"] + 1) % 80)
    assert not torch.allclose(prior(changed)[0], logits), "the music did not hear the lyrics"
    loss, parts = prior.losses(batch)
    states, lyric_logits = prior.lyrics(batch["lyrics"])
    assert states.shape == (2, 8, WIDTH)
    lyric = bits_per_token(lyric_logits, batch["lyrics"])
    torch.testing.assert_close(parts["lyric_bits_per_token"], lyric)
    torch.testing.assert_close(loss, (0.4 * lyric * 8 + parts["bits_per_token"] * N_CTX) / (8 + N_CTX))


def test_the_lyrics_encoder_predicts_each_character_from_the_earlier_ones():
    torch.manual_seed(7)
    encoder = build("conditioner", {**LYRICS, "prior_width": WIDTH})
    tokens = torch.randint(0, 80, (1, 8), generator=torch.Generator().manual_seed(8))
    _, logits = encoder(tokens)
    changed = tokens.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 80
    _, other = encoder(changed)
    assert torch.equal(logits[0, :6], other[0, :6]) and not torch.allclose(logits[0, 6:], other[0, 6:])
    window = encoder.tokenize("Sing of the river, sing of the sea", total_length=10_000, offset=0, window=2_000)
    assert window.shape == (8,) and window.dtype == torch.int64


def test_lyrics_as_a_prefix_and_through_an_encoder_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        _prior(lyrics=LYRICS, n_tokens=8)


def test_bits_per_token_is_cross_entropy_in_bits_over_real_positions():
    logits = torch.zeros(2, 5, 8)
    targets = torch.randint(0, 8, (2, 5))
    assert float(bits_per_token(logits, targets)) == pytest.approx(3.0)
    logits = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(5))
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    log_probs = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    expected = -log_probs[mask].mean() / math.log(2)
    torch.testing.assert_close(bits_per_token(logits, targets, mask), expected)


def test_a_tiny_prior_trains_on_code_shards_exports_and_loads_with_tied_weights(tmp_path, run_cli):
    from test_data_codes import _songs, _write_code_dataset

    rng = np.random.default_rng(0)
    _write_code_dataset(
        tmp_path / "codes", {"train": _songs("train", 6, rng), "validation": _songs("validation", 2, rng)}
    )
    recipe = {
        "pipeline": "train",
        "output_dir": str(tmp_path / "run"),
        "model": {"prior": {"_component_": "tiny_prior", "level": 1, "codebook_size": 64, "n_ctx": 16, "hop_length": 16,
                            "width": 16, "depth": 2, "blocks": 4, "labels": {**LABELS, "n_artists": 4, "n_genres": 5}}},
        "data": {"_component_": "code_shards", "path": str(tmp_path / "codes"), "level": 1, "n_ctx": 16,
                 "batch_size": 2, "num_workers": 0, "max_genres": 2, "windows_per_epoch": 4},
        "trainer": {"max_steps": 3, "accelerator": "cpu", "enable_progress_bar": False, "limit_val_batches": 1,
                    "log_every_n_steps": 1, "enable_model_summary": False},
    }  # fmt: skip
    (tmp_path / "prior.yaml").write_text(yaml.safe_dump(recipe))
    code, out, err = run_cli("run", str(tmp_path / "prior.yaml"))
    assert code == 0, err
    assert "val/bits_per_token" in out
    loaded = jukebox_pl.load(tmp_path / "run" / "model")
    assert loaded.x_out.weight.data_ptr() == loaded.x_emb.weight.data_ptr(), "the output matrix stays tied"
    from_checkpoint = jukebox_pl.load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(loaded.x_emb.weight, from_checkpoint.x_emb.weight)
