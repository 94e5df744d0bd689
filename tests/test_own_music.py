"""`jukebox-pl run own_music`: a music folder to a trained hierarchy, samples and the report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from library_fixtures import make_library

from jukebox_pl import recipes


def test_own_music_composes_the_demo_stages_with_sizes_as_presets(tmp_path: Path) -> None:
    demo = recipes.load("demo").resolved()
    for size, accelerator in (("cpu", "cpu"), ("gpu", "gpu"), ("tiny", "cpu")):
        own = recipes.load("own_music", [f"vars.audio={tmp_path}", f"vars.size={size}"]).resolved()
        assert list(own["stages"]) == list(demo["stages"])  # the demo's chain, stage for stage
        assert own["stages"]["dataset"]["_component_"] == "data_shards"
        for name in ("vqvae", "codes", "top_prior", "upsampler"):
            assert own["stages"][name]["recipe"] == demo["stages"][name]["recipe"]
        assert f"trainer.accelerator={accelerator}" in own["stages"]["vqvae"]["overrides"]
        if size == "cpu":  # `cpu` is the demo's training, step for step
            steps = ("vqvae_steps", "prior_steps", "upsampler_steps", "seconds")
            assert {key: own["vars"]["preset"][key] for key in steps} == {key: demo["vars"][key] for key in steps}
    with pytest.raises(Exception, match="huge"):
        recipes.load("own_music", [f"vars.audio={tmp_path}", "vars.size=huge"]).resolved()


@pytest.mark.slow
def test_own_music_trains_the_hierarchy_and_samples_the_librarys_artists(run_cli, tmp_path: Path) -> None:
    library = make_library(tmp_path / "music", seconds=5.0)
    out, data = tmp_path / "run", tmp_path / "data"
    began = time.perf_counter()
    code, _, err = run_cli("run", "own_music", f"vars.audio={tmp_path / 'music'}", "vars.size=tiny",
                           f"vars.data_dir={data}", f"output_dir={out}")  # fmt: skip
    assert code == 0, err[-3000:]
    print(f"own_music at size tiny: {time.perf_counter() - began:.0f} s")
    stages = json.loads((out / "stages.json").read_text())
    assert stages["dataset"]["songs"] == len(library.expected)
    for name in ("vqvae", "top_prior", "upsampler"):
        assert stages[name]["global_step"] > 0 and (out / name / "model" / "model.safetensors").is_file()
    artists = {expected["artist"] for expected in library.expected.values()}
    ancestral = json.loads((out / "ancestral" / "request.json").read_text())
    assert ancestral["artists"][0] == "The Tagged Band" and set(ancestral["artists"]) <= artists
    primed = json.loads((out / "primed" / "request.json").read_text())
    assert set(primed["artists"]) <= artists
    page = (out / "index.html").read_text()
    for name in ("primed", "ancestral"):
        assert (out / name / "level_0" / "sample_0.wav").is_file() and f"{name}/level_0/sample_0.wav" in page
    assert json.loads((data / "shards" / "dataset.json").read_text())["counts"]["skipped"] == len(library.skipped)
