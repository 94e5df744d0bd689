"""The spectral benchmark (`pipeline: evaluate`): fixed crops, metrics recomputed by hand, reports, errors."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import tarfile
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from audio_fixtures import make_dataset, write_song
from auraloss.freq import MultiResolutionSTFTLoss
from launch import run_processes

import jukebox_pl
from jukebox_pl import registry
from jukebox_pl.checkpoints.export import export
from jukebox_pl.data.shards import write_shards
from jukebox_pl.errors import JukeboxError
from jukebox_pl.metrics.codebook import codebook_statistics
from jukebox_pl.pipelines.base import RunContext
from jukebox_pl.pipelines.evaluate import EvaluatePipeline  # also registers `evaluate`
from jukebox_pl.pipelines.evaluate_scores import Crop, choose_crops, song_lengths

DATA_RATE = 16000
# Short crops and small STFTs keep the test quick; the overrides must reach report.json and report.md.
MR_STFT = {"fft_sizes": [512, 256], "hop_sizes": [128, 64], "win_lengths": [512, 256]}
SETTINGS = dict(split="validation", crops=4, crop_seconds=0.25, seed=3, batch_size=3, plot_items=2,
                multi_resolution_stft=MR_STFT, log_mel={"n_ffts": [512, 256], "n_mels": 40})  # fmt: skip


def _shards(root: Path, n_songs: int, validation_fraction: float) -> Path:
    metadata = make_dataset(root, n_songs=n_songs, seconds=1.0, sample_rate=DATA_RATE)
    out = root / "shards"
    write_shards(root / "audio", metadata, out, sample_rate=DATA_RATE, validation_fraction=validation_fraction,
                 min_seconds=0.5)  # fmt: skip
    return out


def _export_tiny(folder: Path, bottleneck: dict, sample_rate: int) -> str:
    spec = {"_component_": "tiny_vqvae", "sample_rate": sample_rate, "width": 8, "depth": 1, "emb_width": 8,
            "bottleneck": bottleneck}  # fmt: skip
    torch.manual_seed(0)
    model = registry.build("vqvae", spec)
    model.train()
    model(torch.randn(2, 1, 1024))  # a training pass initialises the EMA codebook from encoder outputs
    export(model, folder, recipe={"model": spec}, key="model")
    return str(folder)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _shards(tmp_path_factory.mktemp("songs"), n_songs=4, validation_fraction=0.5)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("checkpoints")
    # Two codecs at two sample rates: the crops are resampled for each.
    return {
        "ema": _export_tiny(root / "ema", {"_component_": "ema_vq", "codebook_size": 16}, 22050),
        "fsq": _export_tiny(root / "fsq", {"_component_": "fsq", "levels": [4, 4]}, DATA_RATE),
    }


def _run(run_dir: Path, checkpoints: dict[str, str], data: Path, **arguments) -> dict:
    pipeline = EvaluatePipeline(checkpoints=checkpoints, data=str(data), **{**SETTINGS, **arguments})
    return dict(pipeline.run(RunContext(run_dir, {}, "test")))


@pytest.fixture(scope="module")
def run(tmp_path_factory, checkpoints, dataset) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, _run(run_dir, checkpoints, dataset)


def _report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


# ---------------------------------------------------------------------------- crops, on their own
def test_crops_are_spread_over_songs_and_fixed_by_the_seed():
    rng = random.Random()
    songs = [(f"song{i}", rng.uniform(5.0, 30.0)) for i in range(rng.randint(2, 9))]
    count, seconds, seed = rng.randint(4, 40), rng.uniform(0.2, 3.0), rng.randint(0, 10**6)
    crops = choose_crops(songs, count, seconds, seed)
    assert crops == choose_crops(list(reversed(songs)), count, seconds, seed)  # song order does not matter
    assert crops != choose_crops(songs, count, seconds, seed + 1)
    lengths = dict(songs)
    per_song = [sum(crop.song == key for crop in crops) for key, _ in songs]
    assert max(per_song) - min(per_song) <= 1  # cycling over the songs
    for crop in crops:
        assert crop.seconds == seconds
        assert 0 <= crop.offset_seconds <= lengths[crop.song] - seconds
        assert crop.offset_seconds == round(crop.offset_seconds, 3)


def test_a_song_shorter_than_a_crop_is_taken_whole():
    assert choose_crops([("short", 0.3)], 2, 1.0, seed=0) == [Crop("short", 0.0, 0.3)] * 2


def test_a_crop_is_cut_at_its_offset_and_trimmed_to_the_hop():
    rate, hop = random.choice([(16000, 16), (22050, 128), (44100, 128)])
    song = np.arange(3 * rate, dtype=np.float32)
    crop = Crop("song", offset_seconds=0.25, seconds=1.3)
    piece = crop.cut(song, rate, hop)
    assert piece[0] == round(0.25 * rate)
    assert len(piece) == math.floor(1.3 * rate) // hop * hop
    assert len(Crop("song", 2.9, 1.0).cut(song, rate, hop)) == round(0.1 * rate) // hop * hop  # the song ends


# ---------------------------------------------------------------------------- the reports
def test_the_run_writes_reports_and_spectrograms(run, checkpoints):
    run_dir, summary = run
    for name in ("report.json", "report.csv", "report.md"):
        assert (run_dir / name).is_file()
    for item in range(SETTINGS["plot_items"]):
        for name in checkpoints:
            assert (run_dir / "spectrograms" / f"item{item}_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run_dir / "spectrograms" / f"item{SETTINGS['plot_items']}_ema.png").exists()
    report = _report(run_dir)
    assert summary["report"] == str(run_dir / "report.md")
    assert summary["ema sc_db"] == {
        f"l{level}": round(values["spectral_convergence_db"], 2) for level, values in report["results"]["ema"].items()
    }
    settings = report["settings"]
    assert settings["seed"] == SETTINGS["seed"] and len(settings["crops"]) == SETTINGS["crops"]
    assert {key: settings["metrics"]["multi_resolution_stft"][key] for key in MR_STFT} == MR_STFT
    assert settings["metrics"]["log_mel_distance"]["n_ffts"] == [512, 256]
    assert settings["checkpoints"]["ema"]["sample_rate"] == 22050
    assert settings["checkpoints"]["fsq"]["hop_lengths"] == [4, 16]
    assert set(report["results"]["fsq"]["1"]) >= {
        "spectral_convergence_db",
        "si_sdr_db",
        "entropy_bits",
        "bitrate_kbps",
    }
    # 16000 / 4 codes per second of log2(16) bits
    assert report["results"]["fsq"]["0"]["bitrate_kbps"] == pytest.approx(16.0)


def _rebuilt_crops(data: Path, crops: list[dict], rate: int, hop: int) -> list[np.ndarray]:
    """The recorded crops, cut by hand from the shards: decode, resample, mono, cut, trim to the hop."""
    songs = {}
    for shard in data.glob("validation-*.tar"):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".flac"):
                    audio, song_rate = sf.read(io.BytesIO(tar.extractfile(member).read()), dtype="float32",
                                               always_2d=True)  # fmt: skip
                    songs[member.name.removesuffix(".flac")] = soxr.resample(audio, song_rate, rate, "HQ").mean(1)
    pieces = []
    for crop in crops:
        start, length = round(crop["offset_seconds"] * rate), math.floor(crop["seconds"] * rate)
        piece = songs[crop["song"]][start : start + length]
        pieces.append(piece[: len(piece) // hop * hop].astype(np.float32))
    return pieces


def _sc(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    window = torch.hann_window(1536)
    spectrum = [torch.stft(x, 2048, 256, 1536, window, return_complex=True).abs() for x in (target, reconstruction)]
    return float(torch.linalg.norm(spectrum[0] - spectrum[1]) / torch.linalg.norm(spectrum[0]))


def _si_sdr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    estimate, reference = reconstruction.double(), target.double()
    estimate, reference = estimate - estimate.mean(), reference - reference.mean()
    projection = (estimate @ reference) / (reference @ reference) * reference
    return float(10 * torch.log10((projection @ projection) / ((estimate - projection) @ (estimate - projection))))


@pytest.mark.parametrize("name", ["ema", "fsq"])
def test_the_same_crops_give_the_same_codes_and_audio_in_any_batch_and_with_any_thread_count(
    dataset, checkpoints, name
):
    model = jukebox_pl.load(checkpoints[name])
    crops = [asdict(crop) for crop in choose_crops(song_lengths(dataset, "validation"), 8, 0.25, seed=5)]
    audio = torch.from_numpy(np.stack(_rebuilt_crops(dataset, crops, model.sample_rate, model.hop_lengths[-1])))
    threads = torch.get_num_threads()
    encoded, decoded = {}, {}
    try:
        for thread_count in (1, 2):
            torch.set_num_threads(thread_count)
            for batch_size in (1, 3, 8):
                batches = [model.encode(audio[start : start + batch_size, None]) for start in range(0, 8, batch_size)]
                codes = [torch.cat(level) for level in zip(*batches, strict=True)]
                encoded[thread_count, batch_size] = codes
                decoded[thread_count, batch_size] = [
                    torch.cat([model.decode(level_codes[start : start + batch_size], level)
                               for start in range(0, 8, batch_size)])
                    for level, level_codes in enumerate(codes)
                ]  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    reference = encoded[1, 1]
    assert sum(codes.numel() for codes in reference) > 8 * 1000  # enough vectors to meet near ties
    for key, codes in encoded.items():
        for level, (level_codes, expected) in enumerate(zip(codes, reference, strict=True)):
            assert torch.equal(level_codes, expected), (key, level)
        for level, (audio_out, expected) in enumerate(zip(decoded[key], decoded[1, 1], strict=True)):
            assert torch.equal(audio_out, expected), (key, level)


@pytest.mark.parametrize("name", ["ema", "fsq"])
def test_report_matches_metrics_recomputed_from_the_crops(run, dataset, checkpoints, name):
    report = _report(run[0])
    model = jukebox_pl.load(checkpoints[name])
    inputs = _rebuilt_crops(dataset, report["settings"]["crops"], model.sample_rate, model.hop_lengths[-1])
    assert [len(x) for x in inputs] == report["settings"]["checkpoints"][name]["crop_samples"]
    parameters = report["settings"]["metrics"]["multi_resolution_stft"]
    mr_stft = MultiResolutionSTFTLoss(**{key: parameters[key] for key in MR_STFT})
    for level in range(model.levels):
        sc, sdr, l1, mrs, counts = [], [], [], [], np.zeros(model.codebook_sizes[level], dtype=np.int64)
        for piece in inputs:
            target = torch.from_numpy(piece)
            codes = model.encode(target[None, None])[level]
            reconstruction = model.decode(codes, level)[0, 0, : len(piece)]
            counts += np.bincount(codes.flatten().numpy(), minlength=len(counts))
            sc.append(_sc(reconstruction, target))
            sdr.append(_si_sdr(reconstruction, target))
            l1.append(float((reconstruction - target).abs().mean()))
            mrs.append(float(mr_stft(reconstruction[None, None], target[None, None])))
        p = counts[counts > 0] / counts.sum()
        reported = report["results"][name][str(level)]
        # The report decoded the crops in batches, this test one by one: the same audio, the sums in another order.
        assert reported["spectral_convergence_db"] == pytest.approx(20 * math.log10(np.mean(sc)), abs=1e-6)
        # torchmetrics adds float64's eps to both energies, which this formula leaves out: near -80 dB (an untrained
        # model's reconstruction is nearly orthogonal to its target) that moves the figure by about 1e-4 dB.
        assert reported["si_sdr_db"] == pytest.approx(np.mean(sdr), rel=1e-6, abs=1e-3)
        assert reported["waveform_l1"] == pytest.approx(np.mean(l1), rel=1e-6)
        assert reported["multi_resolution_stft"] == pytest.approx(np.mean(mrs), rel=1e-6)
        # The codes do not depend on the batching: the report's code counts are exactly those of the crops one by one.
        usage = codebook_statistics(torch.from_numpy(counts))
        assert reported["used_codes"] == int((counts > 0).sum()) == int(usage["used"])
        assert reported["dead_codes"] == model.codebook_sizes[level] - reported["used_codes"]
        assert reported["entropy_bits"] == float(usage["entropy_bits"]) + 0.0
        assert reported["entropy_bits"] == pytest.approx(float(-(p * np.log2(p)).sum()), abs=1e-12)


def test_csv_holds_every_checkpoint_level_and_crop_and_averages_to_the_report(run):
    run_dir, _ = run
    report = _report(run_dir)
    with open(run_dir / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * SETTINGS["crops"]  # checkpoints x levels x crops
    crops = report["settings"]["crops"]
    for row in rows:
        crop = crops[int(row["crop"])]
        assert (row["song"], float(row["offset_seconds"])) == (crop["song"], crop["offset_seconds"])
    for name, levels in report["results"].items():
        for level, values in levels.items():
            mine = [r for r in rows if r["checkpoint"] == name and r["level"] == level]
            for key in ("spectral_convergence", "log_mel_distance", "si_sdr_db", "waveform_l1"):
                assert np.mean([float(r[key]) for r in mine]) == pytest.approx(values[key], rel=1e-6)


def test_markdown_has_a_table_per_level_with_one_column_per_checkpoint(run):
    markdown = (run[0] / "report.md").read_text()
    sections = markdown.split("\n## ")
    levels = [s for s in sections if s.startswith("Level ")]
    assert [s.splitlines()[0] for s in levels] == ["Level 0", "Level 1"]
    for section in levels:
        table = [line for line in section.splitlines() if line.startswith("|")]
        assert table[0] == "| metric | ema | fsq |"
        assert all(line.count("|") == 4 for line in table)
        assert any(line.startswith("| spectral convergence (dB) ↓ |") for line in table)
        assert any(line.startswith("| SI-SDR (dB) ↑ |") for line in table)
    assert "lower is better" in markdown and "20·log10" in markdown
    assert "FFT sizes 512, 256, hop sizes 128, 64, window lengths 512, 256" in markdown


def test_two_runs_give_identical_results(run, tmp_path, checkpoints, dataset):
    _run(tmp_path, checkpoints, dataset, plot_items=0)
    first, second = _report(run[0]), _report(tmp_path)
    assert second["settings"]["crops"] == first["settings"]["crops"]
    assert second["results"] == first["results"]
    assert (tmp_path / "report.csv").read_text() == (run[0] / "report.csv").read_text()


# ---------------------------------------------------------------------------- errors
def test_a_missing_checkpoint_is_one_clear_error(tmp_path, dataset):
    missing = tmp_path / "runs" / "nothing_here"
    with pytest.raises(JukeboxError, match=r"checkpoints\.mine: .*nothing_here does not exist"):
        _run(tmp_path, {"mine": str(missing)}, dataset)
    assert not (tmp_path / "report.json").exists()


def test_a_checkpoint_that_is_not_a_vqvae_is_refused(tmp_path, dataset):
    spec = {"_component_": "ema_vq", "codebook_size": 16, "emb_width": 8}
    export(registry.build("bottleneck", spec), tmp_path / "bottleneck", recipe={"model": spec}, key="model")
    with pytest.raises(JukeboxError, match=r"checkpoints\.codebook: .* not a VQ-VAE \(it has no .*hop_lengths"):
        _run(tmp_path, {"codebook": str(tmp_path / "bottleneck")}, dataset)


def test_an_unknown_or_empty_split_is_refused(tmp_path, dataset, checkpoints):
    with pytest.raises(JukeboxError, match=r"no split 'valid' \(did you mean 'validation'"):
        _run(tmp_path, checkpoints, dataset, split="valid")
    train_only = _shards(tmp_path / "train_only", n_songs=2, validation_fraction=0.0)
    with pytest.raises(JukeboxError, match=r"the 'validation' split has no songs"):
        _run(tmp_path, checkpoints, train_only)


def test_crops_too_short_for_the_top_hop_or_the_stft_are_refused(tmp_path, dataset, checkpoints):
    write_song(tmp_path / "audio" / "blip.wav", seconds=10 / DATA_RATE, sample_rate=DATA_RATE, seed=1)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"path": "blip.wav"}) + "\n")
    blip = tmp_path / "shards"
    write_shards(tmp_path / "audio", tmp_path / "metadata.jsonl", blip, sample_rate=DATA_RATE,
                 validation_fraction=0.0, min_seconds=0.0)  # fmt: skip
    with pytest.raises(JukeboxError, match=r"song blip_\w+ \(0.0006 s\) is shorter than the top hop length of "):
        _run(tmp_path, {"fsq": checkpoints["fsq"]}, blip, split="train")
    with pytest.raises(JukeboxError, match=r"too short for the STFT of 2048 points.*raise crop_seconds"):
        _run(tmp_path, checkpoints, dataset, crop_seconds=0.05, multi_resolution_stft=None, log_mel=None)


# ---------------------------------------------------------------------------- the command line
def test_the_command_line_runs_a_recipe_and_adds_a_column(run_cli, tmp_path, checkpoints, dataset):
    recipe = tmp_path / "spectral.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""
            pipeline: evaluate
            output_dir: {tmp_path / "out"}
            checkpoints:
              ema: {checkpoints["ema"]}
            data: {dataset}
            crops: 2
            crop_seconds: 0.25
            plot_items: 0
            """
        )
    )
    code, out, err = run_cli("run", recipe, f"checkpoints.fsq={checkpoints['fsq']}")
    assert code == 0, err
    assert "ema sc_db" in out and "fsq sc_db" in out and str(tmp_path / "out" / "report.md") in out
    assert list(_report(tmp_path / "out")["results"]) == ["ema", "fsq"]


def test_the_packaged_recipe_is_valid(run_cli):
    code, out, err = run_cli("validate", "eval/spectral")
    assert code == 0, err
    assert "pipeline 'evaluate'" in out


# Two processes started twice, about 30 s a case even for 2 crops: with the long tests, which CI runs
@pytest.mark.slow
@pytest.mark.parametrize("crops", [5, 2])
def test_two_processes_share_the_crops_and_report_what_one_process_reports(tmp_path, checkpoints, dataset, crops):
    import sys

    # 5 crops in batches of 2 make 3 batches: rank 0 scores two, rank 1 one, and every crop is counted once.
    # 2 crops make one batch: rank 1 has none, and keeps in step with rank 0 on a padding batch that counts nothing.
    settings = {**SETTINGS, "crops": crops, "batch_size": 2}
    recipe = {"pipeline": "evaluate", "checkpoints": checkpoints, "data": str(dataset), **settings}
    path = tmp_path / "ddp.yaml"
    path.write_text(json.dumps(recipe))
    # One thread per process: two processes on two cores. (The results do not depend on the thread count.)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, devices in (("ddp", ["trainer.devices=2", "trainer.strategy=ddp"]), ("one", [])):
        command = [sys.executable, "-m", "jukebox_pl.cli", "run", str(path), f"output_dir={tmp_path / name}", *devices]
        finished = run_processes(command, env=environment)
        assert finished.returncode == 0, finished.stderr[-3000:]
    two, one = _report(tmp_path / "ddp"), _report(tmp_path / "one")
    assert two["settings"] == one["settings"]
    for name, levels in one["results"].items():
        for level, results in levels.items():
            for key, value in results.items():
                # the same sums, added in another order
                assert two["results"][name][level][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, level, key)
    rows = {
        name: list(csv.DictReader(io.StringIO((tmp_path / name / "report.csv").read_text()))) for name in ("ddp", "one")
    }
    assert [(r["checkpoint"], r["level"], r["crop"]) for r in rows["ddp"]] == [
        (r["checkpoint"], r["level"], r["crop"]) for r in rows["one"]
    ]
    assert len(rows["one"]) == crops * 2 * 2  # crops x levels x checkpoints
    assert rows["ddp"] == rows["one"]  # every crop's values, exactly
    assert sorted(p.name for p in (tmp_path / "ddp" / "spectrograms").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "spectrograms").iterdir()
    )


def test_a_second_run_reuses_the_report_until_settings_or_weights_change(tmp_path, checkpoints, dataset):
    folder = tmp_path / "run"
    first = _run(folder, checkpoints, dataset, crops=2, plot_items=0)
    stamp = (folder / "report.json").stat().st_mtime_ns
    assert _run(folder, checkpoints, dataset, crops=2, plot_items=0) == {**first, "reused": True}
    assert (folder / "report.json").stat().st_mtime_ns == stamp  # not written again
    _run(folder, checkpoints, dataset, crops=3, plot_items=0)  # other settings: scored again
    assert len(_report(folder)["settings"]["crops"]) == 3
    assert _run(folder, checkpoints, dataset, crops=3, plot_items=0)["reused"]
    weights = Path(checkpoints["fsq"]) / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))  # new weights
    # Scored again (a rewrite within the file system's clock tick keeps the time stamp: the summary says it).
    assert "reused" not in _run(folder, checkpoints, dataset, crops=3, plot_items=0)
    assert "reused" not in _run(folder, checkpoints, dataset, crops=3, plot_items=0, reuse=False)
