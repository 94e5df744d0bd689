"""Training the VQ-VAE through the train pipeline, exporting it, and loading it back."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from audio_fixtures import make_dataset

import jukebox_pl
from jukebox_pl import build
from jukebox_pl.checkpoints.export import CheckpointError, export, load_vocabularies
from jukebox_pl.data.shards import write_shards
from jukebox_pl.errors import RecipeError
from jukebox_pl.recipe_validation import validate
from jukebox_pl.recipes import load as load_recipe

TINY = {
    "_component_": "tiny_vqvae",
    "width": 8,
    "depth": 1,
    "emb_width": 8,
    "bottleneck": {"_component_": "ema_vq", "codebook_size": 16},
    "bandwidth_seconds": 1.0,
    "log_items": 1,
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("songs")
    metadata = make_dataset(root, n_songs=6, seconds=2.5, sample_rate=22050)
    write_shards(root / "audio", metadata, root / "shards", sample_rate=22050, validation_fraction=0.34)  # fmt: skip
    return root / "shards"


def _recipe(tmp_path: Path, shards: Path, steps: int = 4, **model) -> Path:
    recipe = {
        "pipeline": "train",
        "output_dir": str(tmp_path / "run"),
        "model": {"vqvae": {**TINY, **model}},
        "data": {
            "_component_": "audio_shards",
            "path": str(shards),
            "sample_length": 2048,
            "batch_size": 2,
            "num_workers": 0,
            "crops_per_epoch": 4,
        },
        "loggers": ["csv", "tensorboard"],
        "trainer": {
            "max_steps": steps,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_training_writes_checkpoints_an_export_and_reconstructions(tmp_path, shards, run_cli):
    code, _out, err = run_cli("run", str(_recipe(tmp_path, shards)))
    assert code == 0, err
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert {p.name for p in (run / "model").iterdir()} == {"model.safetensors", "recipe.yaml", "vocabularies.json"}
    manifest = json.loads((shards / "dataset.json").read_text())
    vocabularies = load_vocabularies(run / "model")
    assert vocabularies["artists"].to_dict() == manifest["artists"]  # the data's names, kept with the weights
    assert load_vocabularies(run / "checkpoints" / "last.ckpt")["genres"].to_dict() == manifest["genres"]
    pictures = sorted((run / "reconstructions").glob("step-*/item0.png"))
    sounds = sorted((run / "reconstructions").glob("step-*/item0_level*.flac"))
    assert pictures and len(sounds) == 2 * len(pictures)
    assert list((run / "logs").glob("events.out.tfevents.*"))
    header = (run / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/sc_db_l0", "val/sc_db_l1", "train/usage_l0", "train/entropy_l1"} <= set(header)

    from_export = jukebox_pl.load(run / "model")
    from_checkpoint = jukebox_pl.load(run / "checkpoints" / "last.ckpt")
    assert bool((from_export.bandwidth > 0).all()), "the measured bandwidth travels with the weights"
    audio = torch.randn(2, 1, 640, generator=torch.Generator().manual_seed(0)) * 0.3
    for a, b in zip(from_export.encode(audio), from_checkpoint.encode(audio), strict=True):
        assert torch.equal(a, b)
    assert not from_export.training
    code, out, err = run_cli("export", str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "exported"))
    assert code == 0 and "exported" in out, err
    for a, b in zip(jukebox_pl.load(tmp_path / "exported").encode(audio), from_export.encode(audio), strict=True):
        assert torch.equal(a, b)
    stored = yaml.safe_load((run / "model" / "recipe.yaml").read_text())
    assert stored["export"]["component"] == "model.vqvae"
    assert stored["model"]["vqvae"]["bottleneck"]["codebook_size"] == 16


def test_the_last_step_is_checkpointed_even_between_periodic_checkpoints(tmp_path, shards, run_cli):
    code, _, err = run_cli("run", str(_recipe(tmp_path, shards, steps=5)), "checkpoint={every_n_train_steps: 3}")
    assert code == 0, err
    checkpoints = tmp_path / "run" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 5
    assert [p.name.split("-")[-1] for p in checkpoints.glob("epoch=*.ckpt")] == ["step=3.ckpt"]


def test_training_resumes_from_the_last_checkpoint(tmp_path, shards, run_cli):
    assert run_cli("run", str(_recipe(tmp_path, shards, steps=2)))[0] == 0
    code, out, err = run_cli("run", str(_recipe(tmp_path, shards, steps=4)))
    assert code == 0, err
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert "resumed_from" in out and "last.ckpt" in out
    # Run again at the end: nothing to train, and the checkpoint and export are left as they are.
    written = [tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "run" / "model" / "model.safetensors"]
    stamps = [path.stat().st_mtime_ns for path in written]
    code, out, err = run_cli("run", str(_recipe(tmp_path, shards, steps=4)))
    assert code == 0, err
    assert [path.stat().st_mtime_ns for path in written] == stamps
    assert re.search(r"global_step\s+4\n", out)


def test_one_override_swaps_in_the_fsq_plugin_bottleneck(tmp_path, shards, run_cli):
    recipe = _recipe(tmp_path, shards, steps=2)
    code, _out, err = run_cli("run", str(recipe), "model.vqvae.bottleneck=fsq")
    assert code == 0, err
    assert "dropped" in err and "codebook_size" in err
    vqvae = jukebox_pl.load(tmp_path / "run" / "model")
    assert [type(b).__name__ for b in vqvae.bottlenecks] == ["FSQBottleneck"] * 2
    assert vqvae.codebook_sizes == [1000, 1000]


def test_bottleneck_arguments_are_validated_and_emb_width_is_the_vqvaes(tmp_path, shards):
    recipe = load_recipe(str(_recipe(tmp_path, shards)), ["model.vqvae.bottleneck.emb_width=4",
                                                          "model.vqvae.bottleneck.codebok_size=8"])  # fmt: skip
    with pytest.raises(RecipeError) as error:
        validate(recipe)
    message = str(error.value)
    assert "model.vqvae.bottleneck.emb_width" in message and "set by jukebox-pl" in message
    assert "codebok_size" in message and "codebook_size" in message


def _exported(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    vqvae = build("vqvae", TINY).train()
    vqvae(torch.randn(2, 1, 256))  # initialises the codebooks
    return export(vqvae, tmp_path / "export", {"model": TINY}, "model")


def test_an_export_rebuilds_without_a_trainer_and_gives_the_same_codes(tmp_path):
    folder = _exported(tmp_path)
    original = build("vqvae", TINY)
    original.load_state_dict(jukebox_pl.load(folder).state_dict())
    audio = torch.randn(1, 1, 512)
    loaded = jukebox_pl.load(folder / "model.safetensors")
    for a, b in zip(loaded.encode(audio), original.eval().encode(audio), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_of_the_wrong_shape_is_one_clear_error(tmp_path):
    folder = _exported(tmp_path)
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    recipe["model"]["bottleneck"]["codebook_size"] = 32
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(CheckpointError) as error:
        jukebox_pl.load(folder)
    assert "model.safetensors" in str(error.value)
    assert "bottlenecks.0.codebook: checkpoint has shape (16, 8), the model (32, 8)" in str(error.value)


def test_foreign_and_missing_checkpoints_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        jukebox_pl.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an export folder"):
        jukebox_pl.load(tmp_path / "empty")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="without a jukebox-pl recipe"):
        jukebox_pl.load(tmp_path / "foreign.ckpt")
    (tmp_path / "broken.ckpt").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        jukebox_pl.load(tmp_path / "broken.ckpt")
    folder = _exported(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        jukebox_pl.load(folder)


def test_export_metadata_names_the_component(tmp_path):
    from safetensors import safe_open

    folder = _exported(tmp_path)
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        assert handle.metadata() == {"format": "jukebox-pl-export/1", "component": "model"}
    assert (
        json.loads(json.dumps(yaml.safe_load((folder / "recipe.yaml").read_text())))["export"]["component"] == "model"
    )
