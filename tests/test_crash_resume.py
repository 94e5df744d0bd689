"""A real training run killed with SIGKILL, at a random moment or halfway through writing a checkpoint, resumes
with the same command to the same final step and the loss curve of a run that was never killed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from audio_fixtures import make_dataset

from jukebox_pl.data.shards import write_shards
from jukebox_pl.pipelines.report import read_metrics

TESTS = Path(__file__).parent
MAX_STEPS = 24


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("songs")
    metadata = make_dataset(root, n_songs=4, seconds=2.0, sample_rate=22050)
    write_shards(root / "audio", metadata, root / "shards", sample_rate=22050, validation_fraction=0.25)  # fmt: skip
    return root / "shards"


def _recipe(folder: Path, shards: Path, callbacks: list | None = None) -> Path:
    recipe = {
        "pipeline": "train",
        "output_dir": str(folder),
        "model": {"vqvae": {"_component_": "tiny_vqvae", "width": 8, "depth": 1, "emb_width": 8, "log_items": 0,
                            "bottleneck": {"_component_": "ema_vq", "codebook_size": 16}}},
        # 10 batches an epoch and a checkpoint every 3 steps: resumes land mid-epoch and on epoch ends.
        "data": {"_component_": "audio_shards", "path": str(shards), "sample_length": 2048, "batch_size": 2,
                 "num_workers": 0, "crops_per_epoch": 20},
        "checkpoint": {"every_n_train_steps": 3},
        "callbacks": callbacks or [],
        "progress_every": 0,
        "trainer": {"accelerator": "cpu", "max_steps": MAX_STEPS, "log_every_n_steps": 1, "limit_val_batches": 1,
                    "enable_progress_bar": False, "enable_model_summary": False},
    }  # fmt: skip
    path = folder.parent / f"{folder.name}.yaml"
    path.write_text(json.dumps(recipe))
    return path


def _command(recipe: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "jukebox_pl.cli", "run", str(recipe), *overrides]


def _environment() -> dict[str, str]:
    # One thread, so that the killed, resumed and reference runs do the same arithmetic.
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


def _finish(recipe: Path, *overrides: str) -> None:
    finished = subprocess.run(_command(recipe, *overrides), capture_output=True, text=True, env=_environment(),
                              timeout=600)  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]


def _last_step(folder: Path) -> int:
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, shards: Path) -> dict:
    folder = tmp_path_factory.mktemp("reference") / "run"
    _finish(_recipe(folder, shards))
    return read_metrics(folder / "logs")


def _assert_the_curve_continues(folder: Path, reference: dict) -> None:
    assert _last_step(folder) == MAX_STEPS
    curve = read_metrics(folder / "logs")  # the killed session's rows, then the resumed session's
    assert [step for step, _ in curve["train/loss"]] == [step for step, _ in reference["train/loss"]]
    for (step, value), (_, expected) in zip(curve["train/loss"], reference["train/loss"], strict=True):
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-7), f"train/loss at step {step}"


@pytest.mark.slow
def test_a_run_killed_at_a_random_moment_resumes_to_the_same_curve(tmp_path: Path, shards: Path, reference) -> None:
    folder = tmp_path / "run"
    # Steps of at least 0.1 s: the 21 steps after the first checkpoint take over 2 s, longer than the random wait
    # below, so the kill always lands before the run ends, on a fast machine too.
    recipe = _recipe(folder, shards, [{"_component_": "crash_probe:SlowSteps", "seconds": 0.1}])
    process = subprocess.Popen(_command(recipe), env=_environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (folder / "checkpoints" / "last.ckpt").is_file() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 1.0))
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed_at = _last_step(folder)
    assert 3 <= killed_at < MAX_STEPS  # a real interruption, resumed from a checkpoint the run wrote
    _finish(recipe)
    _assert_the_curve_continues(folder, reference)


@pytest.mark.slow
def test_a_run_killed_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path, shards: Path, reference):
    folder = tmp_path / "run"
    recipe = _recipe(folder, shards, [{"_component_": "crash_probe:KillDuringCheckpointWrite", "at": 3}])
    killed = subprocess.run(_command(recipe), env=_environment(), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    leftovers = list((folder / "checkpoints").glob(".last.ckpt.*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # the half-written file, under a temporary name
    assert _last_step(folder) == 6  # the second checkpoint, whole: the third never replaced it
    _finish(recipe, "callbacks=[]")
    _assert_the_curve_continues(folder, reference)
