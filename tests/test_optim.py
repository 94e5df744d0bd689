"""Optimisers and learning-rate schedules are recipe components that one override swaps."""

import math

import pytest
import pytorch_lightning as pl
import torch

from jukebox_pl import recipe_validation, recipes
from jukebox_pl.errors import RecipeError
from jukebox_pl.optim import configure_optimizers, jukebox_optimizer, with_jukebox_hparams
from jukebox_pl.registry import build


def built_model(overrides: list[str], key: str = "vqvae", recipe: str = "vqvae/tiny_demo", max_steps: int = 10):
    loaded = recipes.load(recipe, overrides)
    recipe_validation.validate(loaded)
    model = build(None, loaded.resolved()["model"][key])
    model.trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False)
    return model


def rates(configured: dict, steps: int) -> list[float]:
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(steps):
        seen.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return seen


def test_the_default_is_adam_warmed_up_then_held():
    configured = built_model([]).configure_optimizers()  # demo_vqvae: Adam at 3e-3, 20 warm-up steps
    assert type(configured["optimizer"]) is torch.optim.Adam
    assert configured["lr_scheduler"]["interval"] == "step"
    assert rates(configured, 25)[::4] == pytest.approx(
        [3e-3 * (step + 1) / 20 for step in (0, 4, 8, 12, 16)] + [3e-3, 3e-3]
    )


def test_one_override_swaps_the_optimizer_and_one_the_schedule():
    model = built_model([
        "model.vqvae.optimizer={_component_: adamw, lr: 0.001, weight_decay: 0.1}",
        "model.vqvae.lr_scheduler={_component_: warmup, warmup_steps: 2, decay: cosine}",
    ])  # fmt: skip
    configured = model.configure_optimizers()
    assert type(configured["optimizer"]) is torch.optim.AdamW
    assert configured["optimizer"].defaults["weight_decay"] == 0.1
    cosine = [0.5 * (1 + math.cos(math.pi * (step - 2) / 8)) * 1e-3 for step in range(2, 10)]
    assert rates(configured, 10) == pytest.approx([5e-4, 1e-3, *cosine])  # up for 2 steps, then down to 0 at 10


def test_a_prior_swaps_its_optimizer_through_the_component_name_alone():
    model = built_model(["model.prior.optimizer=adamw"], key="prior", recipe="prior/top_tiny_demo", max_steps=100)
    configured = model.configure_optimizers()
    assert type(configured["optimizer"]) is torch.optim.AdamW
    assert configured["optimizer"].defaults["lr"] == 3e-4  # adamw's own default, not demo_top_prior's Adam's


def test_a_misspelt_optimizer_argument_is_refused_before_anything_is_built():
    with pytest.raises(RecipeError, match="lrr"):
        built_model(["model.vqvae.optimizer={_component_: adam, lrr: 0.001}"])


def test_a_decay_without_max_steps_is_refused():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="needs total_steps"):
        configure_optimizers(model.parameters(), "adam", {"_component_": "warmup", "decay": "linear"}, max_steps=-1)


def test_frozen_parameters_are_left_out_and_none_trainable_is_refused():
    model = torch.nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    configured = configure_optimizers(model.parameters(), "adam", "warmup")
    assert [p for group in configured["optimizer"].param_groups for p in group["params"]] == [model.weight]
    model.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        configure_optimizers(model.parameters(), "adam", "warmup")


def test_openai_names_of_the_optimizer_values_set_the_optimizer():
    assert with_jukebox_hparams("adam") == "adam"
    assert with_jukebox_hparams("adamw", learning_rate=1e-4, betas=None) == {"_component_": "adamw", "lr": 1e-4}
    values = jukebox_optimizer({"width": 8, "learning_rate": 3e-4, "betas": [0.9, 0.925], "weight_decay": 0.0})
    assert values == {"width": 8, "optimizer": {"_component_": "adam", "lr": 3e-4, "betas": [0.9, 0.925],
                                                "weight_decay": 0.0}}  # fmt: skip
