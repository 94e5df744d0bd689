"""Lyric alignment: combining attention windows, the monotonic path, word times and the written outputs."""

from __future__ import annotations

import base64
import io
import itertools
import json
import re

import numpy as np
import pytest
import soundfile

from jukebox_pl.errors import JukeboxError
from jukebox_pl.registry import build
from jukebox_pl.samplers.alignment import (
    WordTime,
    alignment_html,
    alignment_json,
    combine_windows,
    heatmap_png,
    monotonic_path,
    paced_scores,
    word_times,
    write_alignment,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def planted_path(rng: np.random.Generator, steps: int, first: int, last: int) -> np.ndarray:
    path = np.sort(rng.integers(first, last + 1, steps))
    path[0], path[-1] = first, last
    return path


def planted_attention(rng: np.random.Generator, path: np.ndarray, columns: int) -> np.ndarray:
    """Noise below 0.1 everywhere, 1 on the path: the path is the unique optimum."""
    attention = rng.uniform(0.0, 0.1, (len(path), columns))
    attention[np.arange(len(path)), path] = 1.0
    return attention


def random_lyrics(rng: np.random.Generator, words: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    spelled = ["".join(rng.choice(list(letters), rng.integers(1, 7))) for _ in range(words)]
    separators = rng.choice([" ", " ", "\n", "  "], words - 1)
    return spelled[0] + "".join(s + w for s, w in zip(separators, spelled[1:], strict=True))


def path_score(attention: np.ndarray, path: np.ndarray) -> float:
    return float(attention[np.arange(len(path)), path].sum())


# combine_windows


def test_earlier_windows_win_where_windows_overlap():
    rng = np.random.default_rng(0)
    early, late = rng.uniform(0.1, 1.0, 2)
    first = (0, np.full((6, 4), early), np.array([0, 1, 2, -1]))
    second = (4, np.full((6, 4), late), np.array([2, 3, 4, -1]))
    for order in ([first, second], [second, first]):
        combined = combine_windows(order, total_tokens=10, n_chars=6)
        expected = np.zeros((10, 6), dtype=np.float32)
        expected[4:10, 2:5] = late
        expected[0:6, 0:3] = early  # the earlier window overwrites column 2 on tokens 4 and 5
        assert combined.dtype == np.float32
        np.testing.assert_array_equal(combined, expected)


def test_padding_indices_are_dropped_and_rows_past_the_end_are_cut():
    rng = np.random.default_rng(1)
    weights = rng.uniform(0.1, 1.0, (8, 5))
    indices = np.array([-1, 3, -1, 0, 1])
    combined = combine_windows([(5, weights, indices)], total_tokens=9, n_chars=4)
    assert combined.shape == (9, 4)
    np.testing.assert_allclose(combined[5:, [3, 0, 1]], weights[:4, [1, 3, 4]], rtol=1e-6)
    assert not combined[:5].any()
    assert not combined[:, 2].any()


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ((0, np.ones((4, 3)), np.array([0, 1])), "indices must be"),
        ((0, np.ones(4), np.array([0])), "weights must be"),
        ((0, np.ones((4, 2)), np.array([0, 7])), r"indices must be in \[-1, 5\)"),
        ((0, np.ones((4, 2)), np.array([0.0, 1.0])), "integers"),
        ((12, np.ones((4, 2)), np.array([0, 1])), "outside"),
    ],
)
def test_malformed_windows_are_rejected(window, message):
    with pytest.raises(ValueError, match=message):
        combine_windows([window], total_tokens=10, n_chars=5)


# monotonic_path


@pytest.mark.parametrize(("seed", "steps", "columns"), [(0, 30, 7), (1, 5, 40), (2, 1, 1), (3, 64, 64), (4, 2, 9)])
def test_path_is_non_decreasing_from_first_to_last(seed, steps, columns):
    rng = np.random.default_rng(seed)
    attention = rng.random((steps, columns))
    path = monotonic_path(attention)
    assert path.dtype == np.int64 and path.shape == (steps,)
    assert (np.diff(path) >= 0).all()
    assert path[0] == 0 and path[-1] == columns - 1


def test_path_respects_inner_first_and_last():
    rng = np.random.default_rng(5)
    attention = rng.random((20, 12))
    path = monotonic_path(attention, first=3, last=8)
    assert path[0] == 3 and path[-1] == 8 and (np.diff(path) >= 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_path_follows_a_planted_staircase(seed):
    rng = np.random.default_rng(seed)
    columns = int(rng.integers(5, 30))
    planted = planted_path(rng, int(rng.integers(20, 80)), 0, columns - 1)
    np.testing.assert_array_equal(monotonic_path(planted_attention(rng, planted, columns)), planted)


@pytest.mark.parametrize("seed", range(12))
def test_path_score_equals_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    steps, columns = int(rng.integers(2, 6)), int(rng.integers(1, 5))
    attention = rng.random((steps, columns))
    # Sorted tuples are exactly the non-decreasing paths.
    best = max(
        path_score(attention, np.array(candidate))
        for candidate in itertools.combinations_with_replacement(range(columns), steps)
        if candidate[0] == 0 and candidate[-1] == columns - 1
    )
    assert path_score(attention, monotonic_path(attention)) == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize(("steps", "columns"), [(40, 8), (37, 11), (90, 13)])
def test_paced_path_on_flat_attention_sings_at_an_even_pace(steps, columns):
    rng = np.random.default_rng(steps)
    # Each token's attention spread evenly over the characters, at a random level per token.
    attention = np.repeat(rng.uniform(0.01, 1.0, (steps, 1)), columns, axis=1)
    path = monotonic_path(attention, pace_width=2.0)
    even = (np.arange(steps) + 0.5) * columns / steps - 0.5
    assert np.abs(path - even).max() <= 0.5 + 1e-9
    assert np.bincount(path, minlength=columns).min() >= steps // columns


@pytest.mark.parametrize("seed", range(4))
def test_paced_path_follows_sharp_attention_off_the_even_pace(seed):
    rng = np.random.default_rng(seed)
    steps, columns = int(rng.integers(40, 80)), int(rng.integers(6, 12))
    even = (np.arange(steps) + 0.5) * columns / steps - 0.5
    # A path up to 3 characters early or late, as a singer who rushes and drags.
    drift = np.round(3 * np.sin(np.linspace(0, rng.uniform(2, 6), steps) + rng.uniform(0, 6))).astype(int)
    planted = np.maximum.accumulate(np.clip(np.round(even).astype(int) + drift, 0, columns - 1))
    planted[0], planted[-1] = 0, columns - 1
    np.testing.assert_array_equal(monotonic_path(planted_attention(rng, planted, columns), pace_width=4.0), planted)


@pytest.mark.parametrize("seed", range(8))
def test_paced_path_score_equals_the_brute_force_optimum(seed):
    rng = np.random.default_rng(100 + seed)
    steps, columns = int(rng.integers(2, 7)), int(rng.integers(1, 5))
    attention = rng.random((steps, columns))
    attention[rng.random((steps, columns)) < 0.2] = 0.0  # cells no window wrote
    width = float(rng.uniform(0.3, 3.0))
    scores = paced_scores(attention, width)
    assert np.isfinite(scores).all()
    best = max(
        path_score(scores, np.array(candidate))
        for candidate in itertools.combinations_with_replacement(range(columns), steps)
        if candidate[0] == 0 and candidate[-1] == columns - 1
    )
    assert path_score(scores, monotonic_path(attention, pace_width=width)) == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize(("attention", "width", "message"), [
    (np.ones((4, 3)), 0.0, "pace_width must be a positive"),
    (np.ones((4, 3)), float("nan"), "pace_width must be a positive"),
    (-np.ones((4, 3)), 1.0, "must not be negative"),
])  # fmt: skip
def test_paced_scores_reject_bad_widths_and_negative_attention(attention, width, message):
    with pytest.raises(ValueError, match=message):
        monotonic_path(attention, pace_width=width)


def test_all_zero_rows_still_give_a_valid_path():
    attention = np.zeros((10, 6))
    attention[4, 2] = 1.0
    path = monotonic_path(attention)
    assert path[0] == 0 and path[-1] == 5 and (np.diff(path) >= 0).all()
    assert path[4] == 2


def test_one_token_paths_need_first_equal_to_last():
    np.testing.assert_array_equal(monotonic_path(np.ones((1, 4)), first=2, last=2), [2])
    with pytest.raises(ValueError, match="single token"):
        monotonic_path(np.ones((1, 4)))


@pytest.mark.parametrize(("first", "last"), [(3, 2), (-1, 2), (0, 4), (5, None)])
def test_bad_path_ends_are_rejected(first, last):
    with pytest.raises(ValueError, match="first"):
        monotonic_path(np.ones((6, 4)), first=first, last=last)


# word_times


def test_a_constructed_path_gives_exact_seconds():
    # The path skips the space (column 2) when it jumps from "b" to "c" at token 3.
    words = word_times("ab cd", np.array([0, 0, 1, 3, 3, 4]), seconds_per_token=0.5)
    assert words == [WordTime("ab", 0.0, 1.5), WordTime("cd", 1.5, 3.0)]


def test_first_offsets_a_relative_path_and_outside_words_are_excluded():
    text = "intro la-la, sung words outro"
    first = text.index("la-la")
    relative = np.array([0, 0, 3, 4, 4, 7, 12, 12])  # ends on the "w" of "words"
    words = word_times(text, relative, seconds_per_token=0.25, first=first)
    assert [w.word for w in words] == ["la-la,", "sung", "words"]
    assert words[0] == WordTime("la-la,", 0.0, 1.25)  # "," is skipped: it ends at the jump on token 5
    assert words[1] == WordTime("sung", 1.25, 1.5)  # "s" holds token 5, "ung" is skipped at token 6
    assert words[2] == WordTime("words", 1.5, 2.0)  # only "w" is inside the aligned range


@pytest.mark.parametrize("seed", range(5))
def test_word_times_are_monotonic_on_random_paths(seed):
    rng = np.random.default_rng(seed)
    text = random_lyrics(rng, 30)
    low = int(rng.integers(0, len(text) // 3))
    high = int(rng.integers(2 * len(text) // 3, len(text)))
    words = word_times(text, planted_path(rng, int(rng.integers(2, 200)), low, high), seconds_per_token=0.01)
    starts, ends = np.array([w.start for w in words]), np.array([w.end for w in words])
    assert (np.diff(starts) >= 0).all() and (np.diff(ends) >= 0).all()
    assert (ends >= starts).all()
    assert (ends[:-1] <= starts[1:] + 1e-9).all()
    inside = [m.group() for m in re.finditer(r"\S+", text) if m.start() <= high and m.end() - 1 >= low]
    assert [w.word for w in words] == inside


def test_word_times_rejects_a_decreasing_path():
    with pytest.raises(ValueError, match="non-decreasing"):
        word_times("abc", np.array([0, 2, 1]), 0.1)


# outputs


def test_alignment_json_rounds_to_milliseconds_and_slices_the_lyrics():
    summary = alignment_json([WordTime("cd", 1.23456, 2.0004)], "ab cd ef", 3, 4, 7.5)
    assert summary == {
        "words": [{"word": "cd", "start": 1.235, "end": 2.0}],
        "lyrics_window": {"first_char": 3, "last_char": 4, "text": "cd"},
        "duration": 7.5,
    }


@pytest.mark.parametrize("columns", [12, 150])
def test_heatmap_is_a_png(columns):
    rng = np.random.default_rng(columns)
    path = planted_path(rng, 40, 0, columns - 1)
    png = heatmap_png(planted_attention(rng, path, columns), "x" * columns, 0.02, path, title="t")
    assert png.startswith(PNG_SIGNATURE)


def test_html_escapes_the_lyrics_and_marks_only_aligned_words():
    text = "<b>bold</b> & more"
    words = [WordTime("&", 0.5, 1.0), WordTime("more", 1.0, 2.0)]
    page = alignment_html(words, text, np.zeros(100), 1000, title="a <title>", details={"genre": "<pop>"})
    assert "<b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;pop&gt;" in page and "a &lt;title&gt;" in page
    assert re.findall(r'<span data-start="([\d.]+)" data-end="([\d.]+)">([^<]*)</span>', page) == [
        ("0.500", "1.000", "&amp;"),
        ("1.000", "2.000", "more"),
    ]
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_html_rejects_words_that_are_not_in_the_text():
    with pytest.raises(ValueError, match="not in the text"):
        alignment_html([WordTime("missing", 0.0, 1.0)], "some lyrics", np.zeros(10), 1000)


def test_write_alignment_writes_monotonic_json_a_png_and_a_playable_page(tmp_path):
    rng = np.random.default_rng(7)
    text = random_lyrics(rng, 25)
    low, high = int(rng.integers(3, 20)), len(text) - int(rng.integers(3, 20))
    steps, seconds_per_token, sample_rate = 300, 128 / 4000, 4000
    planted = planted_path(rng, steps, low, high)
    attention = np.zeros((steps, len(text)), dtype=np.float32)
    attention[:, low : high + 1] = planted_attention(rng, planted - low, high - low + 1)
    audio = rng.uniform(-1.2, 1.2, int(rng.integers(5000, 9000)))

    written = write_alignment(
        tmp_path / "out", "song", attention, text, seconds_per_token, audio, sample_rate, {"seed": "7"}
    )

    assert set(written) == {"json", "png", "html"}
    summary = json.loads(written["json"].read_text())
    assert summary["lyrics_window"] == {"first_char": low, "last_char": high, "text": text[low : high + 1]}
    assert summary["duration"] == pytest.approx(steps * seconds_per_token)
    expected = word_times(text, planted, seconds_per_token)
    assert [(w["word"], w["start"], w["end"]) for w in summary["words"]] == [
        (w.word, round(w.start, 3), round(w.end, 3)) for w in expected
    ]
    starts = [w["start"] for w in summary["words"]]
    ends = [w["end"] for w in summary["words"]]
    assert starts == sorted(starts) and ends == sorted(ends)
    assert written["png"].read_bytes().startswith(PNG_SIGNATURE)

    page = written["html"].read_text(encoding="utf-8")
    encoded = re.search(r'src="data:audio/wav;base64,([A-Za-z0-9+/=]+)"', page)
    assert encoded is not None
    decoded, rate = soundfile.read(io.BytesIO(base64.b64decode(encoded.group(1))))
    assert rate == sample_rate and decoded.shape == audio.shape
    np.testing.assert_allclose(decoded, np.clip(audio, -1, 1), atol=1 / 16384)
    assert page.count("<span data-start=") == len(expected)


def test_write_alignment_without_audio_skips_the_page(tmp_path):
    attention = np.zeros((4, 5))
    attention[:, 1:3] = 0.5
    written = write_alignment(tmp_path, "quiet", attention, "ab cd", 0.1, None, 16000)
    assert set(written) == {"json", "png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quiet.json", "quiet.png"]


def test_an_all_zero_matrix_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no attention on any lyric character"):
        write_alignment(tmp_path, "silent", np.zeros((10, 5)), "ab cd", 0.1, np.zeros(100), 1000)
    assert not any(tmp_path.iterdir())


def test_a_sampler_refuses_a_negative_alignment_pace():
    with pytest.raises(JukeboxError, match="alignment_pace is a fraction of the lyric window"):
        build("sampler", {"_component_": "ancestral", "vqvae": "unused", "alignment_pace": -0.1})
