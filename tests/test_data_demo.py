"""The demo dataset: composer names, singing on pitch, and a small real build."""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import shutil

import numpy as np
import parselmouth
import pytest
import soundfile as sf

from jukebox_pl.data.demo import build_demo_dataset
from jukebox_pl.data.rendering import SAMPLE_RATE, normalise_composer
from jukebox_pl.data.singing import seed_voice, sing


def test_composer_names_are_normalised():
    assert normalise_composer("Palestrina, Giovanni Perluigi da") == "Giovanni Perluigi da Palestrina"
    assert normalise_composer("  Francesco   Landini ") == "Francesco Landini"
    assert normalise_composer("Bartholus F-Pn 568") == "Bartholus"
    assert normalise_composer("anonymous") == normalise_composer(None) == normalise_composer("") == "Anonymous"


@pytest.mark.parametrize("voice", ["de+f3", "it+f3"])
def test_a_syllable_is_sung_at_the_note_pitch_and_length(voice):
    pitch = random.randint(62, 74)
    seconds = random.uniform(0.5, 1.2)
    sung = sing("la", [(pitch, seconds)], voice, SAMPLE_RATE)
    assert len(sung) == round(seconds * SAMPLE_RATE)
    expected = 440.0 * 2 ** ((pitch - 69) / 12)
    # Praat's tracker takes a voice with a strong second harmonic an octave low on high notes (D5
    # read as D4 while the spectrum holds nothing at D4), so it searches from a fourth below the
    # note, and the spectrum shows that the octave below is not what is sung.
    audio = sung.astype(np.float64)
    analysis = parselmouth.Sound(audio, SAMPLE_RATE).to_pitch(pitch_floor=0.75 * expected, pitch_ceiling=1200)
    frequencies = analysis.selected_array["frequency"]
    voiced = frequencies[frequencies > 0]
    assert len(voiced) > 5
    cents = 1200 * np.log2(np.median(voiced) / expected)
    assert abs(cents) < 50, f"sung {np.median(voiced):.1f} Hz for {expected:.1f} Hz"
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    hz = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)

    def peak(frequency: float) -> float:
        return spectrum[(hz > 0.97 * frequency) & (hz < 1.03 * frequency)].max()

    assert peak(expected / 2) < 0.1 * peak(expected)


def _sung_after(history: list[str], key: str, text: str, pitch: int) -> np.ndarray:
    for syllable in history:  # what the process sang before
        sing(syllable, [(60, 0.3)], "de+f3", SAMPLE_RATE)
    seed_voice(key)
    return sing(text, [(pitch, 0.4), (pitch + 2, 0.3)], "de+f3", SAMPLE_RATE)


def test_a_seeded_syllable_sings_the_same_in_every_fresh_process():
    # espeak-ng and Praat's overlap-add draw random numbers, and espeak-ng keeps state between utterances: the demo
    # renders each piece in a fresh process, seeded by its name. Two fresh processes agree to the sample; a process
    # that sang something else first does not, which is why the builder never reuses one.
    text, pitch = random.choice(["la", "mi", "nun"]), random.randint(60, 72)
    jobs = [([], "piece", text, pitch), ([], "piece", text, pitch), (["so", "re"], "piece", text, pitch)]
    with multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
        first, second, after = pool.starmap(_sung_after, jobs, chunksize=1)
    assert np.abs(first).max() > 0.05
    assert np.array_equal(first, second)
    assert not np.array_equal(first, after)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, build_demo_dataset(out, minutes=0.6, max_seconds=6.0, workers=2)


def test_small_build_renders_labelled_sung_music(small_demo):
    out, manifest = small_demo
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert manifest["counts"]["songs"] == len(rows) >= 4
    assert {"J.S. Bach", "Claudio Monteverdi"} <= {row["artist"] for row in rows}
    assert {"chorale", "madrigal"} <= {row["genre"][0] for row in rows}
    sung = [row for row in rows if row["syllables"]]
    assert sung and all(row["lyrics"] for row in sung)
    for row in sung:
        onsets = [s["onset"] for s in row["syllables"]]
        assert onsets == sorted(onsets) and 0 <= onsets[0] and onsets[-1] < 6.0
        assert row["lyrics"].replace(" ", "").startswith(row["syllables"][0]["text"])
    for row in rows:
        audio, rate = sf.read(out / "audio" / row["path"])
        assert rate == SAMPLE_RATE and audio.shape[1] == 2
        assert 6.0 <= len(audio) / rate <= 7.6  # cut at 6 s, plus at most the 1.5 s release
        peak = np.abs(audio).max()
        tail = np.sqrt(np.mean(audio[-int(0.1 * rate) :] ** 2))
        assert 0.5 < peak <= 0.9 and tail < 0.05 * peak  # every note ended: nothing hangs at the end
    assert (out / "shards" / "dataset.json").is_file()


def test_a_second_build_reuses_the_first(small_demo, caplog):
    out, manifest = small_demo
    # max_seconds as an int, as a recipe would write it: the same options, the same cache
    caplog.set_level(logging.INFO, logger="jukebox_pl")
    caplog.clear()
    again = build_demo_dataset(out, minutes=0.6, max_seconds=6, workers=2)
    lines = caplog.messages
    assert lines == [lines[0]] and "up to date" in lines[0]
    assert again["counts"] == manifest["counts"]


@pytest.mark.slow  # renders the small demo again (about 27 s): with the long tests
def test_a_build_with_other_options_renders_again(small_demo, tmp_path):
    # The render journal of the 6 s build is in the copy: at 5 s none of its pieces may be reused.
    out = tmp_path / "demo"
    shutil.copytree(small_demo[0], out)
    build_demo_dataset(out, minutes=0.6, max_seconds=5.0, workers=2)
    for row in (json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()):
        seconds = sf.info(str(out / "audio" / row["path"])).duration
        assert 5.0 <= seconds <= 6.5, (row["path"], seconds)


@pytest.mark.slow  # renders the small demo again
def test_a_build_renders_the_same_audio_whatever_the_workers(small_demo, tmp_path):
    out, _ = small_demo
    build_demo_dataset(tmp_path, minutes=0.6, max_seconds=6.0, workers=1)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert any(row["syllables"] for row in rows)
    assert (tmp_path / "metadata.jsonl").read_text() == (out / "metadata.jsonl").read_text()
    for row in rows:
        again, first = (folder / "audio" / row["path"] for folder in (tmp_path, out))
        assert again.read_bytes() == first.read_bytes(), row["path"]


@pytest.mark.slow
def test_default_demo_dataset_has_the_promised_variety(tmp_path):
    manifest = build_demo_dataset(tmp_path / "demo")
    counts = manifest["counts"]
    assert manifest["total_seconds"] >= 20 * 60
    assert len(manifest["artists"]) - 1 >= 4 and len(manifest["genres"]) - 1 >= 4
    assert counts["with_lyrics"] >= counts["songs"] / 4


def test_measures_after_the_cut_are_dropped_and_the_notes_before_it_kept():
    from music21 import note, stream, tie

    from jukebox_pl.data.rendering import _drop_measures_after, _note_events

    measures = random.randint(4, 8)
    cut = random.uniform(4.5, 4.0 * (measures - 1) - 0.5)  # in quarters, inside some measure but the first

    def score() -> stream.Score:
        part = stream.Part()
        for number in range(measures):
            bar = stream.Measure(number=number + 1)
            pitch = 60 + number if number % 2 == 0 else 60 + number - 1  # odd bars hold the note of the bar before
            first = note.Note(pitch, quarterLength=4.0)
            if number % 2 == 0 and number + 1 < measures:
                first.tie = tie.Tie("start")
            elif number % 2 == 1:
                first.tie = tie.Tie("stop")
            bar.append(first)
            part.append(bar)
        return stream.Score([part])

    def played(whole: stream.Score) -> list[tuple[float, float, int]]:
        whole.stripTies(inPlace=True)
        return [
            (onset, min(duration, cut - onset), pitch)
            for onset, duration, pitch, _ in _note_events(whole, 1.0)
            if onset < cut
        ]

    cropped = score()
    _drop_measures_after(cropped, cut)
    assert len(cropped.parts[0].getElementsByClass(stream.Measure)) == int(-(-cut // 4))
    assert played(cropped) == played(score())
