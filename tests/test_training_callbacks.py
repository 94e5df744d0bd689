"""The EMA of weights and the guard against non-finite losses, through the train pipeline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import jukebox_pl
from jukebox_pl import recipes
from jukebox_pl.errors import JukeboxError
from jukebox_pl.pipelines.base import run_recipe


def toy_recipe(tmp_path: Path, model: dict, **extra) -> Path:
    recipe = {
        "pipeline": "train",
        "output_dir": str(tmp_path / "run"),
        "model": {"_component_": "toy_components:TinyAutoencoder", "channels": 4, "lr": 0.01, **model},
        "data": {"_component_": "sine_tones", "batch_size": 4, "train_size": 16, "val_size": 4, "sample_length": 256},
        "trainer": {"accelerator": "cpu", "max_steps": 6, "enable_progress_bar": False, "enable_model_summary": False,
                    "log_every_n_steps": 1, "limit_val_batches": 1},
        **extra,
    }  # fmt: skip
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps(recipe))
    return path


def test_a_diverging_run_stops_with_a_message_and_keeps_its_last_good_weights(tmp_path: Path) -> None:
    path = toy_recipe(tmp_path, {"_component_": "toy_components:DivergingAutoencoder", "diverge_at": 2},
                      max_nonfinite_steps=3)  # fmt: skip
    with pytest.raises(JukeboxError, match="stopped at step .*not finite for 3 steps in a row"):
        run_recipe(recipes.load(str(path)))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    weights = checkpoint["state_dict"]
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())  # NaN steps never reached the weights
    assert checkpoint["global_step"] <= 6
    log = (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").read_text()
    assert "train/skipped_steps" in log.splitlines()[0]


def test_the_ema_of_weights_is_checkpointed_and_exported(tmp_path: Path) -> None:
    path = toy_recipe(tmp_path, {}, callbacks=[{"_component_": "ema", "decay": 0.5}])
    run_recipe(recipes.load(str(path)))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # Lightning's weight averaging checkpoints the average as the state dict and keeps the raw weights aside.
    average = checkpoint["state_dict"]
    # The toy model is named by dotted path in the recipe, so its export stores one: loading it takes trust.
    exported = jukebox_pl.load(tmp_path / "run" / "model", trust_code=True).state_dict()
    assert set(exported) == set(average)
    for name, tensor in exported.items():
        assert torch.equal(tensor, average[name]), name  # the export is the average
    # The end of training copies the average into the model; mid-run the average is not the raw weights.
    epoch_end = next((tmp_path / "run" / "checkpoints").glob("epoch=*.ckpt"))
    during = torch.load(epoch_end, weights_only=True)
    assert any(not torch.equal(during["state_dict"][n], during["current_model_state"][n]) for n in average)


def test_fsdp_blocks_wraps_and_checkpoints_each_transformer_block() -> None:
    from torch.distributed.fsdp import ShardingStrategy

    from jukebox_pl.modules.transformer import ResAttnBlock
    from jukebox_pl.registry import build

    strategy = build("strategy", {"_component_": "fsdp_blocks", "activation_checkpointing": True,
                                  "sharding_strategy": "SHARD_GRAD_OP"})  # fmt: skip
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {ResAttnBlock}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {ResAttnBlock}
    assert strategy.sharding_strategy == ShardingStrategy.SHARD_GRAD_OP
    assert "auto_wrap_policy" not in build("strategy", "fsdp_blocks")._activation_checkpointing_kwargs


def test_the_progress_line_counts_the_whole_run_and_the_time_left() -> None:
    from jukebox_pl.callbacks import progress_line

    rng = random.Random()
    first, max_steps = rng.randint(0, 50), rng.randint(200, 2000)
    step = rng.randint(first + 1, max_steps - 1)
    seconds = rng.uniform(1.0, 600.0)
    line = progress_line("vqvae", step, max_steps, first, seconds, torch.tensor(0.5))
    rate = (step - first) / seconds
    left = round((max_steps - step) / rate)
    assert line.startswith(f"vqvae: step {step}/{max_steps} ({100 * step / max_steps:.0f}%)")
    assert f"loss 0.5 · {rate:.2f} steps/s · {left // 60}m{left % 60:02d}s left" in line
    assert progress_line("", step, -1, first, seconds, None) == f"step {step} · {rate:.2f} steps/s"


def test_a_checkpoint_write_that_fails_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    from jukebox_pl.callbacks import AtomicCheckpointIO

    class Unpicklable:
        def __reduce__(self):
            raise OSError("No space left on device")  # what a full disk does halfway through

    writer, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    good = {"global_step": random.randint(1, 10_000), "state_dict": {"w": torch.randn(64)}}
    writer.save_checkpoint(good, path)
    with pytest.raises(OSError, match="No space left"):
        writer.save_checkpoint({"global_step": good["global_step"] + 1, "bad": Unpicklable()}, path)
    kept = torch.load(path, weights_only=True)
    assert kept["global_step"] == good["global_step"] and torch.equal(kept["state_dict"]["w"], good["state_dict"]["w"])
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind
