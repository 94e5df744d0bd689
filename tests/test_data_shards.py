"""The shard writer: round trip, bad files, strict mode, atomic and resumable writes."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import make_dataset, write_song

from jukebox_pl.data import shards as shards_module
from jukebox_pl.data.audio import BadAudio, Song, decode, encode_flac
from jukebox_pl.data.shard_reader import MANIFEST
from jukebox_pl.data.shard_writer import PROGRESS, parse_size, shard_sinks, start_or_resume
from jukebox_pl.data.shards import split_of, write_shards
from jukebox_pl.errors import JukeboxError


def _samples(out_dir):
    for tar_path in sorted(out_dir.glob("*.tar")):
        with tarfile.open(tar_path) as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
        for name, data in members.items():
            if name.endswith(".flac"):
                key = name[: -len(".flac")]
                yield tar_path.name, key, data, json.loads(members[key + ".json"])


def test_round_trip_is_bit_exact_and_keeps_metadata(tmp_path):
    metadata = make_dataset(tmp_path, n_songs=4, sample_rate=44100)
    (tmp_path / "words.txt").write_text("Aus tiefer Not schrei ich zu dir")
    rows = [json.loads(line) for line in metadata.read_text().splitlines()]
    rows[1]["lyrics"] = "words.txt"
    metadata.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = write_shards(tmp_path / "audio", metadata, tmp_path / "out")
    seen = {}
    for _, _, flac, meta in _samples(tmp_path / "out"):
        source = meta["source"]
        original, rate = sf.read(source, dtype="int32")
        restored, restored_rate = sf.read(io.BytesIO(flac), dtype="int32")
        assert rate == restored_rate == 44100
        np.testing.assert_array_equal(original, restored)  # FLAC of 16-bit PCM is lossless
        seen[source.rsplit("/", 1)[1]] = meta
    assert set(seen) == {f"song{i}.wav" for i in range(4)}
    assert seen["song1.wav"]["lyrics"] == "Aus tiefer Not schrei ich zu dir"
    assert seen["song2.wav"]["artist"] == "Traditional" and seen["song2.wav"]["genres"] == ["folk"]
    assert seen["song3.wav"]["year"] == 1703 and seen["song3.wav"]["title"] == "Song 3"
    assert seen["song0.wav"]["samples"] == 3 * 44100 and seen["song1.wav"]["channels"] == 2
    assert manifest["artists"] == {"unknown": 0, "J.S. Bach": 1, "Palestrina": 2, "Traditional": 3}
    assert manifest["genres"] == {"unknown": 0, "chorale": 1, "folk": 2, "mass": 3, "motet": 4}
    assert manifest["counts"]["songs"] == 4 and manifest["total_seconds"] == pytest.approx(12.0)
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["counts"] == manifest["counts"]


def test_resampling_to_the_dataset_rate_keeps_the_duration(tmp_path):
    metadata = make_dataset(tmp_path, n_songs=2, seconds=2.0, sample_rate=22050)
    write_shards(tmp_path / "audio", metadata, tmp_path / "out", sample_rate=44100)
    for _, _, flac, meta in _samples(tmp_path / "out"):
        audio, rate = sf.read(io.BytesIO(flac))
        assert rate == 44100 and len(audio) == meta["samples"] == 88200


def _bad_files(tmp_path):
    audio = tmp_path / "audio"
    write_song(audio / "good.wav", 3.0, seed=1)
    write_song(audio / "good2.wav", 3.0, seed=2)
    (audio / "unreadable.wav").write_bytes(b"RIFF" + bytes(64))
    sf.write(audio / "empty.wav", np.zeros((0, 1), np.float32), 22050)
    write_song(audio / "whole.flac", 3.0, seed=3)
    data = (audio / "whole.flac").read_bytes()
    (audio / "truncated.flac").write_bytes(data[: len(data) // 2])
    write_song(audio / "cut.wav", 3.0, seed=4)
    data = (audio / "cut.wav").read_bytes()
    (audio / "cut.wav").write_bytes(data[: len(data) * 2 // 3])
    nan = np.random.default_rng().standard_normal((22050 * 3, 1)).astype(np.float32)
    nan[1000] = np.nan
    sf.write(audio / "nan.wav", nan, 22050, subtype="FLOAT")
    sf.write(audio / "silent.wav", np.zeros((22050 * 3, 1), np.float32), 22050)
    write_song(audio / "short.wav", 0.5, seed=5)
    names = ["good", "good2", "unreadable", "empty", "truncated", "cut", "nan", "silent", "short", "missing"]
    suffix = {"truncated": ".flac"}
    rows = [json.dumps({"path": n + suffix.get(n, ".wav"), "artist": "A", "genre": "g"}) for n in names]
    rows += ['{"artist": "no path"}', "{not json"]
    (tmp_path / "meta.jsonl").write_text("\n".join(rows) + "\n")
    return tmp_path / "meta.jsonl"


EXPECTED_REASONS = {
    "unreadable.wav": "unreadable",
    "empty.wav": "empty",
    "truncated.flac": "corrupt or truncated",
    "cut.wav": "truncated:",
    "nan.wav": "contains NaN",
    "silent.wav": "silent",
    "short.wav": "too short: 0.50 s < 2 s",
    "missing.wav": "missing",
    "meta.jsonl:11": "row has no 'path'",
    "meta.jsonl:12": "not valid JSON",
}


def test_each_bad_file_is_skipped_with_one_line_and_counted(tmp_path, caplog):
    metadata = _bad_files(tmp_path)
    caplog.set_level(logging.INFO, logger="jukebox_pl")
    caplog.clear()
    manifest = write_shards(tmp_path / "audio", metadata, tmp_path / "out")
    lines = caplog.messages
    assert manifest["counts"]["songs"] == 2
    assert manifest["counts"]["skipped"] == len(EXPECTED_REASONS) == len(lines)
    for where, reason in EXPECTED_REASONS.items():
        (line,) = [line for line in lines if line.split(": ")[0].endswith(where)]
        assert line.startswith("skipped ") and reason in line, line
    assert sum(manifest["skipped_by_reason"].values()) == len(EXPECTED_REASONS)


def test_strict_mode_stops_at_the_first_bad_file(tmp_path):
    metadata = _bad_files(tmp_path)
    # The metadata is read whole before any audio, so its bad rows come first.
    with pytest.raises(JukeboxError, match=r"meta.jsonl:11: row has no 'path' \(--strict"):
        write_shards(tmp_path / "audio", metadata, tmp_path / "out", strict=True)
    metadata.write_text("".join(metadata.read_text().splitlines(keepends=True)[:10]))
    with pytest.raises(JukeboxError, match=r"unreadable.wav: unreadable .*--strict"):
        write_shards(tmp_path / "audio", metadata, tmp_path / "out", strict=True)
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_a_killed_run_leaves_only_whole_shards_and_resumes_to_the_same_dataset(tmp_path, monkeypatch, caplog):
    metadata = make_dataset(tmp_path, n_songs=8, seconds=2.0)
    clean = write_shards(tmp_path / "audio", metadata, tmp_path / "clean", shard_size="100KB")

    real_encode, calls = shards_module.encode_flac, []

    def dying_encode(song):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt  # what SIGINT does mid-run
        return real_encode(song)

    monkeypatch.setattr(shards_module, "encode_flac", dying_encode)
    with pytest.raises(KeyboardInterrupt):
        write_shards(tmp_path / "audio", metadata, tmp_path / "out", shard_size="100KB")
    finished = sorted(p.name for p in (tmp_path / "out").glob("*.tar"))
    assert finished and not (tmp_path / "out" / MANIFEST).exists()
    for name in finished:  # every shard under its final name is complete and readable
        with tarfile.open(tmp_path / "out" / name) as archive:
            assert len(archive.getmembers()) % 2 == 0
    monkeypatch.setattr(shards_module, "encode_flac", real_encode)
    caplog.set_level(logging.INFO, logger="jukebox_pl")
    caplog.clear()
    resumed = write_shards(tmp_path / "audio", metadata, tmp_path / "out", shard_size="100KB")
    lines = caplog.messages
    assert any(line.startswith("resuming") for line in lines)
    assert not list((tmp_path / "out").glob(".*.tmp"))
    assert resumed["counts"] == clean["counts"] and resumed["artists"] == clean["artists"]
    keys = lambda d: sorted((key, meta["samples"]) for _, key, _, meta in _samples(d))  # noqa: E731
    assert keys(tmp_path / "out") == keys(tmp_path / "clean")


def test_changed_options_rebuild_instead_of_mixing_shards(tmp_path, caplog):
    metadata = make_dataset(tmp_path, n_songs=3, seconds=2.0)
    write_shards(tmp_path / "audio", metadata, tmp_path / "out", sample_rate=22050)
    caplog.set_level(logging.INFO, logger="jukebox_pl")
    caplog.clear()
    manifest = write_shards(tmp_path / "audio", metadata, tmp_path / "out", sample_rate=16000)
    lines = caplog.messages
    assert any("rebuilding" in line for line in lines)
    assert manifest["sample_rate"] == 16000
    assert {meta["sample_rate"] for *_, meta in _samples(tmp_path / "out")} == {16000}


def test_a_lost_shard_is_written_again_alone(tmp_path, caplog):
    metadata = make_dataset(tmp_path, n_songs=6, seconds=2.0)
    first = write_shards(tmp_path / "audio", metadata, tmp_path / "out", shard_size="100KB")
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.tar")}
    songs = sorted((key, meta["samples"]) for _, key, _, meta in _samples(tmp_path / "out"))
    lost = sorted(kept)[np.random.default_rng().integers(len(kept))]
    (tmp_path / "out" / lost).unlink()
    del kept[lost]
    caplog.set_level(logging.INFO, logger="jukebox_pl")
    second = write_shards(tmp_path / "audio", metadata, tmp_path / "out", shard_size="100KB")
    assert any(lost in line and "missing" in line for line in caplog.messages)
    assert {name: (tmp_path / "out" / name).stat().st_mtime_ns for name in kept} == kept
    assert second["counts"] == first["counts"]
    assert sorted((key, meta["samples"]) for _, key, _, meta in _samples(tmp_path / "out")) == songs
    listed = [s["name"] for split in second["shards"].values() for s in split]
    assert sorted(listed) == sorted(p.name for p in (tmp_path / "out").glob("*.tar"))


def _shard_folder(folder, rng):
    """A folder as killed runs leave it: a progress record of finished shards, some of them since deleted,
    shards renamed but never recorded, temporary shards, and files that are not shards."""
    folder.mkdir()
    names = {split: [f"{split}-{index:06d}.tar" for index in range(rng.integers(1, 8))] for split in ("train", "valid")}
    shards = [{"name": name, "split": split, "songs": [{"key": name}]} for split in names for name in names[split]]
    recorded = [shard for shard in shards if rng.random() < 0.7]
    present = [shard for shard in recorded if rng.random() < 0.7]
    orphans = [shard["name"] for shard in shards if shard not in recorded and rng.random() < 0.5]
    for name in [shard["name"] for shard in present] + orphans:
        (folder / name).write_bytes(rng.bytes(16))
    for shard in shards:
        if rng.random() < 0.3:
            (folder / f".{shard['name']}.tmp").write_bytes(rng.bytes(8))
    for other in ("notes.txt", "mix.tar", "train-1.tar"):
        (folder / other).write_bytes(rng.bytes(4))
    (folder / PROGRESS).write_text(json.dumps({"fingerprint": "same", "shards": recorded, "skipped": []}))
    return recorded, present


def test_resuming_keeps_exactly_the_recorded_shards_still_on_disk(tmp_path):
    rng = np.random.default_rng()
    recorded, present = _shard_folder(tmp_path / "out", rng)
    changed = []
    progress = start_or_resume(tmp_path / "out", "same", changed.append, skipped=["not used"])
    assert progress["shards"] == present and progress["skipped"] == [] and not changed, recorded
    on_disk = {path.name for path in (tmp_path / "out").iterdir()}
    assert on_disk == {shard["name"] for shard in present} | {"notes.txt", "mix.tar", "train-1.tar", PROGRESS}
    assert json.loads((tmp_path / "out" / PROGRESS).read_text()) == progress
    sinks = shard_sinks(tmp_path / "out", progress, ("train", "valid"), max_bytes=1)  # one sample a shard
    expected = list(present)
    for split, sink in sinks.items():
        last = max((int(shard["name"][-10:-4]) for shard in present if shard["split"] == split), default=-1)
        assert sink.name == f"{split}-{last + 1:06d}.tar"  # after the last finished shard, never over one
        expected.append({"name": sink.name, "split": split, "songs": [{"key": split}]})
        sink.add(split, {"json": b"{}"}, {"key": split})
    assert json.loads((tmp_path / "out" / PROGRESS).read_text())["shards"] == expected


def test_other_inputs_go_to_the_callers_policy_before_a_new_record(tmp_path):
    rng = np.random.default_rng()
    recorded, present = _shard_folder(tmp_path / "out", rng)
    seen = []

    def refuse(previous):
        seen.append(previous)
        raise JukeboxError("refused")

    with pytest.raises(JukeboxError, match="refused"):
        start_or_resume(tmp_path / "out", "other", refuse)
    assert seen[0]["shards"] == recorded and json.loads((tmp_path / "out" / PROGRESS).read_text()) == seen[0]
    assert all((tmp_path / "out" / shard["name"]).is_file() for shard in present)  # the policy's to deal with
    progress = start_or_resume(tmp_path / "out", "other", seen.append, format="codes")
    assert progress == {"fingerprint": "other", "shards": [], "format": "codes"} and len(seen) == 2
    assert json.loads((tmp_path / "out" / PROGRESS).read_text()) == progress


def test_csv_metadata_with_several_genres(tmp_path):
    write_song(tmp_path / "audio" / "a.wav", 2.5, seed=1)
    write_song(tmp_path / "audio" / "b.wav", 2.5, seed=2)
    (tmp_path / "meta.csv").write_text(
        "path,artist,genre,lyrics,mood\na.wav,Dufay,mass;motet,Kyrie eleison,calm\nb.wav,Dufay,chanson,,\n"
    )
    manifest = write_shards(tmp_path / "audio", tmp_path / "meta.csv", tmp_path / "out")
    assert manifest["genres"] == {"unknown": 0, "chanson": 1, "mass": 2, "motet": 3}
    by_source = {meta["source"].rsplit("/", 1)[1]: meta for *_, meta in _samples(tmp_path / "out")}
    assert by_source["a.wav"]["genres"] == ["mass", "motet"] and by_source["a.wav"]["mood"] == "calm"
    assert by_source["a.wav"]["lyrics"] == "Kyrie eleison" and by_source["b.wav"]["lyrics"] == ""


def test_split_is_deterministic_by_song_and_near_the_fraction():
    keys = [f"song_{i}" for i in range(4000)]
    first = [split_of(k, 0.1) for k in keys]
    assert first == [split_of(k, 0.1) for k in keys]
    assert 0.08 < first.count("validation") / len(keys) < 0.12


def test_sizes_parse_and_typos_are_refused():
    assert (
        parse_size("256MB") == 256 * 1024**2
        and parse_size("1.5G") == int(1.5 * 1024**3)
        and parse_size("500k") == 500 * 1024
    )
    with pytest.raises(JukeboxError, match="not a size"):
        parse_size("lots")


def test_a_dataset_with_no_usable_song_is_an_error(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "bad.wav").write_bytes(b"RIFF" + bytes(40))
    (tmp_path / "meta.csv").write_text("path,artist\nbad.wav,A\nmissing.wav,B\n")
    with pytest.raises(JukeboxError, match=r"meta.csv: no usable song: 2 rows or files were skipped"):
        write_shards(tmp_path / "audio", tmp_path / "meta.csv", tmp_path / "out")
    assert not (tmp_path / "out" / MANIFEST).exists()


@pytest.mark.parametrize("suffix, audio_format", [(".mp3", "MP3"), (".ogg", "OGG"), (".flac", "FLAC")])
def test_compressed_inputs_are_decoded_and_sharded(tmp_path, suffix, audio_format):
    frequency = float(np.random.default_rng().integers(200, 600))
    t = np.arange(3 * 44100) / 44100
    audio = (0.4 * np.sin(2 * np.pi * frequency * t))[:, None].astype(np.float32)
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / f"song{suffix}", audio, 44100, format=audio_format)
    (tmp_path / "meta.jsonl").write_text(json.dumps({"path": f"song{suffix}", "artist": "A"}) + "\n")
    manifest = write_shards(tmp_path / "audio", tmp_path / "meta.jsonl", tmp_path / "out")
    assert manifest["counts"]["songs"] == 1
    ((_, _, flac, _),) = list(_samples(tmp_path / "out"))
    decoded, rate = sf.read(io.BytesIO(flac))
    assert rate == 44100 and abs(len(decoded) - len(audio)) < 4096  # mp3 adds encoder padding
    spectrum = np.abs(np.fft.rfft(decoded))  # mono: (frames,)
    assert np.fft.rfftfreq(len(decoded), 1 / 44100)[spectrum.argmax()] == pytest.approx(frequency, abs=1.0)


def test_bytes_that_do_not_decode_to_audio_are_bad_audio_naming_their_source():
    rng = np.random.default_rng()
    with pytest.raises(BadAudio, match=r"^shard.tar: key.flac: not decodable audio"):
        decode(rng.bytes(500), "shard.tar: key.flac")
    flac = encode_flac(Song(rng.uniform(-0.5, 0.5, (800, 1)).astype(np.float32), 8000, None))
    with pytest.raises(BadAudio, match=r"^key.flac: not decodable audio"):
        decode(flac[: len(flac) // 2], "key.flac")  # cut inside the frames
    wav = io.BytesIO()
    sf.write(wav, np.full((10, 1), np.nan, dtype=np.float32), 8000, format="WAV", subtype="FLOAT")
    with pytest.raises(BadAudio, match=r"^key.wav: contains NaN"):
        decode(wav.getvalue(), "key.wav")
    samples, rate = decode(flac)
    assert samples.shape == (800, 1) and rate == 8000


@pytest.mark.parametrize("readable", [1, 2, 3, 4])
def test_the_validation_song_of_a_small_dataset_is_one_that_can_be_read(tmp_path, monkeypatch, readable):
    # The split puts only an unreadable file in validation: a readable song takes its place, as long as another
    # readable one stays for training.
    rng = np.random.default_rng()
    names = [f"song_{i}.wav" for i in range(readable)]
    for name in names:
        write_song(tmp_path / "audio" / name, float(rng.uniform(3.0, 4.0)), seed=int(rng.integers(1 << 30)))
    (tmp_path / "audio" / "notes.wav").write_text("not audio at all, only words")
    rows = "".join(f"{name},Someone,folk,,\n" for name in [*names, "notes.wav"])
    (tmp_path / "meta.csv").write_text("path,artist,genre,lyrics,mood\n" + rows)
    monkeypatch.setattr(shards_module, "split_of", lambda key, fraction: "validation" if "notes" in key else "train")
    manifest = write_shards(tmp_path / "audio", tmp_path / "meta.csv", tmp_path / "out", validation_fraction=0.5)
    expected = 1 if readable >= 2 else 0
    assert (manifest["counts"]["validation"], manifest["counts"]["train"]) == (expected, readable - expected)
    assert manifest["counts"]["skipped"] == 1
