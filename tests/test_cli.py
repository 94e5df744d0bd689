"""The jukebox-pl command line: run, show, validate, ls, recipes, and how errors look."""

from __future__ import annotations

import csv
import json
import math
import random
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import run_console_script


@pytest.fixture
def toy_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(
        textwrap.dedent(
            """
            # Runs with: jukebox-pl run toy.yaml
            base: [common/trainer_cpu]
            pipeline: train
            output_dir: ${vars.root}/run
            vars:
              root: ROOT
              learning_rate: 0.003
            model:
              _component_: toy_components:TinyAutoencoder
              channels: 4
              lr: ${vars.learning_rate}
            data:
              _component_: sine_tones
              batch_size: 4
              train_size: 16
              val_size: 8
              sample_length: 512
            callbacks:
              - _component_: grad_norm
            trainer:
              max_steps: 4
              log_every_n_steps: 1
              enable_progress_bar: false
              enable_model_summary: false
            """
        ).replace("ROOT", str(tmp_path))
    )
    return path


def test_misspelt_key_exits_2_with_file_path_and_suggestion(toy_recipe, tmp_path):
    result = run_console_script("validate", str(toy_recipe), "data.batch_sise=3", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: the recipe has 1 problem")
    assert "command line: data.batch_sise: unknown argument 'batch_sise'" in result.stderr
    assert "did you mean 'batch_size'" in result.stderr


def test_debug_flag_shows_the_traceback(toy_recipe, tmp_path):
    result = run_console_script("--debug", "validate", str(toy_recipe), "model.chanels=3", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "RecipeError" in result.stderr


def test_show_prints_the_resolved_recipe(run_cli, toy_recipe):
    rate = round(random.uniform(1e-4, 1e-2), 6)
    code, out, _ = run_cli("show", toy_recipe, f"vars.learning_rate={rate}")
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["model"]["lr"] == pytest.approx(rate)
    assert shown["trainer"]["accelerator"] == "cpu"  # from the packaged base
    assert "base" not in shown
    code, out, _ = run_cli("show", toy_recipe, "--unresolved")
    assert "${vars.learning_rate}" in out


def test_validate_lists_every_component_checked(run_cli, toy_recipe):
    code, out, _ = run_cli("validate", toy_recipe)
    assert code == 0
    assert out.startswith(f"ok: {toy_recipe} is valid (4 components checked)")
    for name in (
        "pipeline 'train'",
        "toy_components:TinyAutoencoder",
        "datamodule 'sine_tones'",
        "callback 'grad_norm'",
    ):
        assert name in out


def test_ls_lists_components_with_provider_and_summary(run_cli):
    code, out, _ = run_cli("ls")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PROVIDER", "SUMMARY"]
    train = next(line for line in lines if line.split()[:2] == ["pipeline", "train"])
    assert "jukebox-pl" in train and "Fit a model on a datamodule" in train
    tones = next(line for line in lines if line.split()[:2] == ["datamodule", "sine_tones"])
    assert "jukebox-pl-example 0.1.0" in tones
    code, out, _ = run_cli("ls", "callback")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["callback"] * (len(out.splitlines()) - 1)


def test_ls_of_an_unknown_kind_exits_2_with_a_suggestion(run_cli):
    code, _, err = run_cli("ls", "priors")
    assert code == 2
    assert "unknown kind 'priors' (did you mean 'prior'" in err


def test_recipes_lists_the_packaged_recipes(run_cli):
    code, out, _ = run_cli("recipes")
    assert code == 0
    assert "common/trainer_cpu" in out.split() and "common/trainer_gpu" in out.split()


def test_run_writes_the_run_directory_and_resumes(run_cli, toy_recipe, tmp_path):
    code, out, err = run_cli("run", toy_recipe)
    assert code == 0, err
    run_dir = tmp_path / "run"
    written = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert written["output_dir"] == str(run_dir)
    assert written["model"]["lr"] == 0.003  # interpolations resolved
    versions = json.loads((run_dir / "versions.json").read_text())
    for key in ("jukebox-pl", "torch", "pytorch-lightning", "python"):
        assert versions[key]
    assert versions["plugins"]["example"]["distribution"] == "jukebox-pl-example"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    norms = [float(r["grad_norm/grad_2.0_norm_total"]) for r in rows if r.get("grad_norm/grad_2.0_norm_total")]
    assert len(norms) == 4 and all(math.isfinite(n) and n > 0 for n in norms)
    assert any(line.split() == ["global_step", "4"] for line in out.splitlines())

    code, out, err = run_cli("run", toy_recipe, "trainer.max_steps=8")
    assert code == 0, err
    assert "resumed_from" in out and str(run_dir / "checkpoints" / "last.ckpt") in out
    assert any(line.split() == ["global_step", "8"] for line in out.splitlines())
    # the resumed session logs beside the first, which stays whole
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as handle:
        assert len([r for r in csv.DictReader(handle) if r.get("grad_norm/grad_2.0_norm_total")]) == 4
    assert (run_dir / "logs" / "version_1" / "metrics.csv").is_file()


def test_run_of_an_invalid_recipe_writes_nothing(run_cli, toy_recipe, tmp_path):
    code, _, err = run_cli("run", toy_recipe, "trainer.max_step=3")
    assert code == 2
    assert "did you mean 'max_steps'" in err
    assert not (tmp_path / "run").exists()
