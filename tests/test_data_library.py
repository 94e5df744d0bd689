"""A music folder becomes shards without a metadata file: tags, lyric files, folders, formats, the dry run."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
from library_fixtures import lrc_text, make_library

from jukebox_pl.data.labels import Labeller, Vocabulary
from jukebox_pl.data.library import folder_labels, split_genres
from jukebox_pl.data.lyric_files import parse_lrc, parse_lyrics
from jukebox_pl.data.shard_reader import MANIFEST, shard_samples
from jukebox_pl.data.shards import write_shards


def _songs(out) -> dict[str, dict]:
    """Every song's shard JSON, by the name of the file it came from (both splits: the split is a hash)."""
    manifest = json.loads((out / MANIFEST).read_text())
    urls = [str(out / shard["name"]) for split in manifest["shards"].values() for shard in split]
    return {meta["source"].split("/")[-1]: meta for _, _, meta in shard_samples(urls, ("flac",))}


def test_a_library_folder_becomes_labelled_shards_with_lyrics_and_line_times(tmp_path, caplog):
    library = make_library(tmp_path / "music")
    caplog.set_level(logging.INFO, logger="jukebox_pl")
    caplog.clear()
    manifest = write_shards(tmp_path / "music", None, tmp_path / "out", sample_rate=22050)
    lines = caplog.messages
    songs = _songs(tmp_path / "out")
    assert sorted(songs) == sorted(library.expected)
    for name, expected in library.expected.items():
        song = songs[name]
        assert song["artist"] == expected["artist"], name
        assert song["genres"] == expected["genres"], name
        assert song["title"] == expected["title"], name
        assert song["lyrics"] == expected["lyrics"], name
        times = [line["time"] for line in song.get("lyric_lines", [])]
        assert times == pytest.approx(expected.get("times", [])), name
        assert song["sample_rate"] == 22050 and song["samples"] == pytest.approx(3.0 * 22050, abs=2100), name
    assert manifest["counts"]["songs"] == len(library.expected)
    assert manifest["counts"]["with_lyrics"] == sum(bool(e["lyrics"]) for e in library.expected.values())
    assert set(manifest["artists"]) == {"unknown"} | {e["artist"] for e in library.expected.values()}
    for name, reason in library.skipped.items():
        (line,) = [line for line in lines if line.startswith("skipped ") and name in line]
        assert reason in line, line
    assert not any("Trying to resync" in line or "cover.jpg" in line for line in lines)
    # The line times reach the lyric window: the labeller anchors the .lrc song's window on them.
    labeller = Labeller(Vocabulary(), Vocabulary(kind="genre"), n_tokens=8)
    timed = songs["01 - Opening.flac"]
    anchors = labeller.song(timed).lyric_anchors
    seconds = timed["samples"] / timed["sample_rate"]
    assert anchors[0, 1:-1] == pytest.approx(np.array(library.expected["01 - Opening.flac"]["times"]) / seconds)


def test_the_dry_run_prints_the_table_and_the_skips_and_writes_nothing(run_cli, tmp_path):
    library = make_library(tmp_path / "music")
    code, out, err = run_cli("data", "shards", "--audio", tmp_path / "music", "--out", tmp_path / "out", "--dry-run")
    assert code == 0, err
    assert not (tmp_path / "out").exists()
    expected = library.expected.values()
    n = len(library.expected)
    assert f"  songs      {n}\n" in out
    assert f"  minutes    {3.0 * n / 60:.1f}\n" in out
    assert f"  artists    {len({e['artist'] for e in expected})}: The Tagged Band (3)" in out
    assert f"  genres     {len({g for e in expected for g in e['genres']})}: Rock (2), Pop (2)" in out
    assert f"  lyrics     {sum(bool(e['lyrics']) for e in expected)} of {n} songs, 1 with line times (.lrc)" in out
    assert f"would skip {len(library.skipped)} files:" in out
    for name, reason in library.skipped.items():
        assert any(name in line and reason in line for line in out.splitlines()), (name, out)
    assert "    artist   folder 1, tags " in out


def test_a_metadata_file_overrides_the_tags_field_by_field(tmp_path):
    library = make_library(tmp_path / "music")
    row = {"path": "Tag Artist/First Album/01 - Opening.flac", "artist": "Given Artist", "year": 1999}
    (tmp_path / "meta.jsonl").write_text(json.dumps(row) + "\n")
    write_shards(tmp_path / "music", tmp_path / "meta.jsonl", tmp_path / "out")
    (song,) = _songs(tmp_path / "out").values()
    expected = library.expected["01 - Opening.flac"]
    assert song["artist"] == "Given Artist" and song["year"] == 1999
    assert [song[name] for name in ("genres", "title", "lyrics")] == [
        expected[n] for n in ("genres", "title", "lyrics")
    ]
    assert [line["time"] for line in song["lyric_lines"]] == pytest.approx(expected["times"])


def test_a_song_moved_in_the_library_rebuilds_the_dataset(tmp_path):
    make_library(tmp_path / "music")
    first = write_shards(tmp_path / "music", None, tmp_path / "out")
    (tmp_path / "music" / "Opus Player").mkdir()
    (tmp_path / "music" / "loose track.opus").rename(tmp_path / "music" / "Opus Player" / "moved.opus")
    second = write_shards(tmp_path / "music", None, tmp_path / "out")
    assert second["counts"]["songs"] == first["counts"]["songs"]
    assert "moved.opus" in _songs(tmp_path / "out")


def test_lrc_lines_keep_their_times_offset_and_repeats():
    rng = np.random.default_rng()
    times = np.round(np.sort(rng.uniform(0, 300, size=4)), 2).tolist()
    offset = int(rng.integers(-500, 500))
    text = lrc_text(["one", "two <00:01.00>words", "", "four"], times, offset)
    lyrics = parse_lrc(text + "[99:00.00][00:00.50]chorus\n")
    expected = sorted([*(max(t - offset / 1000, 0) for t in times), 5940 - offset / 1000, 0.5 - offset / 1000])
    assert [line["time"] for line in lyrics.lines] == pytest.approx([max(t, 0) for t in expected], abs=1e-3)
    assert "two words" in lyrics.text and "\n\n" not in lyrics.text and lyrics.tags["ar"] == "Ignored When Tagged"
    assert parse_lyrics("just words\n[not a time]").lines == []


def test_genre_tags_split_into_a_bag_and_folders_name_artist_and_album(tmp_path):
    assert split_genres(["Rock; Pop", "rock", "Soul/Funk | Jazz", ""]) == ["Rock", "Pop", "Soul", "Funk", "Jazz"]
    labels = folder_labels(tmp_path.joinpath("Artist", "Album", "Disc 2", "07_Title.flac").relative_to(tmp_path))
    assert labels == {"artist": "Artist", "album": "Album", "title": "Title"}
    assert folder_labels(tmp_path.joinpath("Solo", "x.wav").relative_to(tmp_path)) == {"artist": "Solo", "title": "x"}


def test_m4a_without_pyav_is_skipped_naming_what_it_needs(tmp_path, monkeypatch):
    from jukebox_pl.data.audio import BadAudio, read_song

    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    path = tmp_path / "song.mp3"
    path.write_bytes(b"\x00\x00\x00\x1cftypM4A " + bytes(64))
    with pytest.raises(BadAudio, match=r"an MP4/M4A file named \.mp3: reading it needs PyAV"):
        read_song(path)
