"""`jukebox-pl run demo` end to end at a smaller size: every stage for real, then a second run that reuses it all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from jukebox_pl.data.shard_reader import find_song, split_samples

STAGES = ["dataset", "vqvae", "codes", "evaluation", "top_prior", "upsampler", "evidence", "primed", "ancestral",
          "musicality", "report"]  # fmt: skip
SIZE = ["vars.minutes=6", "stages.dataset.max_seconds=6"]  # enough songs that eight are held out


def _run(*arguments: str) -> subprocess.CompletedProcess:
    finished = subprocess.run([sys.executable, "-m", "jukebox_pl.cli", *arguments], capture_output=True, text=True,
                              timeout=1800)  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-4000:]
    return finished


def _held_out_artists(root: Path) -> tuple[Path, list[str]]:
    """The demo dataset at this size, built as the demo's first stage builds it, and its held-out songs' artists.

    The split hashes each song's path, temporary folder included (`make demo` uses the same relative path
    everywhere): a folder is drawn until the split holds out at least eight songs for the primed stage.
    """
    for attempt in range(8):
        data = root / f"data_{attempt}"
        _run("data", "demo", "--out", str(data), "--minutes", "6", "--max-seconds", "6")
        held_out = sorted(
            (s["__key__"], json.loads(s["json"])["artist"]) for s in split_samples(data / "shards", "validation")
        )
        if len(held_out) >= 8:
            return data, [artist for _, artist in held_out]
    raise AssertionError("eight demo datasets in a row held out fewer than eight songs for the primed stage")


def _run_demo(out: Path, data: Path) -> subprocess.CompletedProcess:
    overrides = [f"output_dir={out}", f"vars.data_dir={data}", *SIZE, "vars.vqvae_steps=30", "vars.prior_steps=30",
                 "vars.upsampler_steps=20", "vars.seconds=2.0"]  # fmt: skip
    return _run("run", "demo", *overrides)


@pytest.mark.slow
def test_the_demo_runs_every_stage_and_a_second_run_reuses_them(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    data, artists = _held_out_artists(tmp_path)
    first = _run_demo(out, data)
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == STAGES
    for name in ("vqvae", "top_prior", "upsampler"):
        assert stages[name]["global_step"] > 0 and (out / name / "model" / "model.safetensors").is_file()
        assert (out / "report" / f"curves_{name}.png").is_file()
    page = (out / "index.html").read_text()
    for name in ("primed", "ancestral"):
        for level in (1, 0):
            wav = out / name / f"level_{level}" / "sample_0.wav"
            assert wav.is_file() and f'src="{name}/level_{level}/sample_0.wav"' in page
        sung = json.loads((out / name / "request.json").read_text())["lyrics"]
        for index, lyrics in enumerate(sung):  # an alignment page for every clip with lyrics, and no other
            assert (out / name / "alignment" / f"sample_{index}.html").is_file() == bool(lyrics.strip())
    primed = json.loads((out / "primed" / "request.json").read_text())
    turns = [index % len(artists) for index in range(16)]  # every held-out song in turn over the 16 clips
    assert primed["artists"] == [artists[index] for index in turns]  # with the songs' own labels
    songs = [find_song(data / "shards", "validation", index=index) for index in range(len(artists))]
    lengths = [pytest.approx(len(song.audio) / song.sample_rate, abs=1e-3) for song in songs]
    assert primed["song_seconds"] == [lengths[index] for index in turns]  # each song's length places its clip
    ancestral = json.loads((out / "ancestral" / "request.json").read_text())
    assert ancestral["artists"] == ["Claudio Monteverdi", "J.S. Bach", "Traditional", "Joseph Haydn"] * 4
    assert ancestral["song_seconds"] == [40.0] * 16
    musicality = json.loads((out / "musicality" / "musicality.json").read_text())
    assert set(musicality["checks"]) == {"primed", "ancestral", "primed (top level)", "ancestral (top level)"}
    assert musicality["rows"]["primed"]["clips"] == 16
    evidence = json.loads((out / "evidence" / "evidence.json").read_text())
    assert [e["level"] for e in evidence["priors"].values()] == [1, 0]
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert set(report["results"]["tiny_demo"]) == {"0", "1"}
    assert "stage" in first.stderr and "bits/token" in first.stderr and str(out / "index.html") in first.stderr

    codes = {name: load_file(str(out / name / "codes" / "level_0" / "sample_0.safetensors"))["codes"]
             for name in ("primed", "ancestral")}  # fmt: skip
    second = _run_demo(out, data)
    again = json.loads((out / "stages.json").read_text())
    for name in STAGES[:-1]:  # every output is reused, and keeps the record of the run that made it
        assert again[name] == {**stages[name], "reused": True, "checked_seconds": again[name]["checked_seconds"]}
    assert "is up to date" in second.stderr and "(reused)" in second.stderr
    for name, before in codes.items():
        after = load_file(str(out / name / "codes" / "level_0" / "sample_0.safetensors"))["codes"]
        assert after.equal(before)
