"""The code_shards DataModule: code windows, aligned upper codes, labels, padding, shard splits."""

from __future__ import annotations

import json
import random
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from audio_fixtures import make_dataset, with_member, without_last_sample

import jukebox_pl.data.codes as codes_module
from jukebox_pl import build
from jukebox_pl.checkpoints.export import export
from jukebox_pl.data.code_shards import FORMAT, codes_from_npz, codes_to_npz
from jukebox_pl.data.codes import window_offsets
from jukebox_pl.data.labels import normalise_name
from jukebox_pl.data.shard_writer import ShardSink
from jukebox_pl.data.shards import write_shards
from jukebox_pl.data.text import LyricsProcessor, lyric_window
from jukebox_pl.errors import JukeboxError
from jukebox_pl.pipelines.encode import encode_dataset

HOPS = [4, 16, 64]
SIZES = [64, 64, 32]
SAMPLE_RATE = 1000
ARTISTS = ["J.S. Bach", "Palestrina", "Traditional"]
GENRES = [["chorale"], ["mass", "motet"], ["folk"]]
SHORT_SONG = 100  # samples: shorter than every window used below
VQVAE = {
    "_component_": "tiny_vqvae",
    "width": 8,
    "depth": 1,
    "emb_width": 8,
    "bottleneck": {"_component_": "ema_vq", "codebook_size": 16},
}


def _songs(split: str, count: int, rng: np.random.Generator) -> list[dict]:
    """Songs of distinct lengths (so a window's song is known by timing[0]) with random codes."""
    songs = []
    for index in range(count):
        length = SHORT_SONG if (split, index) == ("train", 0) else int(rng.integers(600, 3000)) * 2 + index % 2
        songs.append(
            {
                "key": f"{split}{index:03d}",
                "metadata": {
                    "artist": ARTISTS[index % 3],
                    "genres": GENRES[index % 3],
                    "lyrics": f"Verse {index}: sing along, la la la, and on and on." if index % 2 == 0 else "",
                    "title": f"Song {index}",
                    "sample_rate": SAMPLE_RATE,
                    "length": length,
                    "hop_lengths": HOPS,
                    "codebook_sizes": SIZES,
                },
                "codes": [
                    torch.from_numpy(rng.integers(0, size, size=-(-length // hop)))
                    for hop, size in zip(HOPS, SIZES, strict=True)
                ],
            }
        )
    return songs


def _write_code_dataset(folder: Path, splits: dict[str, list[dict]], songs_per_shard: int = 2) -> None:
    """Code shards and dataset.json in the encode pipeline's format, with codes chosen here."""
    folder.mkdir(parents=True)
    finished: list[dict] = []
    for split, songs in splits.items():
        sink = ShardSink(folder, split, max_bytes=1 << 40, first_index=0, on_finish=finished.append)
        for index, song in enumerate(songs):
            fields = {
                "codes.npz": codes_to_npz(song["codes"], SIZES),
                "json": json.dumps(song["metadata"]).encode(),
            }
            sink.add(song["key"], fields, {"length": song["metadata"]["length"]})
            if index % songs_per_shard == songs_per_shard - 1:
                sink.finish()
        sink.finish()
    names = sorted({name for row in GENRES for name in row})
    manifest = {
        "format": FORMAT,
        "sample_rate": SAMPLE_RATE,
        "levels": len(HOPS),
        "hop_lengths": HOPS,
        "codebook_sizes": SIZES,
        "artists": {name: index for index, name in enumerate(["unknown", *sorted(ARTISTS)])},
        "genres": {name: index for index, name in enumerate(["unknown", *names])},
        "counts": {split: len(songs) for split, songs in splits.items()},
        "shards": {
            split: [
                {
                    "name": shard["name"],
                    "songs": len(shard["songs"]),
                    "samples": sum(s["length"] for s in shard["songs"]),
                }
                for shard in finished
                if shard["split"] == split
            ]
            for split in splits
        },
    }
    (folder / "dataset.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(folder, {song length: song}) of 12 training songs in 6 shards and 3 validation songs."""
    rng = np.random.default_rng(0)
    splits = {"train": _songs("train", 12, rng), "validation": _songs("validation", 3, rng)}
    folder = tmp_path_factory.mktemp("codes") / "codes"
    _write_code_dataset(folder, splits)
    by_length = {song["metadata"]["length"]: song for songs in splits.values() for song in songs}
    assert len(by_length) == 15
    return folder, by_length


def _datamodule(path, **overrides):
    spec = {
        "_component_": "code_shards",
        "path": str(path),
        "level": 1,
        "n_ctx": 8,
        "batch_size": 4,
        "num_workers": 0,
        "n_tokens": 12,
        **overrides,
    }
    return build("datamodule", spec)


def _padded(codes: np.ndarray, start: int, length: int) -> np.ndarray:
    real = codes[start : start + length]
    return np.concatenate([real, np.zeros(length - len(real), dtype=real.dtype)])


@pytest.mark.parametrize("trial", range(5))
def test_window_offsets_cover_the_song_on_the_grid_and_stay_inside(trial):
    rng = np.random.default_rng()
    step = int(rng.choice([1, 2, 4]))
    n_ctx = step * int(rng.integers(1, 20))
    tokens = int(rng.integers(1, 500))
    last = max(tokens - n_ctx, 0)
    plain = window_offsets(tokens, n_ctx, step, shift=False, rng=rng)
    shifted = window_offsets(tokens, n_ctx, step, shift=True, rng=rng)
    for offsets in (plain, shifted):
        assert len(offsets) == -(-tokens // n_ctx)
        assert (offsets % step == 0).all() and offsets.min() >= 0 and offsets.max() <= last
    np.testing.assert_array_equal(plain, np.minimum(np.arange(len(plain)) * n_ctx, last // step * step))
    assert np.abs(shifted - plain).max() <= n_ctx // 2 + step


def test_windows_are_the_stored_codes_with_the_upper_codes_of_the_same_samples(dataset):
    folder, songs = dataset
    datamodule = _datamodule(folder, shuffle_buffer=0)
    hop, upper_hop, n_ctx = HOPS[1], HOPS[2], 8
    windows = Counter()
    for item in datamodule.dataset("train"):
        total, offset, length = item["timing"].tolist()
        song = songs[total]
        codes = [level.numpy() for level in song["codes"]]
        windows[total] += 1
        assert length == n_ctx * hop and offset % upper_hop == 0
        assert item["codes"].dtype == item["upper_codes"].dtype == torch.int64
        np.testing.assert_array_equal(item["codes"], _padded(codes[1], offset // hop, n_ctx))
        np.testing.assert_array_equal(
            item["upper_codes"], _padded(codes[2], offset // upper_hop, n_ctx * hop // upper_hop)
        )
        assert item["mask"].sum() == min(n_ctx, len(codes[1]) - offset // hop)
    expected = {length: -(-len(song["codes"][1]) // n_ctx) for length, song in songs.items() if song["key"][0] == "t"}
    assert windows == expected


def test_labels_match_the_metadata_through_the_vocabularies(dataset):
    folder, songs = dataset
    datamodule = _datamodule(folder, n_tokens=12)
    artist_ids = {normalise_name(name): index for name, index in datamodule.manifest["artists"].items()}
    genre_ids = {normalise_name(name): index for name, index in datamodule.manifest["genres"].items()}
    lyrics = LyricsProcessor("v2")
    for item in datamodule.dataset("train"):
        total, offset, length = item["timing"].tolist()
        metadata = songs[total]["metadata"]
        assert item["artist"] == artist_ids[normalise_name(metadata["artist"])]
        genres = [genre_ids[normalise_name(name)] for name in metadata["genres"]]
        assert item["genres"].tolist() == genres + [-1] * (5 - len(genres))
        expected, _ = lyric_window(lyrics.tokenize(metadata["lyrics"]), 12, total, offset, length)
        assert item["lyrics"].tolist() == expected.tolist()
    assert "lyrics" not in next(iter(_datamodule(folder, n_tokens=0).dataset("train")))


def test_a_song_shorter_than_a_window_is_padded_and_masked(dataset):
    folder, songs = dataset
    short = songs[SHORT_SONG]["codes"]
    datamodule = _datamodule(folder, level=0, n_ctx=32)  # 128 samples > the 100-sample song
    items = [item for item in datamodule.dataset("train") if item["timing"][0] == SHORT_SONG]
    assert len(items) == 1
    item = items[0]
    real = len(short[0])  # ceil(100 / 4) = 25
    assert item["timing"].tolist() == [SHORT_SONG, 0, 128]
    assert item["mask"].tolist() == [True] * real + [False] * (32 - real)
    np.testing.assert_array_equal(item["codes"][:real], short[0])
    assert (item["codes"][real:] == 0).all()
    np.testing.assert_array_equal(item["upper_codes"], _padded(short[1].numpy(), 0, 8))


def test_the_top_level_and_upper_level_false_have_no_upper_codes(dataset):
    folder, _ = dataset
    top = _datamodule(folder, level=2, n_ctx=4)
    assert top.upper_n_ctx is None and "upper_codes" not in next(iter(top.dataset("train")))
    alone = _datamodule(folder, level=1, n_ctx=3, upper_level=False)  # 3 codes need not fill a level-2 code
    item = next(iter(alone.dataset("train")))
    assert "upper_codes" not in item and item["codes"].shape == (3,)


def test_batches_collate_to_tensors(dataset):
    folder, _ = dataset
    datamodule = _datamodule(folder, n_tokens=12)
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"codes", "mask", "upper_codes", "artist", "genres", "timing", "lyrics"}
    assert batch["codes"].shape == (4, 8) and batch["codes"].dtype == torch.int64
    assert batch["mask"].shape == (4, 8) and batch["mask"].dtype == torch.bool
    assert batch["upper_codes"].shape == (4, 2) and batch["artist"].shape == (4,)
    assert batch["genres"].shape == (4, 5) and batch["timing"].shape == (4, 3) and batch["lyrics"].shape == (4, 12)
    assert datamodule.sample_length == 128 and datamodule.upper_n_ctx == 2 and datamodule.codebook_size == 64


def test_ranks_and_workers_read_disjoint_shards_that_together_are_all(dataset, monkeypatch):
    folder, songs = dataset
    datamodule = _datamodule(folder, num_workers=2, batch_size=1)
    windows_by_rank = []
    for rank in range(2):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        windows_by_rank.append(Counter(batch["timing"][0, 0].item() for batch in datamodule.train_dataloader()))
    monkeypatch.undo()
    first, second = windows_by_rank
    assert first and second and set(first).isdisjoint(second)
    expected = {length: -(-len(song["codes"][1]) // 8) for length, song in songs.items() if song["key"][0] == "t"}
    assert first + second == Counter(expected)  # every window of every song, read once


def test_validation_is_the_same_every_pass_and_training_is_not(dataset):
    folder, _ = dataset
    datamodule = _datamodule(folder)
    first = [(b["codes"], b["timing"]) for b in datamodule.val_dataloader()]
    second = [(b["codes"], b["timing"]) for b in datamodule.val_dataloader()]
    assert first and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True)
    )
    loader = datamodule.train_dataloader()
    one, two = (torch.cat([b["timing"] for b in loader]) for _ in range(2))
    assert len(one) == len(two) and not torch.equal(one, two)


def test_val_windows_takes_every_kth_window_of_the_whole_split_and_reads_no_other_song(dataset, monkeypatch):
    folder, _ = dataset
    full = [(tuple(item["timing"].tolist()), item["codes"]) for item in _datamodule(folder).dataset("validation")]
    wanted = random.randint(1, len(full) // 2)
    datamodule = _datamodule(folder, val_windows=wanted)
    every = datamodule.val_every
    assert every > 1 and wanted <= len(full[::every]) <= 2 * wanted  # about `wanted`, from the manifest alone
    read = []
    real = codes_module.codes_from_npz
    monkeypatch.setattr(codes_module, "codes_from_npz", lambda data, where: read.append(where) or real(data, where))
    for _ in range(2):  # the same windows on every pass
        read.clear()
        picked = [(tuple(item["timing"].tolist()), item["codes"]) for item in datamodule.dataset("validation")]
        assert [timing for timing, _ in picked] == [timing for timing, _ in full[::every]]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(picked, full[::every], strict=True))
        assert len(read) == len({timing[0] for timing, _ in picked})  # a song with no window kept is not read
    read.clear()
    assert len(list(_datamodule(folder, val_windows=1).dataset("validation"))) in (1, 2)
    assert len(read) in (1, 2) and len({where.split(": ")[0] for where in read}) <= 2  # of 3 songs
    everything = sum(1 for _ in _datamodule(folder).dataset("train"))
    assert sum(1 for _ in datamodule.dataset("train")) == everything  # training reads every window


def test_a_short_endless_epoch_draws_windows_from_every_song(dataset):
    """An epoch of 40 % of the windows reaches (nearly) every training song in each epoch, where reading
    the stream from its start would reach about 40 % of them."""
    folder, songs = dataset
    windows = sum(1 for _ in _datamodule(folder).dataset("train"))
    datamodule = _datamodule(folder, windows_per_epoch=int(windows * 0.4), shuffle_buffer=0)
    assert datamodule.train_windows == pytest.approx(windows, rel=0.2)  # estimated from dataset.json alone
    dataset = datamodule.dataset("train")
    training_songs = sum(1 for song in songs.values() if song["key"].startswith("train"))
    for epoch in range(1, 4):
        dataset.epoch = epoch
        reached = Counter(int(item["timing"][0]) for item in dataset)
        assert sum(reached.values()) == int(windows * 0.4)
        assert len(reached) >= training_songs - 2  # the one-window song is missed 60 % of the time


def test_windows_per_epoch_makes_an_endless_stream_of_a_fixed_length(dataset):
    folder, _ = dataset
    batches = list(_datamodule(folder, windows_per_epoch=200, batch_size=5).train_dataloader())
    assert len(batches) == 40


def test_bad_arguments_are_refused_with_the_levels_available(dataset):
    folder, _ = dataset
    with pytest.raises(JukeboxError, match=r"level 3 is not in .*levels are 0 \(hop 4\), 1 \(hop 16\), 2 \(hop 64\)"):
        _datamodule(folder, level=3)
    with pytest.raises(JukeboxError, match="n_ctx"):
        _datamodule(folder, n_ctx=0)
    with pytest.raises(JukeboxError, match="val_windows must be positive"):
        _datamodule(folder, val_windows=-3)
    with pytest.raises(JukeboxError, match="use a multiple of 4"):
        _datamodule(folder, level=1, n_ctx=6)
    with pytest.raises(JukeboxError, match="encode the audio shards"):
        _datamodule(folder.parent)


def test_the_encode_pipelines_output_reads_back_window_for_window(tmp_path):
    torch.manual_seed(0)
    vqvae = build("vqvae", VQVAE)  # 22.05 kHz, hops 4 and 16
    vqvae.train()
    vqvae(torch.randn(2, 1, 4096))  # initialises the codebooks from encoder outputs
    export(vqvae.eval(), tmp_path / "model", recipe={"model": VQVAE}, key="model")
    metadata = make_dataset(tmp_path / "songs", n_songs=4, seconds=1.0)
    write_shards(
        tmp_path / "songs" / "audio",
        metadata,
        tmp_path / "shards",
        sample_rate=22050,
        min_seconds=0.5,
        validation_fraction=0.5,
    )
    encode_dataset(tmp_path / "model", tmp_path / "shards", tmp_path / "codes")
    datamodule = _datamodule(tmp_path / "codes", level=0, n_ctx=1024)  # hops 4 and 16: 4096 samples
    stored = []
    for shard in datamodule.shards("validation"):
        with tarfile.open(shard) as archive:
            stored += [codes_from_npz(archive.extractfile(m).read()) for m in archive if m.name.endswith(".npz")]
    items = list(datamodule.dataset("validation"))
    windows = [
        (levels, offset)
        for levels in stored
        for offset in window_offsets(len(levels[0]), 1024, 4, False, np.random.default_rng())
    ]
    assert len(items) == len(windows) > 0
    for item, (levels, offset) in zip(items, windows, strict=True):
        assert item["timing"][1] == offset * 4
        np.testing.assert_array_equal(item["codes"], _padded(levels[0], offset, 1024))
        np.testing.assert_array_equal(item["upper_codes"], _padded(levels[1], offset // 4, 256))


def test_song_filters_read_only_the_chosen_songs_and_drop_held_out_names(dataset):
    folder, by_length = dataset
    only = _datamodule(folder, only_artists=["j. s. bach"], upper_level=False)
    lengths = {int(length) for batch in only.val_dataloader() for length in batch["timing"][:, 0]}
    assert lengths and all(by_length[length]["metadata"]["artist"] == "J.S. Bach" for length in lengths)
    held_out = _datamodule(folder, exclude_artists=["Palestrina"], exclude_genres=["folk"], upper_level=False)
    assert "Palestrina" not in held_out.artists and "folk" not in held_out.genres
    assert held_out.artists.names == ["unknown", "J.S. Bach", "Traditional"]  # the rest keep their order
    songs = {int(length) for batch in held_out.train_dataloader() for length in batch["timing"][:, 0]}
    assert songs and all(by_length[length]["metadata"]["artist"] == "J.S. Bach" for length in songs)
    with pytest.raises(JukeboxError, match="artist 'Palestrna' is not in .*did you mean 'Palestrina'"):
        _datamodule(folder, only_artists=["Palestrna"])
    with pytest.raises(JukeboxError, match="no training song in .* is left by only artists"):
        _datamodule(folder, only_artists=["Palestrina"], exclude_genres=["mass"])


def _damaged_copy(folder: Path, tmp_path: Path, suffix: str, replace) -> tuple[Path, Path, str]:
    """A copy of the dataset whose first validation shard has its `suffix` member replaced: (folder, shard, key)."""
    copy = shutil.copytree(folder, tmp_path / "codes")
    manifest = json.loads((copy / "dataset.json").read_text())
    shard = copy / manifest["shards"]["validation"][0]["name"]
    data, member = with_member(shard.read_bytes(), suffix, replace)
    shard.write_bytes(data)
    return copy, shard, member.split(".")[0]


def test_a_codes_member_that_is_not_an_archive_of_codes_is_an_error_naming_it(dataset, tmp_path):
    copy, shard, key = _damaged_copy(dataset[0], tmp_path, ".codes.npz", lambda data: random.randbytes(200))
    with pytest.raises(JukeboxError, match=rf"{shard}: {key}.codes.npz: not an archive of codes"):
        list(_datamodule(copy).dataset("validation"))


def test_codes_of_too_few_levels_or_a_wrong_length_are_an_error_naming_the_sample(dataset, tmp_path):
    def two_levels(data: bytes) -> bytes:
        levels = codes_from_npz(data)
        return codes_to_npz([torch.from_numpy(codes) for codes in levels[:2]], SIZES[:2])

    copy, shard, key = _damaged_copy(dataset[0], tmp_path, ".codes.npz", two_levels)
    with pytest.raises(JukeboxError, match=rf"{shard}: {key}: its json records \d+ samples, .* holds \[\d+, \d+\]"):
        list(_datamodule(copy).dataset("validation"))
    for length, message in [(None, "'length' must be the song's length in samples, not None"), (10**30, "its json")]:

        def replace(data: bytes, length=length) -> bytes:
            return json.dumps({**json.loads(data), "length": length}).encode()

        copy, shard, key = _damaged_copy(dataset[0], tmp_path / str(length), ".json", replace)
        with pytest.raises(JukeboxError, match=rf"{shard}: {key}(\.json)?: {message}"):
            list(_datamodule(copy).dataset("validation"))


def test_a_song_filter_counting_a_damaged_shard_names_it(dataset, tmp_path):
    copy, shard, key = _damaged_copy(dataset[0], tmp_path, ".json", lambda data: b"{]")
    with pytest.raises(JukeboxError, match=rf"{shard}: {key}.json: not valid JSON"):
        _datamodule(copy, only_artists=["Palestrina"])


def test_a_shard_that_lost_a_whole_song_is_an_error_naming_it(dataset, tmp_path):
    copy = shutil.copytree(dataset[0], tmp_path / "codes")
    listed = json.loads((copy / "dataset.json").read_text())["shards"]["train"]
    entry = random.choice([shard for shard in listed if shard["songs"] > 1])
    shard = copy / entry["name"]
    shard.write_bytes(without_last_sample(shard.read_bytes()))
    left = entry["songs"] - 1
    message = rf"{shard}: holds {left} songs?, but its dataset's dataset.json records {entry['songs']}"
    with pytest.raises(JukeboxError, match=message):
        list(_datamodule(copy).dataset("train"))
    with pytest.raises(JukeboxError, match=message):  # a song filter counts the songs when it is built
        _datamodule(copy, exclude_artists=["Palestrina"])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hop_lengths", None, "hop_lengths must be a list of positive integers, not None"),
        ("codebook_sizes", [64, 0, 32], r"codebook_sizes must be a list of positive integers"),
        ("codebook_sizes", [64, 64], "hop_lengths and codebook_sizes differ in length"),
        ("shards", [], r"shards must map each split to a list"),
    ],
)
def test_a_damaged_code_manifest_is_an_error_naming_it(dataset, tmp_path, field, value, message):
    copy = shutil.copytree(dataset[0], tmp_path / "codes")
    manifest = json.loads((copy / "dataset.json").read_text())
    (copy / "dataset.json").write_text(json.dumps({**manifest, field: value}))
    with pytest.raises(JukeboxError, match=rf"{copy / 'dataset.json'}: a damaged manifest: {message}"):
        _datamodule(copy)
