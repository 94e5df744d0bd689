"""Label and upper-codes conditioners: bags of genres, timing bins, upsampling and its alignment."""

from __future__ import annotations

import pytest
import torch

import jukebox_pl
from jukebox_pl.conditioners.label import LabelConditioner, bin_index, interpolate_positions
from jukebox_pl.conditioners.upper_codes import UpperCodesConditioner
from jukebox_pl.data.labels import Vocabulary
from jukebox_pl.modules.resnet1d import dilations

SR = 100  # a small sample rate keeps the hand-computed bins readable


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _labels(**overrides) -> LabelConditioner:
    # songs of [10 s, 100 s) at 100 Hz, 10 timing bins, 4 tokens of 5 s each
    arguments = dict(width=8, n_artists=7, n_genres=6, n_ctx=4, hop_length=500, t_bins=10)
    arguments |= dict(min_duration=10.0, max_duration=100.0, sample_rate=SR)
    return LabelConditioner(**(arguments | overrides))


def _timing(total: int, offset: int, conditioner: LabelConditioner) -> torch.Tensor:
    return torch.tensor([[total, offset, conditioner.window_length]])


# ------------------------------------------------------------------ label: start vector
def test_genre_padding_is_ignored_wherever_it_sits():
    labels = _labels()
    artist = torch.randint(0, 7, (1,))
    g1, g2 = torch.randperm(6)[:2].tolist()
    start, _ = labels(artist, torch.tensor([[g1, g2, -1, -1, -1]]), _timing(5000, 0, labels))
    spread, _ = labels(artist, torch.tensor([[-1, g1, -1, g2, -1]]), _timing(5000, 0, labels))
    by_hand = labels.artist_emb.weight[artist] + labels.bow_genre_emb.weight[g1] + labels.bow_genre_emb.weight[g2]
    torch.testing.assert_close(start, by_hand[None])
    torch.testing.assert_close(spread, start)
    # -1 is not the "unknown" genre (id 0): that one is a real genre and counts
    with_unknown, _ = labels(artist, torch.tensor([[g1, g2, 0, -1, -1]]), _timing(5000, 0, labels))
    assert not torch.allclose(with_unknown, start)


def test_genres_are_a_bag_whose_order_does_not_matter():
    labels = _labels()
    artist = torch.randint(0, 7, (3,))
    genres = torch.randint(0, 6, (3, 5))
    shuffled = genres[:, torch.randperm(5)]
    torch.testing.assert_close(labels.start_embedding(artist, shuffled), labels.start_embedding(artist, genres))


def test_artist_changes_the_start_vector_and_nothing_else():
    labels = _labels()
    genres, timing = torch.randint(-1, 6, (1, 5)), _timing(5000, 700, labels)
    start_a, positions_a = labels(torch.tensor([2]), genres, timing)
    start_b, positions_b = labels(torch.tensor([5]), genres, timing)
    assert start_a.shape == (1, 1, 8) and positions_a.shape == (1, 4, 8)
    assert not torch.allclose(start_a, start_b)
    torch.testing.assert_close(positions_a, positions_b)


def test_out_of_range_ids_are_refused_by_name():
    labels = _labels()
    with pytest.raises(ValueError, match=r"artist ids must be in \[0, 7\)"):
        labels.start_embedding(torch.tensor([7]), torch.full((1, 5), -1))
    with pytest.raises(ValueError, match=r"genres \(B, 5\)"):
        labels.start_embedding(torch.tensor([1]), torch.full((1, 3), -1))


# ------------------------------------------------------------------ label: timing
def test_binning_cuts_the_range_into_equal_half_open_bins():
    low, high, bins = 3.0, 13.0, 5
    values = low + torch.rand(100) * (high - low)
    assert torch.equal(bin_index(values, bins, low, high), ((values - low) // 2).long())
    assert bin_index(torch.tensor([3.0, 4.999, 5.0, 12.999]), bins, low, high).tolist() == [0, 0, 1, 4]


def test_positions_spread_evenly_from_start_towards_end():
    start, end = torch.tensor([[10.0]]), torch.tensor([[30.0]])
    assert interpolate_positions(start, end, 4).tolist() == [[10.0, 15.0, 20.0, 25.0]]
    assert torch.equal(interpolate_positions(start, end, 1), start)


def test_timing_gives_the_hand_computed_bins_per_position():
    labels = _labels()
    # a 50 s song, crop from 25.5 s, tokens every 5 s: positions 25.5, 30.5, 35.5, 40.5 s
    _, positions = labels(torch.tensor([0]), torch.full((1, 5), -1), _timing(5000, 2550, labels))
    total_bin = 4  # floor(10 * (50 - 10) / (100 - 10))
    absolute_bins = [2, 3, 3, 4]  # floor(10 * t / 100 s)
    relative_bins = [5, 6, 7, 8]  # floor(10 * t / 50 s)
    by_hand = (
        labels.total_length_emb.emb.weight[total_bin]
        + labels.absolute_pos_emb.emb.weight[absolute_bins]
        + labels.relative_pos_emb.emb.weight[relative_bins]
    )
    torch.testing.assert_close(positions[0], by_hand)


def test_a_crop_running_past_the_song_end_is_clamped_to_relative_position_one():
    labels = _labels()
    # 50 s song, crop from 45 s to 65 s: relative positions 0.9 .. 0.975, all in the last bin
    _, positions = labels(torch.tensor([0]), torch.full((1, 5), -1), _timing(5000, 4500, labels))
    absolute_bins = [4, 5, 5, 6]
    by_hand = (
        labels.total_length_emb.emb.weight[4]
        + labels.absolute_pos_emb.emb.weight[absolute_bins]
        + labels.relative_pos_emb.emb.weight[[9, 9, 9, 9]]
    )
    torch.testing.assert_close(positions[0], by_hand)


@pytest.mark.parametrize("include_time_signal", [True, False])
def test_labels_at_every_position_add_the_start_vector_to_each_position(include_time_signal):
    plain = _labels(include_time_signal=include_time_signal)
    everywhere = _labels(include_time_signal=include_time_signal, labels_at_every_position=True)
    everywhere.load_state_dict(plain.state_dict())  # the same parameters: the option adds none
    artist, genres = torch.randint(0, 7, (2,)), torch.randint(-1, 6, (2, 5))
    timing = torch.stack([torch.full((2,), 6000), torch.randint(0, 3000, (2,)), torch.full((2,), 2000)], dim=1)
    start, positions = plain(artist, genres, timing)
    start_everywhere, positions_everywhere = everywhere(artist, genres, timing)
    torch.testing.assert_close(start_everywhere, start)
    expected = start.expand(-1, 4, -1) + (positions if positions is not None else 0)
    torch.testing.assert_close(positions_everywhere, expected)


def test_timing_changes_the_positions_and_not_the_start_vector():
    labels = _labels()
    artist, genres = torch.randint(0, 7, (2,)), torch.randint(-1, 6, (2, 5))
    offsets = torch.randint(0, 3000, (2,))
    timing = torch.stack([torch.full((2,), 6000), offsets, torch.full((2,), labels.window_length)], dim=1)
    later = timing + torch.tensor([0, 1500, 0])
    start_a, positions_a = labels(artist, genres, timing)
    start_b, positions_b = labels(artist, genres, later)
    torch.testing.assert_close(start_a, start_b)
    assert not torch.allclose(positions_a, positions_b)


@pytest.mark.parametrize(
    ("total", "offset", "length", "problem"),
    [
        (900, 0, 2000, "song length is outside"),  # 9 s < min_duration
        (10_000, 0, 2000, "song length is outside"),  # max_duration is excluded
        (5000, 5000, 2000, "does not start inside the song"),
        (9900, 8500, 2000, "ends after max_duration"),
        (5000, 0, 2001, "crop is longer than n_ctx"),
    ],
)
def test_timing_outside_the_reference_ranges_is_refused(total, offset, length, problem):
    labels = _labels()
    with pytest.raises(ValueError, match=problem):
        labels(torch.tensor([0]), torch.full((1, 5), -1), torch.tensor([[total, offset, length]]))


def test_a_crop_shorter_than_the_window_gets_the_positions_of_the_windows_first_tokens():
    labels = _labels()
    artist, genres = torch.tensor([0, 1]), torch.full((2, 5), -1)
    short = torch.tensor([[5000, 300, 700], [8000, 4000, 1]])  # (song length, offset, crop length)
    window = short.clone()
    window[:, 2] = labels.window_length
    torch.testing.assert_close(labels(artist, genres, short)[1], labels(artist, genres, window)[1])


def test_without_time_signal_there_are_no_positions_and_no_range_embeddings():
    labels = _labels(include_time_signal=False)
    start, positions = labels(torch.tensor([1, 2]), torch.full((2, 5), -1))
    assert start.shape == (2, 1, 8) and positions is None
    assert _count(labels) == (7 + 6) * 8


@pytest.mark.parametrize("include_time_signal", [True, False])
def test_label_parameters_match_the_reference_formula(include_time_signal):
    width, n_artists, n_genres, t_bins = 12, 9, 5, 16
    labels = LabelConditioner(
        width, n_artists, n_genres, n_ctx=8, hop_length=4, t_bins=t_bins, include_time_signal=include_time_signal
    )
    # openai/jukebox LabelConditioner: two SimpleEmbeddings + three RangeEmbeddings, no biases
    expected = (n_genres + n_artists) * width + (3 * t_bins * width if include_time_signal else 0)
    assert _count(labels) == expected


def test_jukebox_top_prior_label_conditioner_has_the_reference_size():
    with torch.device("meta"):  # no memory: only the shapes
        labels = LabelConditioner(width=4800, n_artists=4111, n_genres=120, n_ctx=8192, hop_length=128)
    assert _count(labels) == (120 + 4111) * 4800 + 3 * 128 * 4800 == 22_152_000


def test_tokenize_gives_the_datamodule_tensors_that_forward_takes():
    labels = _labels()
    vocabularies = {"artists": Vocabulary(["Bach", "Haydn"]), "genres": Vocabulary(["chorale", "folk", "quartet"])}
    metadata = {"artist": "haydn", "genres": ["quartet", "Chorale"], "samples": 9000, "sample_rate": 200}
    item = labels.tokenize(metadata, offset=1200, window=labels.window_length, vocabularies=vocabularies)
    assert item["artist"].item() == 2
    assert item["genres"].tolist() == [3, 1, -1, -1, -1]
    assert item["timing"].tolist() == [4500, 1200, 2000]  # 45 s at this conditioner's 100 Hz
    batch = {key: torch.stack([value, value]) for key, value in item.items()}
    start, positions = labels(**batch)
    assert start.shape == (2, 1, 8) and positions.shape == (2, 4, 8)
    with pytest.raises(ValueError, match="song length is outside"):
        labels.tokenize(metadata | {"samples": 1000}, 0, labels.window_length, vocabularies)


# ------------------------------------------------------------------ upper codes
SMALL_STACK = dict(cond_width=16, cond_depth=3, dilation_growth_rate=3, dilation_cycle=2)  # dilations 1, 3, 1


def _upper(down: int = 2, stride: int = 2, **overrides) -> UpperCodesConditioner:
    return UpperCodesConditioner(
        **(dict(width=8, codebook_size=32, down=down, stride=stride) | SMALL_STACK | overrides)
    )


@pytest.mark.parametrize(("down", "stride", "length"), [(2, 2, 7), (1, 4, 5), (3, 2, 16)])
def test_output_is_exactly_the_level_ratio_longer(down, stride, length):
    upper = _upper(down, stride)
    codes = torch.randint(0, 32, (2, length))
    assert upper(codes).shape == (2, length * stride**down, 8)
    assert torch.equal(upper.tokenize(codes), codes)


def _affected_outputs(code: int, down: int, stride: int) -> tuple[int, int]:
    """Outputs an upper code can reach, walked through the layers' kernels, dilations and strides."""
    # each residual unit's dilated 3-tap conv reaches `dilation` positions either side
    reach = sum(
        dilations(SMALL_STACK["cond_depth"], SMALL_STACK["dilation_growth_rate"], SMALL_STACK["dilation_cycle"])
    )
    low, high = code - 1, code + 1  # the 3-tap convolution in
    for _ in range(down):
        low, high = low - reach, high + reach
        # transposed conv, kernel 2 * stride, padding stride // 2: input i writes i * s - p ... i * s - p + 2s - 1
        low, high = low * stride - stride // 2, high * stride - stride // 2 + 2 * stride - 1
    return low, high


@pytest.mark.parametrize(("down", "stride"), [(2, 2), (1, 4)])
def test_an_upper_code_changes_only_its_receptive_field_centred_on_its_own_span(down, stride):
    upper = _upper(down, stride).double()
    ratio, length = stride**down, 48
    codes = torch.randint(0, 32, (1, length))
    j = int(torch.randint(20, 28, ()))
    changed_codes = codes.clone()
    changed_codes[0, j] = (codes[0, j] + torch.randint(1, 32, ())) % 32
    with torch.no_grad():
        changed = (upper(codes) != upper(changed_codes)).any(dim=-1)[0].nonzero()[:, 0]
    low, high = _affected_outputs(j, down, stride)
    assert (int(changed.min()), int(changed.max())) == (low, high)
    assert len(changed) == high - low + 1
    # as far before the code's own span [j * ratio, (j + 1) * ratio) as after it
    assert j * ratio - low == high - ((j + 1) * ratio - 1) > 0


def _upper_codes_parameters(width, codebook_size, down, stride, cond_width, cond_depth, m_conv=1.0):
    """openai/jukebox Conditioner: x_emb, DecoderConvBock(width, width, down, stride, cond_width, ...), LayerNorm."""
    hidden = int(m_conv * cond_width)
    unit = (cond_width * hidden * 3 + hidden) + (hidden * cond_width + cond_width)  # dilated 3-tap conv, 1x1 conv
    total = codebook_size * width + (width * cond_width * 3 + cond_width)  # embedding, conv in
    for step in range(down):
        out = width if step == down - 1 else cond_width
        total += cond_depth * unit + (cond_width * out * 2 * stride + out)  # resnet, transposed conv
    return total + 2 * width  # layer norm


@pytest.mark.parametrize(("down", "stride", "m_conv"), [(2, 2, 1.0), (1, 4, 0.5), (3, 2, 2.0)])
def test_upper_codes_parameters_match_the_reference_formula(down, stride, m_conv):
    upper = _upper(down, stride, m_conv=m_conv)
    assert _count(upper) == _upper_codes_parameters(8, 32, down, stride, 16, 3, m_conv)


def test_jukebox_upsampler_conditioner_has_the_reference_size():
    # hparams.py upsamplers: prior_width 1920, cond_width 1024, cond_depth 16; VQ-VAE 2048 codes, 2 steps of 2
    with torch.device("meta"):
        upper = UpperCodesConditioner(width=1920, codebook_size=2048, down=2, stride=2)
    assert _count(upper) == _upper_codes_parameters(1920, 2048, 2, 2, 1024, 16) == 156_180_096


def test_an_upsampler_needs_at_least_one_even_stride_step():
    with pytest.raises(ValueError, match="down must be at least 1"):
        _upper(down=0)
    with pytest.raises(ValueError, match="stride must be even"):
        _upper(stride=3)


# ------------------------------------------------------------------ registry
def test_both_conditioners_are_registered_and_buildable():
    labels = jukebox_pl.build(
        "conditioner", {"_component_": "label", "width": 8, "n_artists": 3, "n_genres": 2, "n_ctx": 4, "hop_length": 8}
    )
    upper = jukebox_pl.build(
        "conditioner",
        {"_component_": "upper_codes", "width": 8, "codebook_size": 16, "down": 1, "stride": 2, "cond_width": 16},
    )
    assert isinstance(labels, LabelConditioner) and isinstance(upper, UpperCodesConditioner)
    assert upper(torch.randint(0, 16, (1, 3))).shape == (1, 6, 8)
