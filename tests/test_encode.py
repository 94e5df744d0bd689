"""The encode pipeline: audio shards -> code shards that match the VQ-VAE, resumable and refusing mixed inputs."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from audio_fixtures import make_dataset, without_last_sample

import jukebox_pl.pipelines.encode as encode_module
from jukebox_pl import registry
from jukebox_pl.checkpoints.export import export
from jukebox_pl.data.code_shards import FORMAT, MANIFEST, code_dtype, codes_from_npz, load_code_manifest
from jukebox_pl.data.shards import write_shards
from jukebox_pl.errors import JukeboxError
from jukebox_pl.pipelines.encode import PROGRESS, encode_dataset, encode_song, windows

SPEC = {
    "_component_": "tiny_vqvae",
    "width": 8,
    "depth": 1,
    "emb_width": 8,
    "bottleneck": {"_component_": "ema_vq", "codebook_size": 16},
}
# Windows of 0.5 s with 0.1 s of context: three windows per 1.5 s song, and a context far
# wider than the depth-1 encoders' receptive field (146 samples at the top level).
WINDOWED = {"window_seconds": 0.5, "context_seconds": 0.1}


def _tiny_vqvae(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = registry.build("vqvae", SPEC)
    model.train()
    model(torch.randn(2, 1, 4096))  # initialises the codebooks from encoder outputs
    return model.eval()


@pytest.fixture(scope="module")
def vqvae(tmp_path_factory):
    """(export folder, the model) of a tiny two-level VQ-VAE: 22.05 kHz, hops 4 and 16, 16 codes."""
    folder = tmp_path_factory.mktemp("vqvae") / "model"
    model = _tiny_vqvae(seed=0)
    export(model, folder, recipe={"model": SPEC}, key="model")
    return folder, model


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Five 1.5 s songs (mono and stereo) stored at 44.1 kHz, so encoding resamples them."""
    root = tmp_path_factory.mktemp("songs")
    metadata = make_dataset(root, n_songs=5, seconds=1.5)
    write_shards(root / "audio", metadata, root / "shards", sample_rate=44100, min_seconds=1.0)
    return root / "shards"


@pytest.fixture(scope="module")
def encoded(vqvae, shards, tmp_path_factory):
    """(out folder, summary) of one windowed encoding of every song."""
    out = tmp_path_factory.mktemp("encoded") / "codes"
    summary = encode_dataset(vqvae[0], shards, out, **WINDOWED)
    return out, summary


def _items(folder):
    """{key: (shard name, field name -> bytes)} of every sample in the folder's tar shards."""
    items = {}
    for tar_path in sorted(folder.glob("*.tar")):
        with tarfile.open(tar_path) as archive:
            for member in archive.getmembers():
                key, _, field = member.name.partition(".")
                items.setdefault(key, (tar_path.name, {}))[1][field] = archive.extractfile(member).read()
    return items


def _mono(flac: bytes, sample_rate: int) -> np.ndarray:
    """The song decoded, resampled and mixed to mono, computed here without the pipeline's helpers."""
    audio, rate = sf.read(io.BytesIO(flac), dtype="float32", always_2d=True)
    return soxr.resample(audio, rate, sample_rate, quality="HQ").astype(np.float32).mean(axis=1)


def _expected_codes(model, flac: bytes) -> list[np.ndarray]:
    audio = _mono(flac, model.sample_rate)
    return [codes[0].numpy() for codes in model.encode(torch.from_numpy(audio)[None, None])]


def test_windows_tile_the_song_and_carry_context_inside_it():
    spans = windows(100, 32, 16)
    assert [(start, end) for start, end, _, _ in spans] == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert [(first, last) for _, _, first, last in spans] == [(0, 48), (16, 80), (48, 100), (80, 100)]
    assert windows(0, 32, 16) == []


@pytest.mark.parametrize(
    ("length", "window", "context"),
    [(17, 16, 128), (1000, 16, 128), (5000, 64, 128), (5000, 1024, 256), (4096, 1024, 256), (33075, 2048, 128)],
)
def test_windowed_encoding_equals_whole_song_encoding(vqvae, length, window, context):
    model = vqvae[1]
    audio = torch.randn(1, length)
    whole = model.encode(audio[None])
    windowed = encode_song(model, audio, window, context)
    for level, hop in enumerate(model.hop_lengths):
        assert windowed[level].shape == (-(-length // hop),)
        assert torch.equal(windowed[level], whole[level][0])


def test_encoding_without_context_differs_at_window_edges(vqvae):
    model = vqvae[1]
    audio = torch.randn(1, 2048)
    whole = model.encode(audio[None])
    assert not torch.equal(encode_song(model, audio, 64, 0)[1], whole[1][0])


def test_receptive_field_adds_up_every_convolution(vqvae):
    # Level 1 of the depth-1 model, (kernel - 1) x dilation x input stride per convolution:
    # stage 0: 3*1 (down) + 2*2 (residual) + 3*2 (down) + 2*4 (residual) + 2*4 (projection) = 29
    # stage 1: 3*4 + 2*8 + 3*8 + 2*16 + 2*16 = 116
    assert encode_module.receptive_field(vqvae[1].encoders[1]) == 1 + 29 + 116


def test_a_context_narrower_than_the_receptive_field_is_warned_about(vqvae, shards, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="jukebox_pl")
    caplog.clear()
    encode_dataset(vqvae[0], shards, tmp_path / "codes", splits=["validation"], context_seconds=0.001)
    lines = caplog.messages
    assert any(line.startswith("warning: context_seconds=0.001 is narrower") for line in lines)


def test_windows_off_the_top_hop_grid_are_refused(vqvae):
    with pytest.raises(ValueError, match="multiples of 16"):
        encode_song(vqvae[1], torch.randn(1, 100), 24, 16)


def test_code_dtype_is_int16_up_to_32767_codes():
    assert code_dtype(2048) == np.int16 and code_dtype(32767) == np.int16 and code_dtype(32768) == np.int32


def test_codes_equal_the_vqvae_encoding_of_each_resampled_mono_song(vqvae, shards, encoded):
    out, _ = encoded
    model = vqvae[1]
    songs = _items(shards)
    items = _items(out)
    assert set(items) == set(songs)
    for key, (shard_name, fields) in items.items():
        assert set(fields) == {"codes.npz", "json"}
        codes = codes_from_npz(fields["codes.npz"])
        expected = _expected_codes(model, songs[key][1]["flac"])
        assert len(codes) == 2
        for level_codes, level_expected in zip(codes, expected, strict=True):
            assert level_codes.dtype == np.int16
            np.testing.assert_array_equal(level_codes, level_expected)
        original = json.loads(songs[key][1]["json"])
        record = json.loads(fields["json"])
        split = shard_name.split("-")[0]
        assert songs[key][0].startswith(split)  # a song stays in its split
        for label in ("artist", "genres", "lyrics", "title", "year"):
            assert record[label] == original[label]
        assert record["sample_rate"] == 22050 and record["source_sample_rate"] == 44100
        assert record["length"] == len(_mono(songs[key][1]["flac"], 22050)) == 33075
        assert record["hop_lengths"] == [4, 16] and record["codebook_sizes"] == [16, 16]


def test_manifest_counts_songs_and_codes_and_copies_the_vocabularies(shards, encoded):
    out, summary = encoded
    manifest = load_code_manifest(out)
    audio = json.loads((shards / "dataset.json").read_text())
    assert manifest["format"] == FORMAT
    assert manifest["sample_rate"] == 22050 and manifest["levels"] == 2
    assert manifest["hop_lengths"] == [4, 16] and manifest["codebook_sizes"] == [16, 16]
    assert manifest["dtypes"] == ["int16", "int16"]
    assert manifest["artists"] == audio["artists"] and manifest["genres"] == audio["genres"]
    assert manifest["counts"] == {key: audio["counts"][key] for key in ("songs", "train", "validation")}
    assert manifest["counts"]["songs"] == 5 and manifest["counts"]["validation"] >= 1
    per_song = [-(-33075 // 4), -(-33075 // 16)]
    for split in ("train", "validation"):
        songs = manifest["counts"][split]
        assert manifest["codes"][split] == [songs * n for n in per_song]
        listed = manifest["shards"][split]
        assert sum(s["songs"] for s in listed) == songs and all((out / s["name"]).is_file() for s in listed)
    assert manifest["total_seconds"] == pytest.approx(5 * 1.5)
    assert summary["songs"] == {"train": manifest["counts"]["train"], "validation": manifest["counts"]["validation"]}
    assert summary["codes"] == [5 * n for n in per_song] and summary["encoded"] == 5
    assert summary["audio_seconds"] == pytest.approx(7.5)
    assert summary["realtime_factor"] >= 0  # a speed: any value on a busy machine


def test_rerun_after_losing_a_shard_encodes_only_its_songs(vqvae, shards, tmp_path, caplog):
    out = tmp_path / "codes"
    first = encode_dataset(vqvae[0], shards, out, shard_size="1KB")  # one song per shard
    assert first["shards"] == 5
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    lost = sorted(kept)[0]
    (out / lost).unlink()
    del kept[lost]
    caplog.set_level(logging.INFO, logger="jukebox_pl")
    caplog.clear()
    second = encode_dataset(vqvae[0], shards, out, shard_size="1KB")
    lines = caplog.messages
    assert second["encoded"] == 1 and second["songs"] == first["songs"] and second["codes"] == first["codes"]
    assert any(lost in line for line in lines)
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    manifest = load_code_manifest(out)
    listed = [s["name"] for split in ("train", "validation") for s in manifest["shards"][split]]
    assert sorted(listed) == sorted(p.name for p in out.glob("*.tar")) and len(listed) == 5
    assert encode_dataset(vqvae[0], shards, out, shard_size="1KB")["encoded"] == 0


def test_crash_leaves_no_partial_shard_and_the_rerun_encodes_the_rest(vqvae, shards, encoded, tmp_path, monkeypatch):
    out = tmp_path / "codes"
    calls = []

    def crash_on_the_fourth_song(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return encode_song(*args, **kwargs)

    monkeypatch.setattr(encode_module, "encode_song", crash_on_the_fourth_song)
    with pytest.raises(RuntimeError, match="killed"):
        encode_dataset(vqvae[0], shards, out, shard_size="40KB", **WINDOWED)  # two songs per shard
    monkeypatch.undo()
    progress = json.loads((out / PROGRESS).read_text())
    finished = {shard["name"] for shard in progress["shards"]}
    done = sum(len(shard["songs"]) for shard in progress["shards"])
    # Three songs were encoded before the crash; the shards finished hold two or three of them. The
    # train/validation split hashes each song's path, so it changes with the temporary folder: where a
    # split's last shard ends varies. The third song is left in an open (temporary) shard exactly when
    # the finished shards hold two songs.
    assert {p.name for p in out.glob("*.tar")} == finished and done in (2, 3)
    assert bool(list(out.glob(".*.tar.tmp"))) == (done == 2) and not (out / MANIFEST).exists()
    (out / ".train-000009.tar.tmp").write_bytes(b"half a shard")

    summary = encode_dataset(vqvae[0], shards, out, shard_size="40KB", **WINDOWED)
    assert summary["encoded"] == 5 - done
    assert not list(out.glob(".*.tmp"))
    reference = _items(encoded[0])
    resumed = _items(out)
    assert set(resumed) == set(reference)
    for key, (_, fields) in resumed.items():
        assert fields["codes.npz"] == reference[key][1]["codes.npz"]
    assert load_code_manifest(out)["counts"]["songs"] == 5


def test_codes_of_another_vqvae_or_dataset_are_not_mixed_in(vqvae, shards, tmp_path):
    out = tmp_path / "codes"
    encode_dataset(vqvae[0], shards, out, shard_size="1KB")
    other = tmp_path / "other_model"
    other_model = _tiny_vqvae(seed=1)
    export(other_model, other, recipe={"model": SPEC}, key="model")
    with pytest.raises(JukeboxError, match="different vqvae") as refused:
        encode_dataset(other, shards, out)
    assert str(vqvae[0]) in str(refused.value) and "resume=false" in str(refused.value)

    changed = tmp_path / "changed_shards"
    changed.mkdir()
    for path in shards.iterdir():
        (changed / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((changed / "dataset.json").read_text())
    (changed / "dataset.json").write_text(json.dumps({**manifest, "total_seconds": 1.0}))
    with pytest.raises(JukeboxError, match="different data"):
        encode_dataset(vqvae[0], changed, out)

    summary = encode_dataset(other, shards, out, resume=False)
    assert summary["encoded"] == 5 and summary["shards"] == 1 + (summary["songs"]["validation"] > 0)
    songs = _items(shards)
    for key, (_, fields) in _items(out).items():
        expected = _expected_codes(other_model, songs[key][1]["flac"])
        np.testing.assert_array_equal(codes_from_npz(fields["codes.npz"])[1], expected[1])


def test_an_audio_shard_that_lost_a_song_is_an_error_naming_it(vqvae, shards, tmp_path):
    copy = shutil.copytree(shards, tmp_path / "shards")
    listed = [s for split in json.loads((copy / "dataset.json").read_text())["shards"].values() for s in split]
    entry = max(listed, key=lambda shard: shard["songs"])
    assert entry["songs"] > 1
    shard = copy / entry["name"]
    shard.write_bytes(without_last_sample(shard.read_bytes()))
    with pytest.raises(JukeboxError, match=rf"{shard}: holds {entry['songs'] - 1} songs?, but .* records"):
        encode_dataset(vqvae[0], copy, tmp_path / "codes")


def test_audio_shards_are_never_overwritten(vqvae, shards):
    with pytest.raises(JukeboxError, match="the audio dataset itself"):
        encode_dataset(vqvae[0], shards, shards)


@pytest.mark.parametrize("broken", ["missing", "empty_folder", "garbage_weights", "garbage_ckpt"])
def test_a_missing_or_broken_vqvae_is_an_error_naming_it(shards, tmp_path, vqvae, broken):
    path = tmp_path / broken
    if broken == "empty_folder":
        path.mkdir()
    elif broken == "garbage_weights":
        path.mkdir()
        (path / "recipe.yaml").write_text((vqvae[0] / "recipe.yaml").read_text())
        (path / "model.safetensors").write_bytes(b"not a safetensors file")
    elif broken == "garbage_ckpt":
        path = tmp_path / "last.ckpt"
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(JukeboxError, match=str(path)):
        encode_dataset(path, shards, tmp_path / "codes")


def test_load_code_manifest_refuses_an_audio_dataset(shards, tmp_path):
    with pytest.raises(JukeboxError, match="that is an audio dataset"):
        load_code_manifest(shards)
    with pytest.raises(JukeboxError, match="not found"):
        load_code_manifest(tmp_path)


def test_encode_runs_from_a_recipe_and_resumes(run_cli, vqvae, shards, tmp_path):
    recipe = tmp_path / "encode.yaml"
    recipe.write_text(
        "# jukebox-pl run encode.yaml\n"
        "pipeline: encode\n"
        f"output_dir: {tmp_path / 'run'}\n"
        f"vqvae: {vqvae[0]}\n"
        f"data: {shards}\n"
        f"out: {tmp_path / 'codes'}\n"
        "splits: [train]\n"
        "window_seconds: 0.5\n"
    )
    code, out, err = run_cli("run", recipe)
    assert code == 0, err
    manifest = load_code_manifest(tmp_path / "codes")
    assert list(manifest["shards"]) == ["train"] and f"train={manifest['counts']['train']}" in out
    code, out, err = run_cli("run", recipe)
    assert code == 0 and "resuming" in err
    assert any(line.split() == ["encoded", "0"] for line in out.splitlines())
    code, _, err = run_cli("run", recipe, "vqvae=nowhere/model")
    assert code == 2 and "nowhere/model" in err


def test_the_demo_recipe_validates(run_cli):
    code, out, err = run_cli("validate", "vqvae/encode_demo")
    assert code == 0, err
    assert "encode" in out


def test_encoding_finished_codes_again_leaves_the_manifest_untouched(vqvae, shards, tmp_path):
    out = tmp_path / "codes"
    encode_dataset(vqvae[0], shards, out)
    before = (out / "dataset.json").stat().st_mtime_ns
    again = encode_dataset(vqvae[0], shards, out)
    assert again["encoded"] == 0 and again["reused"] is True
    assert (out / "dataset.json").stat().st_mtime_ns == before
