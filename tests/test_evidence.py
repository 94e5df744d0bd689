"""The pieces of the prior evidence: other songs' labels and upper codes, word onsets and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jukebox_pl.errors import JukeboxError
from jukebox_pl.pipelines.evidence import (
    ONSET_TOLERANCE,
    VOWELS,
    code_bits_given,
    known_errors,
    known_onsets,
    onset_errors,
    other_song_rows,
    proportional_onsets,
    summarise_errors,
    swapped_labels,
    syllable_vowel,
    word_onsets,
)


def _bag(row: list[int]) -> set[int]:
    return {g for g in row if g != -1}


def test_swapped_labels_never_keep_a_windows_own_and_prefer_another_artist_and_genre():
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    artists = torch.randint(1, 5, (40,), generator=generator)
    genres = torch.randint(-1, 4, (40, 2), generator=generator)
    new_artists, new_genres = swapped_labels(artists, genres)
    same = (new_artists == artists) & (new_genres == genres).all(-1)
    assert not bool(same.any())
    pairs = [tuple(row) for row in torch.cat([artists[:, None], genres], 1).tolist()]
    assert {tuple(row) for row in torch.cat([new_artists[:, None], new_genres], 1).tolist()} <= set(pairs)
    for (artist, *bag), new_artist, new_bag in zip(pairs, new_artists.tolist(), new_genres.tolist(), strict=True):
        possible = any(a != artist and not _bag(bag) & _bag(b) for a, *b in pairs)
        if possible:  # another artist and none of the window's genres, wherever the windows hold one
            assert new_artist != artist and not _bag(bag) & _bag(new_bag)
        elif any(a != artist for a, *_ in pairs):
            assert new_artist != artist


def test_swapped_labels_pass_over_the_same_genre_and_the_same_artist():
    # two composers of one genre (0), one artist in two genres (1 and 2), ids sorted as the vocabulary sorts
    haydn, mozart, traditional = 3, 4, 6
    artists = torch.tensor([haydn, mozart, traditional, traditional, haydn])
    genres = torch.tensor([[0, -1], [0, -1], [1, -1], [2, -1], [0, -1]])
    new_artists, new_genres = swapped_labels(artists, genres)
    assert new_artists.tolist() == [traditional, traditional, haydn, haydn, traditional]
    assert new_genres[:, 0].tolist() == [1, 1, 0, 0, 1]
    with pytest.raises(JukeboxError, match="single artist"):
        swapped_labels(artists[:1], genres[:1])


def test_other_song_rows_come_from_another_song_for_every_window():
    songs = ["a", "a", "a", "b", "b", "c", "c", "c", "c"]
    upper = torch.arange(len(songs))[:, None].repeat(1, 3)  # window i's codes are all i
    swapped = other_song_rows(upper, songs)
    for index, row in enumerate(swapped):
        source = int(row[0])
        assert songs[source] != songs[index]
    with pytest.raises(JukeboxError, match="single song"):
        other_song_rows(upper[:3], songs[:3])


def test_word_onsets_join_syllables_into_the_words_of_the_lyrics():
    rng = np.random.default_rng()
    syllables, words, onset = [], [], 0.0
    for _ in range(int(rng.integers(3, 9))):
        parts = ["".join(rng.choice(list("aeioulmnrst"), int(rng.integers(1, 4)))) for _ in range(rng.integers(1, 4))]
        words.append("".join(parts))
        for part in parts:
            syllables.append({"text": part, "onset": round(onset, 3)})
            onset += float(rng.uniform(0.2, 1.0))
    firsts, index = [], 0
    for word in words:
        firsts.append(syllables[index]["onset"])
        spelled = ""
        while spelled != word:
            spelled += syllables[index]["text"]
            index += 1
    assert word_onsets(" ".join(words), syllables) == pytest.approx(firsts)
    # A word the syllables do not spell ends the known onsets there.
    assert word_onsets(" ".join(["zzz", *words]), syllables) == []


def test_onset_errors_and_their_summary():
    true = [0.0, 1.0, 2.0, 3.0]
    predicted = [0.1, 1.7, 2.0]
    errors = onset_errors(predicted, true)
    assert errors == pytest.approx([0.1, 0.7, 0.0])
    summary = summarise_errors(errors)
    assert summary["words"] == 3
    assert summary["median_onset_error"] == pytest.approx(0.1)
    assert summary["within_tolerance"] == pytest.approx(2 / 3)
    assert ONSET_TOLERANCE == 0.5
    assert summarise_errors(np.zeros(0)) == {"words": 0}


def test_even_pace_onsets_spread_the_words_over_the_song_by_their_characters():
    seconds = float(np.random.default_rng().uniform(5, 50))
    text = "ab cdef gh"
    assert proportional_onsets(text, seconds) == pytest.approx([0.0, seconds * 3 / 10, seconds * 8 / 10])


def test_line_times_give_the_onset_of_each_lines_first_word():
    rng = np.random.default_rng()
    lines, words, firsts, index = [], [], {}, 0
    for t in np.sort(rng.uniform(0, 120, size=int(rng.integers(2, 7)))):
        line_words = ["w" + str(int(n)) for n in rng.integers(0, 100, size=int(rng.integers(0, 5)))]
        lines.append({"time": float(t), "text": " ".join(line_words)})
        if line_words:
            firsts[index] = float(t)
        index += len(line_words)
        words += line_words
    lyrics = "\n".join(line["text"] for line in lines if line["text"])
    assert known_onsets({"lyrics": lyrics, "lyric_lines": lines}) == pytest.approx(firsts)
    predicted = [firsts.get(i, 0.0) + 0.25 for i in range(len(words))]
    assert known_errors(predicted, known_onsets({"lyrics": lyrics, "lyric_lines": lines})) == pytest.approx(
        [0.25] * len(firsts)
    )
    assert known_onsets({"lyrics": lyrics + " extra", "lyric_lines": lines}) == {}


def test_a_syllables_vowel_is_its_first_vowel_letter_accents_dropped():
    assert syllable_vowel("Schön") == VOWELS.index("o") and syllable_vowel("Gü") == VOWELS.index("u")
    assert syllable_vowel("bach") == VOWELS.index("a") and syllable_vowel("str") is None


def test_codes_that_follow_the_vowel_cost_fewer_bits_given_it_and_independent_ones_no_fewer():
    rng = np.random.default_rng()
    size, count = 64, 20000
    fit_vowels, vowels = rng.integers(0, 5, count), rng.integers(0, 5, count)
    # each vowel keeps to its own eight codes; the other codes are drawn whatever is sung
    fit_codes, codes = (v * 8 + rng.integers(0, 8, count) for v in (fit_vowels, vowels))
    given = code_bits_given(codes, vowels, fit_codes, fit_vowels, size)
    shuffled = code_bits_given(codes, vowels, fit_codes, rng.permutation(fit_vowels), size)
    # Shuffled, each vowel's histogram is a random mixture of the five vowels' codes, about uniform over all 40:
    # log2(40), give or take how unevenly the mixture happens to weigh the test vowel's own codes (at most 0.07
    # bits either way in 600 seeds).
    assert given == pytest.approx(3.0, abs=0.05) and shuffled == pytest.approx(np.log2(40), abs=0.15)
    loose, loose_fit = rng.integers(0, size, count), rng.integers(0, size, count)
    independent = code_bits_given(loose, vowels, loose_fit, fit_vowels, size)
    assert independent == pytest.approx(6.0, abs=0.05)  # log2(64): the vowel tells nothing
