"""VQ-VAE layers and presets: the released architecture's sizes, hop lengths and shapes."""

from __future__ import annotations

import math

import pytest
import torch

from jukebox_pl import build
from jukebox_pl.modules.encdec import LevelDecoder, LevelEncoder
from jukebox_pl.modules.resnet1d import Resnet1D, dilations
from jukebox_pl.vqvae.network import hop_lengths


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_jukebox_preset_has_the_released_parameter_counts():
    vqvae = build("vqvae", "jukebox_vqvae")
    # Counted from openai/jukebox vqvae/vqvae.py with hparams.py `vqvae`: the paper's "2M".
    assert _count(vqvae) == 1_485_763
    assert [_count(e) for e in vqvae.encoders] == [441_856, 116_384, 168_224]
    assert [_count(d) for d in vqvae.decoders] == [458_177, 124_641, 176_481]
    codebooks = [b.codebook for b in vqvae.bottlenecks]
    assert [tuple(c.shape) for c in codebooks] == [(2048, 64)] * 3
    assert sum(c.numel() for c in codebooks) == 393_216
    assert not any(c.requires_grad for c in codebooks)


@pytest.mark.parametrize(
    ("preset", "sample_rate", "hops", "codes", "length"),
    [
        ("jukebox_vqvae", 44100, [8, 32, 128], [2048] * 3, 1024),
        ("small_vqvae", 22050, [32, 256], [1024] * 2, 2048),
        ("tiny_vqvae", 22050, [4, 16], [256] * 2, 512),
    ],
)
def test_every_preset_has_its_hop_lengths_and_shapes(preset, sample_rate, hops, codes, length):
    vqvae = build("vqvae", preset).eval()
    assert (vqvae.sample_rate, vqvae.hop_lengths, vqvae.codebook_sizes) == (sample_rate, hops, codes)
    audio = torch.randn(2, 1, length, generator=torch.Generator().manual_seed(len(preset)))
    encoded = vqvae.encode(audio)
    assert [tuple(c.shape) for c in encoded] == [(2, length // hop) for hop in hops]
    for level, level_codes in enumerate(encoded):
        assert level_codes.dtype == torch.int64
        assert vqvae.decode(level_codes, level).shape == (2, 1, length)
    out = vqvae(audio)
    assert [tuple(r.shape) for r in out.reconstructions] == [(2, 1, length)] * len(hops)


def test_presets_are_overridable_key_by_key():
    vqvae = build("vqvae", {"_component_": "small_vqvae", "downs": [2, 2], "strides": [2, 2]})
    assert vqvae.hop_lengths == [4, 16] and vqvae.sample_rate == 22050
    assert vqvae.codebook_sizes == [1024, 1024]


def test_hop_lengths_are_the_cumulative_product_of_strides_to_the_downs():
    assert hop_lengths([3, 2, 2], [2, 2, 2]) == [8, 32, 128]
    assert hop_lengths([5, 3], [2, 2]) == [32, 256]
    assert hop_lengths([1, 2], [4, 2]) == [4, 16]


def test_dilations_grow_by_the_rate_and_restart_each_cycle():
    assert dilations(4, 3) == [1, 3, 9, 27]
    assert dilations(5, 3, cycle=2) == [1, 3, 1, 3, 1]
    stack = Resnet1D(8, 4, dilation_growth_rate=3, reverse=True)
    assert [unit.dilated.dilation[0] for unit in stack] == [27, 9, 3, 1]


def test_a_level_encoder_runs_every_stage_from_raw_audio():
    encoder = LevelEncoder(1, 16, downs=[2, 1], strides=[2, 4], width=8, depth=2, dilation_growth_rate=3)
    decoder = LevelDecoder(1, 16, downs=[2, 1], strides=[2, 4], width=8, depth=2, dilation_growth_rate=3)
    audio = torch.randn(3, 1, 4 * 4 * 10)
    latents = encoder(audio)
    assert latents.shape == (3, 16, 10)
    assert decoder(latents).shape == audio.shape
    # The first stage takes the raw waveform (1 channel); the second takes the embedding.
    assert encoder[0][0].in_channels == 1 and encoder[1][0].in_channels == 16


def test_the_receptive_field_is_local():
    torch.manual_seed(0)
    encoder = LevelEncoder(1, 4, downs=[1], strides=[2], width=4, depth=1).eval()
    audio = torch.randn(1, 1, 256)
    changed = audio.clone()
    changed[..., -8:] += 1.0  # only the end differs
    with torch.no_grad():
        difference = (encoder(audio) - encoder(changed)).abs().sum(dim=1)[0]
    assert difference[:100].max() == 0 and difference[-2:].min() > 0


def test_wrong_level_lists_are_refused():
    with pytest.raises(ValueError, match="one entry per level"):
        build("vqvae", {"_component_": "tiny_vqvae", "multipliers": [1, 1, 1]})
    with pytest.raises(ValueError, match="even"):
        build("vqvae", {"_component_": "tiny_vqvae", "strides": [2, 3]})
    vqvae = build("vqvae", "tiny_vqvae")
    with pytest.raises(ValueError, match="multiple of the top hop length 16"):
        vqvae(torch.zeros(1, 1, 100))


def test_encode_pads_audio_that_is_not_a_multiple_of_the_hop():
    vqvae = build("vqvae", "tiny_vqvae").eval()
    codes = vqvae.encode(torch.randn(1, 1, 100))
    assert [c.shape[-1] for c in codes] == [math.ceil(100 / 4), math.ceil(100 / 16)]
