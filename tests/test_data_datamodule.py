"""The audio_shards DataModule: shard splits, crops, mono mixing, labels, determinism."""

from __future__ import annotations

import io
import json
import random
import shutil
import struct
import tarfile
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from audio_fixtures import make_dataset, with_member, without_last_sample

import jukebox_pl.data.datamodule as datamodule_module
from jukebox_pl import build
from jukebox_pl.data.datamodule import CropSelection, assign_shards, crop_offsets, to_mono
from jukebox_pl.data.labels import UnknownLabelWarning
from jukebox_pl.data.shards import write_shards
from jukebox_pl.errors import JukeboxError

SAMPLE_LENGTH = 8192


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    metadata = make_dataset(root, n_songs=12, seconds=2.0, sample_rate=22050)
    write_shards(
        root / "audio",
        metadata,
        root / "shards",
        sample_rate=22050,
        shard_size="60KB",
        validation_fraction=0.25,
    )
    return root / "shards"


def _datamodule(path, **overrides):
    spec = {
        "_component_": "audio_shards",
        "path": str(path),
        "sample_length": SAMPLE_LENGTH,
        "batch_size": 4,
        "num_workers": 0,
        "n_tokens": 16,
        **overrides,
    }
    return build("datamodule", spec)


@pytest.mark.parametrize("trial", range(5))
def test_shard_slots_are_disjoint_and_complete(trial):
    rng = random.Random()
    shards = [f"s{i}.tar" for i in range(rng.randint(1, 60))]
    world_size, num_workers, epoch = rng.randint(1, 4), rng.randint(1, 4), rng.randint(0, 100)
    slots = [
        assign_shards(shards, rank, world_size, worker, num_workers, epoch, seed=7, shuffle=True)
        for rank in range(world_size)
        for worker in range(num_workers)
    ]
    flat = [shard for slot in slots for shard in slot]
    assert sorted(flat) == sorted(shards)  # every shard read once, by exactly one slot
    assert max(map(len, slots)) - min(map(len, slots)) <= 1
    other_epoch = assign_shards(shards, 0, 1, 0, 1, epoch + 1, seed=7, shuffle=True)
    assert sorted(other_epoch) == sorted(shards)


@pytest.mark.parametrize("trial", range(3))
def test_a_validation_split_with_fewer_shards_than_ranks_is_read_whole_by_every_rank(trial):
    rng = random.Random()
    world_size = rng.randint(2, 6)
    shards = [f"s{i}.tar" for i in range(rng.randint(1, world_size - 1))]
    num_workers = rng.randint(1, 3)
    for rank in range(world_size):
        slots = [
            assign_shards(shards, rank, world_size, w, num_workers, 0, seed=7, shuffle=False)
            for w in range(num_workers)
        ]
        assert sorted(shard for slot in slots for shard in slot) == sorted(shards)  # every rank, every shard once
    enough = [f"s{i}.tar" for i in range(world_size)]  # as many shards as ranks: disjoint again
    assert [assign_shards(enough, r, world_size, 0, 1, 0, seed=7, shuffle=False) for r in range(world_size)] == [
        [shard] for shard in enough
    ]


def test_crops_stay_inside_the_song_and_cover_it():
    rng = np.random.default_rng()
    length, crop = int(rng.integers(50_000, 500_000)), 8192
    plain = crop_offsets(length, crop, shift=False, rng=rng)
    np.testing.assert_array_equal(plain, np.arange(length // crop) * crop)
    shifted = crop_offsets(length, crop, shift=True, rng=rng)
    assert len(shifted) == length // crop
    assert shifted.min() >= 0 and shifted.max() <= length - crop
    assert np.abs(shifted - plain).max() <= crop // 2
    assert not np.array_equal(shifted, plain)
    np.testing.assert_array_equal(crop_offsets(1000, crop, shift=True, rng=rng), [0])


def test_mono_blend_mixes_channels_with_a_random_weight():
    rng = np.random.default_rng()
    stereo = rng.standard_normal((1000, 2)).astype(np.float32)
    mixed = to_mono(stereo, blend=True, rng=np.random.default_rng(3))
    weight = np.random.default_rng(3).random()
    np.testing.assert_allclose(mixed, weight * stereo[:, 0] + (1 - weight) * stereo[:, 1], rtol=1e-6)
    np.testing.assert_allclose(to_mono(stereo, blend=False, rng=rng), stereo.mean(1), rtol=1e-6)


def test_batches_carry_audio_and_labels_of_the_right_shapes(dataset_dir):
    datamodule = _datamodule(dataset_dir)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["audio"].shape == (4, 1, SAMPLE_LENGTH) and batch["audio"].dtype == torch.float32
    assert batch["artist"].shape == (4,) and set(batch["artist"].tolist()) <= {1, 2, 3}
    assert batch["genres"].shape == (4, 5) and (batch["genres"][:, 2:] == -1).all()
    assert batch["lyrics"].shape == (4, 16)
    total, offset, length = batch["timing"].T
    assert (length == SAMPLE_LENGTH).all() and (offset + length <= total).all() and (total == 44100).all()
    assert batch["audio"].abs().max() > 0.05


def test_lyric_windows_decode_to_the_song_lyrics(dataset_dir):
    datamodule = _datamodule(dataset_dir, n_tokens=200)
    lyrics = datamodule.labeller.lyrics
    texts = {lyrics.detokenize(item["lyrics"].tolist()) for item in datamodule.dataset("train")}
    assert {t for t in texts if t} <= {f"Verse {i}: sing along, la la la." for i in range(0, 12, 2)}
    assert "" in texts  # odd songs have no lyrics


def test_validation_is_the_same_every_pass_and_training_is_not(dataset_dir):
    datamodule = _datamodule(dataset_dir)
    first = [b["audio"] for b in datamodule.val_dataloader()]
    second = [b["audio"] for b in datamodule.val_dataloader()]
    assert len(first) > 0 and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    loader = datamodule.train_dataloader()
    one = torch.cat([b["timing"] for b in loader])
    two = torch.cat([b["timing"] for b in loader])
    assert len(one) == len(two) and not torch.equal(one, two)


def test_workers_read_disjoint_shards_and_together_every_song(dataset_dir):
    manifest = json.loads((dataset_dir / "dataset.json").read_text())
    datamodule = _datamodule(dataset_dir, num_workers=2, batch_size=1, aug_shift=False)
    totals = Counter()
    for batch in datamodule.train_dataloader():
        totals[batch["timing"][0, 0].item()] += 1
    expected_crops = sum(shard["samples"] // SAMPLE_LENGTH for shard in manifest["shards"]["train"])
    assert sum(totals.values()) == expected_crops  # each song's crops exactly once across workers


def test_crops_per_epoch_makes_an_endless_stream_of_a_fixed_length(dataset_dir):
    datamodule = _datamodule(dataset_dir, crops_per_epoch=50, batch_size=5)
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 10


def test_unknown_artists_of_a_given_vocabulary_map_to_zero_with_a_warning(dataset_dir):
    with pytest.warns(UnknownLabelWarning, match="is not in the vocabulary"):
        datamodule = _datamodule(dataset_dir, artists={"unknown": 0, "J.S. Bach": 1}, num_workers=0)
        artists = {item["artist"].item() for item in datamodule.dataset("train")}
    assert artists <= {0, 1} and 0 in artists


def test_two_ranks_read_disjoint_songs_that_together_are_all(dataset_dir, monkeypatch):
    datamodule = _datamodule(dataset_dir, aug_shift=False, aug_blend=False, shuffle_buffer=0)
    songs_by_rank = []
    for rank in range(2):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        dataset = datamodule.dataset("train")
        # A song is identified by its audio: the first crop's samples.
        songs_by_rank.append({item["audio"][0, :64].numpy().tobytes() for item in dataset if item["timing"][1] == 0})
    monkeypatch.undo()
    everything = {
        item["audio"][0, :64].numpy().tobytes() for item in datamodule.dataset("train") if item["timing"][1] == 0
    }
    assert songs_by_rank[0] and songs_by_rank[1]
    assert songs_by_rank[0].isdisjoint(songs_by_rank[1])
    assert songs_by_rank[0] | songs_by_rank[1] == everything


def test_more_ranks_than_training_shards_is_an_error_not_a_rank_without_data(dataset_dir):
    datamodule = _datamodule(dataset_dir)
    shards = len(datamodule.manifest["shards"]["train"])
    for ranks in (1, shards):
        datamodule.trainer = SimpleNamespace(world_size=ranks)
        assert datamodule.train_dataloader() is not None
    datamodule.trainer = SimpleNamespace(world_size=shards + 1)
    with pytest.raises(JukeboxError, match=rf"training split has {shards} shard\(s\) for {shards + 1} ranks"):
        datamodule.train_dataloader()


def test_the_train_pipeline_fits_a_model_on_streamed_crops(dataset_dir, tmp_path, run_cli):
    recipe = tmp_path / "fit.yaml"
    recipe.write_text(
        f"""
pipeline: train
output_dir: {tmp_path / "run"}
model: {{_component_: "toy_components:TinyAutoencoder", channels: 4}}
data:
  _component_: audio_shards
  path: {dataset_dir}
  sample_length: 2048
  batch_size: 4
  num_workers: 1
  n_tokens: 8
trainer: {{max_steps: 3, enable_progress_bar: false, enable_model_summary: false, accelerator: cpu}}
"""
    )
    code, out, err = run_cli("run", recipe)
    assert code == 0, err
    assert any(line.split() == ["global_step", "3"] for line in out.splitlines())
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def _damaged_copy(dataset_dir, tmp_path, damage):
    """A copy of the dataset whose first validation shard is ``damage(its bytes)``; (folder, that shard)."""
    copy = shutil.copytree(dataset_dir, tmp_path / "shards")
    manifest = json.loads((copy / "dataset.json").read_text())
    shard = copy / manifest["shards"]["validation"][0]["name"]
    shard.write_bytes(damage(shard.read_bytes()))
    return copy, shard


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: random.randbytes(700), r"not a readable shard \(ReadError"),
        (lambda data: data[: random.randint(1, 511)], r"not a readable shard \(ReadError"),
        (lambda data: b"\0" * 10240, r"holds no samples"),  # an empty tar: endless mode would wait for it forever
    ],
)
def test_a_shard_that_is_not_a_readable_tar_is_an_error_naming_it(dataset_dir, tmp_path, damage, message):
    copy, shard = _damaged_copy(dataset_dir, tmp_path, damage)
    datamodule = _datamodule(copy)
    with pytest.raises(JukeboxError, match=f"{shard}: {message}"):
        list(datamodule.dataset("validation"))
    datamodule = _datamodule(copy, crops_per_epoch=8)
    datamodule.shards = lambda split: [str(shard)]
    with pytest.raises(JukeboxError, match=f"{shard}: {message}"):
        list(datamodule.dataset("train"))


def test_a_shard_cut_between_members_names_the_sample_left_incomplete(dataset_dir, tmp_path):
    def cut_after_first_member(data: bytes) -> bytes:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            first = tar.next()
        return data[: first.offset_data + -(-first.size // 512) * 512]

    copy, shard = _damaged_copy(dataset_dir, tmp_path, cut_after_first_member)
    with pytest.raises(JukeboxError, match=rf"{shard}: \w+: no (json|flac) member \(a truncated or damaged shard\)"):
        list(_datamodule(copy).dataset("validation"))


def test_val_crops_takes_every_kth_crop_of_the_whole_split_and_decodes_no_other_song(dataset_dir, monkeypatch):
    full = [(tuple(item["timing"].tolist()), item["audio"]) for item in _datamodule(dataset_dir).dataset("validation")]
    wanted = random.randint(1, len(full) // 2)
    datamodule = _datamodule(dataset_dir, val_crops=wanted)
    every = datamodule.val_every
    assert every > 1 and wanted <= len(full[::every]) <= 2 * wanted  # about `wanted`, from the manifest alone
    decoded = []
    real = datamodule_module.decode
    monkeypatch.setattr(datamodule_module, "decode", lambda data, where: decoded.append(where) or real(data, where))
    for _ in range(2):  # the same crops on every pass
        decoded.clear()
        picked = [(tuple(item["timing"].tolist()), item["audio"]) for item in datamodule.dataset("validation")]
        assert len(picked) == len(full[::every])
        for (timing, audio), (timing_full, audio_full) in zip(picked, full[::every], strict=True):
            assert timing == timing_full and torch.equal(audio, audio_full)
    decoded.clear()
    assert len(list(_datamodule(dataset_dir, val_crops=1).dataset("validation"))) in (1, 2)
    assert len(decoded) == 1  # the crop kept is the first song's: the other songs are not decoded
    with pytest.raises(ValueError, match="val_crops must be positive"):
        _datamodule(dataset_dir, val_crops=0)


def test_a_short_endless_epoch_draws_from_every_song(tmp_path, monkeypatch):
    """One shard holding every training song, in order: an epoch of 40 % of the crops still reaches them all,
    where reading the stream from its start would reach the first 40 % of the songs only."""
    metadata = make_dataset(tmp_path, n_songs=12, seconds=2.0, sample_rate=22050)
    shards = tmp_path / "shards"
    write_shards(tmp_path / "audio", metadata, shards, sample_rate=22050, shard_size="100MB",
                 validation_fraction=0.25)  # fmt: skip
    train_songs = json.loads((shards / "dataset.json").read_text())["counts"]["train"]
    crops = sum(1 for _ in _datamodule(shards).dataset("train"))
    datamodule = _datamodule(shards, crops_per_epoch=int(crops * 0.4), shuffle_buffer=0)
    assert datamodule.train_crops == pytest.approx(crops, rel=0.2)  # estimated from dataset.json alone
    decoded = []
    real = datamodule_module.decode
    monkeypatch.setattr(datamodule_module, "decode", lambda data, where: decoded.append(where) or real(data, where))
    dataset, reached = datamodule.dataset("train"), set()
    for epoch in range(1, 4):
        dataset.epoch = epoch
        assert sum(1 for _ in dataset) == int(crops * 0.4)
        reached |= {where.rsplit(": ", 1)[1] for where in decoded}
        decoded.clear()
    assert len(reached) >= train_songs - 1  # each song is missed by an epoch with probability 0.6^5


def test_crop_selection_keeps_a_binomial_share_of_each_song_and_skips_songs_with_none():
    rng = np.random.default_rng()
    fraction = rng.uniform(0.05, 0.5)
    selection = CropSelection(fraction=fraction, rng=np.random.default_rng(1))
    kept = skipped = total = 0
    for _ in range(400):
        count = int(rng.integers(1, 40))
        offsets = np.sort(rng.choice(10_000, count, replace=False))
        total += count
        if selection.skip(count):
            skipped += 1
            continue
        picked = selection.pick(offsets)
        assert 0 < len(picked) <= count and np.isin(picked, offsets).all() and (np.diff(picked) > 0).all()
        kept += len(picked)
    assert kept == pytest.approx(fraction * total, rel=0.15) and skipped > 0
    every = CropSelection(every=3)
    assert [every.pick(np.arange(n)).tolist() for n in (4, 1, 2, 5)] == [[0, 3], [], [1], [2]]
    assert CropSelection().pick(np.arange(5)).tolist() == list(range(5)) and not CropSelection().active


@pytest.mark.parametrize("split", ["train", "validation"])
def test_a_shard_that_lost_whole_songs_is_an_error_naming_it(tmp_path, split):
    """Cut where a song begins, a shard reads as a whole tar; the manifest's song count tells."""
    # The split is by a hash of each song's path: all 6 songs train, or about half of 16 held out.
    metadata = make_dataset(tmp_path, n_songs=6 if split == "train" else 16, seconds=2.0, sample_rate=22050)
    shards = tmp_path / "shards"
    write_shards(tmp_path / "audio", metadata, shards, sample_rate=22050, shard_size="10MB",
                 validation_fraction=0.0 if split == "train" else 0.5)  # fmt: skip
    entry = json.loads((shards / "dataset.json").read_text())["shards"][split][0]
    shard, lost = shards / entry["name"], random.randint(1, entry["songs"] - 1)
    for _ in range(lost):
        shard.write_bytes(without_last_sample(shard.read_bytes()))
    datamodule = _datamodule(shards, crops_per_epoch=10_000 if split == "train" else None)
    left = entry["songs"] - lost
    with pytest.raises(JukeboxError, match=rf"{shard}: holds {left} songs?, but .* records {entry['songs']}"):
        list(datamodule.dataset(split))


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (b"\xff\xfe not json", r"\.json: not valid JSON"),
        (b"[1, 2]", r"\.json: must hold a JSON object, not list"),
        (b'{"lyrics": ["la", "la"]}', r"\.json: 'lyrics' must be text, not list"),
        (b'{"genres": true}', r"\.json: 'genres' must be a list of names, not True"),
        (b'{"artist": {"name": "Bach"}}', r"\.json: 'artist' must be a name"),
    ],
)
def test_a_damaged_json_member_is_an_error_naming_shard_and_member(dataset_dir, tmp_path, metadata, message):
    members = {}

    def replace_json(data: bytes) -> bytes:
        shard, members["json"] = with_member(data, ".json", lambda _: metadata)
        return shard

    copy, shard = _damaged_copy(dataset_dir, tmp_path, replace_json)
    key = members["json"].removesuffix(".json")
    with pytest.raises(JukeboxError, match=rf"{shard}: {key}{message}"):
        list(_datamodule(copy).dataset("validation"))


def test_a_flac_member_that_does_not_decode_is_an_error_naming_shard_and_member(dataset_dir, tmp_path):
    members = {}

    def replace_flac(data: bytes) -> bytes:
        shard, members["flac"] = with_member(data, ".flac", lambda _: random.randbytes(300))
        return shard

    copy, shard = _damaged_copy(dataset_dir, tmp_path, replace_flac)
    with pytest.raises(JukeboxError, match=rf"{shard}: {members['flac']}: not decodable audio"):
        list(_datamodule(copy).dataset("validation"))


def test_a_flac_header_with_a_damaged_sample_rate_is_an_error_not_resampled_audio(dataset_dir, tmp_path):
    members = {}

    def damage_rate(flac: bytes) -> bytes:
        # STREAMINFO's 20-bit sample rate starts at byte 18 (after "fLaC", a block header and 10 bytes).
        header = struct.unpack(">I", flac[18:22])[0]
        return flac[:18] + struct.pack(">I", header ^ (1 << 31)) + flac[22:]

    def replace_flac(data: bytes) -> bytes:
        shard, members["flac"] = with_member(data, ".flac", damage_rate)
        return shard

    copy, shard = _damaged_copy(dataset_dir, tmp_path, replace_flac)
    with pytest.raises(
        JukeboxError, match=rf"{shard}: {members['flac']}: decodes to \d+ frames at \d+ Hz, but its json records"
    ):
        list(_datamodule(copy).dataset("validation"))


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("{not json", r"not valid JSON"),
        ("[]", r"must hold a JSON object, not list"),
        (None, r"a damaged manifest: sample_rate must be a positive integer, not None"),
        (
            {"shards": {"train": ["train-000000.tar"]}},
            r"a damaged manifest: shards must map each split to a list of \{name",
        ),
        ({"artists": {"unknown": 0, "Bach": "1"}}, r"a damaged manifest: artist ids must map names to integers"),
        (
            {"genres": {"unknown": 0, "folk": 10**15}},
            r"a damaged manifest: genre ids must map names to integers from 0 to 1048575",
        ),
    ],
)
def test_a_damaged_manifest_is_an_error_naming_it(dataset_dir, tmp_path, manifest, message):
    copy = shutil.copytree(dataset_dir, tmp_path / "shards")
    if isinstance(manifest, dict) or manifest is None:
        written = json.loads((copy / "dataset.json").read_text())
        manifest = json.dumps({**written, **(manifest or {})} if manifest else {**written, "sample_rate": None})
    (copy / "dataset.json").write_text(manifest)
    with pytest.raises(JukeboxError, match=f"{copy / 'dataset.json'}: {message}"):
        _datamodule(copy)
