"""Lyrics vocabularies, cleaning, the lyric window, and artist/genre vocabularies."""

from __future__ import annotations

import random

import numpy as np
import pytest

from jukebox_pl.data.labels import GENRE_PADDING, Labeller, UnknownLabelWarning, Vocabulary, normalise_name
from jukebox_pl.data.text import LyricsProcessor, line_anchors, lyric_window


def test_vocabularies_have_jukebox_sizes():
    assert LyricsProcessor("v2").n_vocab == 80
    assert LyricsProcessor("v3").n_vocab == 79
    assert "+" in LyricsProcessor("v2").clean("a+b") and "+" not in LyricsProcessor("v3").clean("a+b")
    with pytest.raises(ValueError, match="'v2' or 'v3'"):
        LyricsProcessor("v4")


def test_cleaning_transliterates_and_drops_what_is_outside_the_vocabulary():
    processor = LyricsProcessor("v2")
    assert processor.clean("Straße naïve café") == "Strasse naive cafe"
    assert processor.clean("line one\\line two") == "line one\nline two"
    assert processor.clean("sing 🎵 along ✨") == "sing  along "
    assert processor.clean("日本") == "Ri Ben "  # unidecode's transliteration, then kept


def test_tokens_round_trip_for_random_vocabulary_text():
    processor = LyricsProcessor("v3")
    text = "".join(random.choice(processor.characters) for _ in range(500))
    tokens = processor.tokenize(text)
    assert min(tokens) >= 1 and max(tokens) < processor.n_vocab
    assert processor.detokenize(tokens) == text


def _reference_window_start(n_lyrics: int, n_tokens: int, total: int, offset: int, duration: int) -> int:
    # The linear heuristic written out independently: the character at the crop's midpoint,
    # proportionally, sits in the middle of the window, which is clamped to the lyrics.
    midpoint = int(n_lyrics * (offset + duration / 2.0) / total)
    midpoint = min(max(midpoint, n_tokens // 2), n_lyrics - n_tokens // 2)
    return midpoint - n_tokens // 2


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_lyric_window_follows_the_crop_through_the_song(where):
    rng = np.random.default_rng()
    # Up to 1,900 characters: the last crop's midpoint then falls within half a window of the lyrics' end,
    # so its window is the last n_tokens (at 2,000 it falls 34 characters before the end).
    n_lyrics, n_tokens, total, duration = int(rng.integers(300, 1900)), 64, 44100 * 180, 262144
    offset = {"start": 0, "middle": total // 2 - duration // 2, "end": total - duration}[where]
    tokens = rng.integers(1, 80, size=n_lyrics)
    window, indices = lyric_window(tokens, n_tokens, total, offset, duration)
    start = _reference_window_start(n_lyrics, n_tokens, total, offset, duration)
    np.testing.assert_array_equal(indices, np.arange(start, start + n_tokens))
    np.testing.assert_array_equal(window, tokens[start : start + n_tokens])
    if where == "start":
        assert start == 0
    if where == "end":
        assert start == n_lyrics - n_tokens
    if where == "middle":
        assert abs(start + n_tokens // 2 - n_lyrics // 2) <= 1


def test_short_lyrics_are_left_padded_and_odd_windows_are_full():
    tokens = np.arange(1, 6)
    window, indices = lyric_window(tokens, 8, 1000, 10, 100)
    np.testing.assert_array_equal(window, [0, 0, 0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(indices, [-1, -1, -1, 0, 1, 2, 3, 4])
    window, _ = lyric_window(np.arange(1, 100), 7, 1000, 500, 10)
    assert len(window) == 7
    with pytest.raises(ValueError, match="offset 1000 must lie in a song of 1000"):
        lyric_window(np.arange(1, 100), 7, 1000, 1000, 10)


def test_names_normalise_so_spellings_of_one_artist_meet():
    assert normalise_name("J.S. Bach") == normalise_name("J. S. Bach") == normalise_name("j_s_bach") == "j_s_bach"
    vocabulary = Vocabulary(["J.S. Bach", "Palestrina"])
    assert vocabulary.id("J. S. Bach") == 1 and vocabulary.add("j s bach") == 1 and len(vocabulary) == 3


def test_unknown_names_map_to_zero_with_one_warning_per_name():
    vocabulary = Vocabulary(["Mozart"], kind="artist")
    with pytest.warns(UnknownLabelWarning, match="is not in the vocabulary") as caught:
        assert vocabulary.id("Satie") == 0
        assert vocabulary.id("satie") == 0
        assert vocabulary.id("Ravel") == 0
    assert [str(w.message).split(" is ")[0] for w in caught] == ["artist 'Satie'", "artist 'Ravel'"]


def test_vocabulary_round_trips_through_its_saved_form():
    names = [f"artist {random.random():.6f}" for _ in range(20)]
    vocabulary = Vocabulary(names)
    restored = Vocabulary.from_dict(vocabulary.to_dict())
    assert restored.names == vocabulary.names
    with pytest.raises(ValueError, match="0 = 'unknown'"):
        Vocabulary.from_dict({"a": 0, "b": 1})


def test_labeller_pads_and_truncates_the_bag_of_genres():
    genres = Vocabulary(["folk", "mass", "chorale"], kind="genre")
    labeller = Labeller(Vocabulary(["Bach"]), genres, max_genres=2, n_tokens=4)
    song = labeller.song({"artist": "Bach", "genres": ["chorale"], "lyrics": "Ah"})
    np.testing.assert_array_equal(song.genres, [3, GENRE_PADDING])
    song = labeller.song({"artist": "Bach", "genres": ["folk", "mass", "chorale"], "lyrics": ""})
    np.testing.assert_array_equal(song.genres, [1, 2])
    np.testing.assert_array_equal(labeller.window(song, 100, 0, 10), [0, 0, 0, 0])


def test_vocabulary_ids_that_are_not_small_integers_are_refused():
    for ids in ({"unknown": 0, "Bach": "1"}, {"unknown": 0, "Bach": True}, {"unknown": 0, "Bach": 2**40}, [1, 2]):
        with pytest.raises(ValueError, match="ids must map names to integers from 0 to 1048575"):
            Vocabulary.from_dict(ids)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"lyrics": ["la", "la"]}, "'lyrics' must be text, not list"),
        ({"genres": True}, "'genres' must be a list of names, not True"),
        ({"genres": ["folk", 3]}, r"'genres' must be a list of names, not \['folk', 3\]"),
        ({"artist": {"name": "Bach"}}, "'artist' must be a name, not"),
    ],
)
def test_a_label_field_of_the_wrong_type_is_a_value_error_naming_it(metadata, message):
    labeller = Labeller(Vocabulary(["Bach"]), Vocabulary(["folk"], kind="genre"), n_tokens=8)
    with pytest.raises(ValueError, match=message):
        labeller.song(metadata)
    song = labeller.song({"artist": None, "genres": None, "lyrics": None})  # absent fields are still fine
    assert song.artist == 0 and (song.genres == GENRE_PADDING).all() and len(song.lyric_tokens) == 0


def test_timed_lines_move_the_lyric_window_with_the_singing():
    rng = np.random.default_rng()
    processor = LyricsProcessor("v2")
    texts = ["".join(rng.choice(list("abcdefgh "), int(rng.integers(20, 60)))).strip() or "la" for _ in range(6)]
    seconds, rate = float(rng.uniform(60, 200)), 100
    # A long instrumental opening (an even spread would start singing too soon), then lines at least 1 s
    # apart: a line of up to 60 characters over 100 or more samples puts under one token on each sample.
    gaps = rng.uniform(1.0, seconds * 0.1, size=len(texts) - 1)
    times = seconds * 0.25 + np.concatenate([[0.0], np.cumsum(gaps)])
    lines = [{"time": float(t), "text": text} for t, text in zip(times, texts, strict=True)]
    lyrics = "\n".join(texts)
    tokens = processor.tokenize(lyrics)
    anchors = line_anchors(lines, lyrics, seconds, processor)
    total, n_tokens = int(seconds * rate), 16
    for k, line in enumerate(lines):
        centre = int(line["time"] * rate)  # a crop centred on the start of line k
        _, indices = lyric_window(tokens, n_tokens, total, centre - 50, 100, anchors)
        first = len(processor.tokenize("\n".join(texts[:k]) + ("\n" if k else "")))
        expected = min(max(first - n_tokens // 2, 0), len(tokens) - n_tokens)
        assert abs(indices[0] - expected) <= 1  # the crop's centre falls on the line's start to within a sample
        even = min(max(int(len(tokens) * line["time"] / seconds) - n_tokens // 2, 0), len(tokens) - n_tokens)
        assert k > 0 or abs(even - expected) > 1  # the first line starts late: the even spread misplaces it
    # Lines that do not spell the lyrics are not trusted: the even spread is used.
    assert line_anchors(lines, lyrics + " more", seconds, processor) is None


def test_the_labeller_places_windows_by_the_line_times_a_song_carries():
    processor = LyricsProcessor("v2")
    lines = [{"time": 0.0, "text": "a" * 40}, {"time": 90.0, "text": "b" * 40}]
    metadata = {"lyrics": "a" * 40 + "\n" + "b" * 40, "lyric_lines": lines, "samples": 100 * 100, "sample_rate": 100}
    labeller = Labeller(Vocabulary(), Vocabulary(kind="genre"), n_tokens=8)
    song = labeller.song(metadata)
    # Half-way through the song the first line is still sung (the second starts at 90 s of 100).
    window = labeller.window(song, 10000, 4950, 100)
    assert processor.detokenize(window) == "a" * 8
    untimed = labeller.song({**metadata, "lyric_lines": []})
    assert processor.detokenize(labeller.window(untimed, 10000, 4950, 100)) == "aaaa\nbbb"
