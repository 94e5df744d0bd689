"""The run_report pipeline on a run folder laid out as the demo's stages write it."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile

from jukebox_pl.errors import JukeboxError
from jukebox_pl.pipelines.base import RunContext
from jukebox_pl.pipelines.report import RunReport, read_metrics

RATE = 8000
LYRICS = 'Sì <script>alert("x")</script> & amore'


def _metrics_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["epoch", "step", *sorted({key for row in rows for key in row} - {"epoch", "step"})]
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, dict]:
    rng = random.Random()
    run = tmp_path / "run"
    # A training stage resumed once: version_1 repeats step 9 with another value and goes on to 14.
    first = [{"epoch": 0, "step": s, "train/loss": rng.uniform(1, 2)} for s in range(10)]
    first += [{"epoch": 0, "step": 4, "val/loss": rng.uniform(1, 2)}]
    second = [{"epoch": 1, "step": s, "train/loss": rng.uniform(0, 1)} for s in range(9, 15)]
    second += [{"epoch": 1, "step": 14, "val/loss": rng.uniform(0, 1)}]
    _metrics_csv(run / "vqvae" / "logs" / "version_0" / "metrics.csv", first)
    _metrics_csv(run / "vqvae" / "logs" / "version_1" / "metrics.csv", second)
    sc = [rng.uniform(-20, -5), rng.uniform(-20, -5)]
    report = {
        "settings": {"crops": [{}] * 3, "split": "validation"},
        "results": {"tiny": {str(level): {"spectral_convergence_db": value} for level, value in enumerate(sc)}},
    }
    (run / "evaluation").mkdir(parents=True)
    (run / "evaluation" / "report.json").write_text(json.dumps(report))
    samples = run / "primed"
    for level in (1, 0):
        (samples / f"level_{level}").mkdir(parents=True)
        soundfile.write(
            samples / f"level_{level}" / "sample_0.wav", np.random.default_rng().uniform(-0.5, 0.5, RATE), RATE
        )
    (samples / "alignment").mkdir()
    for suffix in ("png", "html", "json"):
        (samples / "alignment" / f"sample_0.{suffix}").write_text("x")
    request = {
        "artists": ["Claudio Monteverdi"],
        "genres": [["madrigal"]],
        "lyrics": [LYRICS],
        "seconds": 1.0,
        "settings": {"mode": "primed", "prompt": [{"dataset": "d", "song": "bach_bwv325"}], "prompt_samples": 64},
    }
    (samples / "request.json").write_text(json.dumps(request))
    stages = {
        "dataset": {"seconds": 75.0, "songs": 31, "minutes": 20.2},
        "vqvae": {"seconds": 901.0},
        "evaluation": {"seconds": 12.5},
        "primed": {"seconds": 30.0},
    }
    (run / "stages.json").write_text(json.dumps(stages))
    return run, {"first": first, "second": second, "sc": sc}


def test_the_page_plays_every_clip_and_shows_every_stage(run, caplog) -> None:
    folder, made = run
    caplog.set_level(logging.INFO, logger="jukebox_pl")
    summary = RunReport(str(folder), title="demo").run(RunContext(folder / "report", {}, "test"))
    page = (folder / "index.html").read_text()
    assert summary["index"] == str(folder / "index.html")
    for level in (1, 0):
        assert f'<audio controls preload="none" src="primed/level_{level}/sample_0.wav">' in page
    assert 'href="primed/alignment/sample_0.html"' in page and "bach_bwv325" in page
    assert "<script>" not in page and "&lt;script&gt;" in page  # lyrics are text, never markup
    assert (folder / "report" / "curves_vqvae.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "report" / "primed_sample_0.png").read_bytes()[:4] == b"\x89PNG"
    table = "\n".join(caplog.messages)
    last_train = made["second"][5]["train/loss"]  # step 14, from the resumed session
    vqvae_row = next(line for line in table.splitlines() if line.startswith("vqvae"))
    assert "15m01s" in vqvae_row and "15 steps" in vqvae_row and f"train loss {last_train:.4g}" in vqvae_row
    assert f"val loss {made['second'][-1]['val/loss']:.4g}" in vqvae_row
    sc = made["sc"]
    assert f"tiny SC l0 {sc[0]:.1f} dB, l1 {sc[1]:.1f} dB" in table
    assert "songs 31" in table and "1 primed clip of 1.0 s" in table


def test_resumed_logs_replace_the_steps_they_repeat(run) -> None:
    folder, made = run
    metrics = read_metrics(folder / "vqvae" / "logs")
    steps = [step for step, _ in metrics["train/loss"]]
    assert steps == list(range(15))
    assert metrics["train/loss"][9][1] == pytest.approx(made["second"][0]["train/loss"])
    assert metrics["val/loss"] == [(4, pytest.approx(made["first"][-1]["val/loss"])),
                                   (14, pytest.approx(made["second"][-1]["val/loss"]))]  # fmt: skip


def test_a_broken_stages_record_is_one_clear_error(run) -> None:
    folder, _ = run
    (folder / "stages.json").write_text("{not json")
    with pytest.raises(JukeboxError, match="stages.json: not JSON"):
        RunReport(str(folder)).run(RunContext(folder / "report", {}, "test"))
    with pytest.raises(JukeboxError, match="does not exist"):
        RunReport(str(folder / "missing")).run(RunContext(folder / "report", {}, "test"))


@pytest.mark.parametrize("validated", [False, True])
def test_a_prior_shows_bits_per_token_of_training_until_it_has_validated(tmp_path: Path, caplog, validated) -> None:
    caplog.set_level(logging.INFO, logger="jukebox_pl")
    rng = random.Random()
    rows = [{"epoch": 0, "step": s, "train/loss": rng.uniform(5, 6), "train/bits_per_token": rng.uniform(7, 8),
             "train/lyric_bits_per_token": rng.uniform(4, 5)} for s in range(6)]  # fmt: skip
    if validated:
        rows.append({"epoch": 0, "step": 5, "val/bits_per_token": rng.uniform(6, 7),
                     "val/lyric_bits_per_token": rng.uniform(3, 4)})  # fmt: skip
    _metrics_csv(tmp_path / "top_prior" / "logs" / "version_0" / "metrics.csv", rows)
    RunReport(str(tmp_path)).run(RunContext(tmp_path / "report", {}, "test"))
    row = next(line for line in "\n".join(caplog.messages).splitlines() if line.startswith("top_prior"))
    trained = rows[5]
    if validated:
        assert f"val {rows[-1]['val/bits_per_token']:.4g} bits/token" in row
        assert f"val lyrics {rows[-1]['val/lyric_bits_per_token']:.4g} bits/token" in row
        assert f"train {trained['train/bits_per_token']:.4g} bits/token" not in row and "train lyrics" not in row
    else:
        assert f"train {trained['train/bits_per_token']:.4g} bits/token" in row
        assert f"train lyrics {trained['train/lyric_bits_per_token']:.4g} bits/token" in row
        assert "val" not in row


def test_a_second_stages_run_keeps_the_record_of_the_run_that_made_each_output(tmp_path, caplog) -> None:
    from jukebox_pl.pipelines.stages import Stages

    caplog.set_level(logging.INFO, logger="jukebox_pl")
    made = tmp_path / "made.json"
    stages = {
        "make": {"_component_": "toy_components:MakesOnce", "out": str(made)},
        "report": {"_component_": "run_report", "run": str(tmp_path / "run")},
    }
    context = RunContext(tmp_path / "run", {}, "test")
    Stages(stages).run(context)
    first = json.loads((tmp_path / "run" / "stages.json").read_text())["make"]
    assert "reused" not in first and first["figure"] == json.loads(made.read_text())["figure"]
    Stages(stages).run(context)
    again = json.loads((tmp_path / "run" / "stages.json").read_text())["make"]
    assert again["reused"] is True and again["seconds"] == first["seconds"] and again["figure"] == first["figure"]
    row = next(line for line in "\n".join(caplog.messages).splitlines()[::-1] if line.startswith("make"))
    assert "(reused)" in row and f"figure {first['figure']:.4g}" in row
    assert "(reused)" in (tmp_path / "run" / "index.html").read_text()
