"""Fine-tuning a prior on a new artist: vocabulary extension, frozen parameters, LoRA, sampling the new name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from launch import launch_two_nodes
from sampling_models import TOP, VOCABULARIES, make_models, write_code_shards

import jukebox_pl
from jukebox_pl import recipes
from jukebox_pl.checkpoints.export import load_vocabularies
from jukebox_pl.data.labels import Vocabulary
from jukebox_pl.errors import JukeboxError
from jukebox_pl.finetune.trainable import expand, select
from jukebox_pl.finetune.vocabulary import extend, grow_rows
from jukebox_pl.pipelines.base import run_recipe
from jukebox_pl.pipelines.finetune import FinetunePipeline
from jukebox_pl.pipelines.train import TrainPipeline
from jukebox_pl.registry import build

LYRICS = "feeling good, it's a new dawn, it's a new day, it's a new life for me"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("finetune")
    models = make_models(root / "models")
    songs = {
        split: [{"artist": artist, "genres": genres, "lyrics": LYRICS, "seconds": 0.6 + 0.1 * i}
                for i, (artist, genres) in enumerate([("Nina Simone", ["jazz", "soul"]), ("Alice Cooper", ["rock"]),
                                                      ("Nina Simone", ["jazz"])] * (2 if split == "train" else 1))]
        for split in ("train", "validation")
    }  # fmt: skip
    # A shard per song: each of two ranks reads shards of its own.
    return {"root": root, "models": models, "codes": write_code_shards(root / "codes", songs, songs_per_shard=1)}


def finetune(setup: dict, out: Path, **overrides) -> dict:
    return run_recipe(recipes.load(str(finetune_recipe(setup, out, **overrides))))


def finetune_recipe(setup: dict, out: Path, **overrides) -> Path:
    recipe = {
        "pipeline": "finetune",
        "output_dir": str(out),
        "init_from": setup["models"]["priors"][0],
        "data": {"_component_": "code_shards", "path": str(setup["codes"]), "level": 1, "n_ctx": 32,
                 "n_tokens": 12, "batch_size": 2, "num_workers": 0, "windows_per_epoch": 8},
        "trainer": {"accelerator": "cpu", "max_steps": 4, "limit_val_batches": 1, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "optimizer": {"_component_": "adam", "lr": 0.01},
        "lr_scheduler": {"_component_": "warmup", "warmup_steps": 1, "decay": "cosine"},
        **overrides,
    }  # fmt: skip
    path = out.parent / f"{out.name}.yaml"
    path.write_text(json.dumps(recipe))
    return path


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in module.named_parameters()}


def test_extension_appends_new_names_and_keeps_every_known_id() -> None:
    old = Vocabulary.from_dict(VOCABULARIES["artists"])
    extended, added = extend(old, ["bob marley", "Nina Simone", "Miles Davis", "nina simone"])
    assert added == ["Nina Simone", "Miles Davis"]
    assert [extended.id(name) for name in old.names] == list(range(len(old)))
    assert extended.id("Nina Simone") == len(old) and extended.id("miles davis") == len(old) + 1


@pytest.mark.parametrize(("strategy", "source"), [("unknown", None), ("mean", None), ("copy", 2)])
def test_grown_rows_keep_the_old_ones_and_start_from_the_strategy(strategy: str, source: int | None) -> None:
    weight = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    grown = grow_rows(weight, 7, strategy, source)
    assert grown.shape == (7, 6) and torch.equal(grown[:4], weight)
    expected = {"unknown": weight[0], "mean": weight[1:].mean(0), "copy": weight[2]}[strategy]
    assert all(torch.equal(row, expected) for row in grown[4:])


def test_a_table_with_spare_rows_gives_new_names_its_spare_rows_and_keeps_its_size() -> None:
    # 6 rows, 3 of them named (unknown + 2): one new name takes row 3; spare rows 4 and 5 stay as they were
    weight = torch.randn(6, 5, generator=torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()))))
    grown = grow_rows(weight, 4, "mean", start=3)
    assert grown.shape == weight.shape
    assert torch.equal(grown[:3], weight[:3]) and torch.equal(grown[4:], weight[4:])
    assert torch.allclose(grown[3], weight[1:3].mean(0))
    assert grow_rows(weight, 8, "unknown", start=3).shape == (8, 5)
    with pytest.raises(ValueError, match="cannot shrink a vocabulary of 3 names to 2"):
        grow_rows(weight, 2, "mean", start=3)
    with pytest.raises(ValueError, match=r"source row in \[0, 3\)"):
        grow_rows(weight, 4, "copy", source=4, start=3)


def test_trainable_patterns_expand_slices_and_refuse_what_matches_nothing() -> None:
    prior = build(None, TOP)
    assert expand("transformer.blocks[-2:].*", prior) == ["transformer.blocks.2.*", "transformer.blocks.3.*"]
    selection = select(prior, ["transformer.blocks[-1:].mlp.*", "labels.artist_emb.weight:new"],
                       {"labels.artist_emb.weight": 3})  # fmt: skip
    assert selection.whole == {
        f"transformer.blocks.3.mlp.{p}.{t}" for p in ("c_fc", "c_proj") for t in ("weight", "bias")
    }
    assert selection.rows == {"labels.artist_emb.weight": 3}
    with pytest.raises(JukeboxError, match="'transformer.blok.*' matches no parameter"):
        select(prior, ["transformer.blok.*"], {})
    with pytest.raises(JukeboxError, match="x_emb.weight gained no rows"):
        select(prior, ["x_emb.weight:new"], {"labels.artist_emb.weight": 3})


def test_finetuning_trains_only_the_chosen_parameters_and_new_rows(setup: dict, tmp_path: Path) -> None:
    base = jukebox_pl.load(setup["models"]["priors"][0])
    before = parameters(base)
    summary = finetune(setup, tmp_path / "run", trainable=["labels.artist_emb.weight:new",
                       "labels.bow_genre_emb.weight:new", "transformer.blocks[-1:].*"])  # fmt: skip
    assert summary["new_artists"] == ["Nina Simone"] and summary["new_genres"] == ["jazz", "soul"]
    tuned = jukebox_pl.load(tmp_path / "run" / "model")
    after = parameters(tuned)
    vocabularies = load_vocabularies(tmp_path / "run" / "model")
    assert vocabularies["artists"].to_dict() == {**VOCABULARIES["artists"], "Nina Simone": 3}
    assert vocabularies["genres"].to_dict() == {**VOCABULARIES["genres"], "jazz": 4, "soul": 5}
    for name, old in before.items():
        new = after[name]
        if name in ("labels.artist_emb.weight", "labels.bow_genre_emb.weight"):
            assert torch.equal(new[: old.shape[0]], old), name  # old rows bit-identical
            assert not torch.equal(new[old.shape[0] :], grow_rows(old, new.shape[0], "mean")[old.shape[0] :])
        elif name.startswith("transformer.blocks.3."):
            assert not torch.equal(new, old), name  # trained
        else:
            assert torch.equal(new, old), name  # frozen: bit-identical
    assert summary["trainable_parameters"] < summary["parameters"] / 3


def test_the_finetuned_prior_samples_the_new_artist_and_refuses_a_misspelt_one(setup: dict, tmp_path: Path) -> None:
    finetune(setup, tmp_path / "run")
    sampler = {"_component_": "ancestral", "vqvae": setup["models"]["vqvae"], "hop_fraction": 0.5,
               "priors": [str(tmp_path / "run" / "model"), setup["models"]["priors"][1]]}  # fmt: skip
    recipe = {
        "pipeline": "sample", "output_dir": str(tmp_path / "samples"), "artist": "nina simone",
        "genre": "jazz, soul", "lyrics": LYRICS, "seconds": 0.1, "progress": False, "sampler": sampler,
    }  # fmt: skip
    (tmp_path / "sample.yaml").write_text(json.dumps(recipe))
    with pytest.warns(UserWarning, match="'nina simone' is not in the vocabulary of .*upsampler; that level reads it"):
        run_recipe(recipes.load(str(tmp_path / "sample.yaml")))
    assert (tmp_path / "samples" / "level_0" / "sample_0.wav").is_file()
    with pytest.raises(JukeboxError, match="artist 'Nina Simon' is not in the vocabulary .*did you mean 'Nina Simone'"):
        run_recipe(recipes.load(str(tmp_path / "sample.yaml"), ["artist=Nina Simon", f"output_dir={tmp_path}/x"]))


def test_copying_a_name_that_does_not_exist_is_a_clear_error(setup: dict, tmp_path: Path) -> None:
    with pytest.raises(JukeboxError, match="init_copy.artist: artist 'Alice Coper' to copy is not in .*'Alice Cooper'"):
        finetune(setup, tmp_path / "run", init_strategy="copy", init_copy={"artist": "Alice Coper", "genre": "rock"})
    assert not (tmp_path / "run" / "model").exists()
    with pytest.raises(JukeboxError, match="nowhere/model: no such checkpoint or export folder"):
        finetune(setup, tmp_path / "run2", init_from=str(tmp_path / "nowhere" / "model"))


def test_lora_adapters_train_and_merge_into_a_plain_prior(setup: dict, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    base = parameters(jukebox_pl.load(setup["models"]["priors"][0]))
    finetune(setup, tmp_path / "run", trainable=[], lora={"r": 2, "targets": ["c_attn", "c_fc"]}, ema_decay=0.5)
    tuned = jukebox_pl.load(tmp_path / "run" / "model")  # a plain prior: no adapter tensors in the export
    after = parameters(tuned)
    assert set(after) == set(base)
    changed = {name for name in base if not torch.equal(after[name][: base[name].shape[0]], base[name])}
    assert changed and all(name.endswith(("c_attn.weight", "c_fc.weight")) for name in changed)


def test_finetune_takes_every_option_of_train() -> None:
    train, tune = recipes.arguments(TrainPipeline), recipes.arguments(FinetunePipeline)
    options = {name: parameter for name, parameter in train.items() if name != "model"}
    missing = sorted(set(options) - set(tune))
    assert not missing, f"finetune lacks train's options {missing}"
    for name, parameter in options.items():
        assert tune[name].default == parameter.default and tune[name].annotation == parameter.annotation, name


def test_the_packaged_finetune_recipe_validates_with_the_sharded_strategy(run_cli) -> None:
    code, _, err = run_cli("validate", "finetune/new_artist", "trainer.strategy=fsdp_blocks", "trainer.devices=8")
    assert code == 0, err
    spec = "strategy={_component_: fsdp_blocks, activation_checkpointing: true}"
    code, out, err = run_cli(
        "validate", "finetune/new_artist", spec, "progress_every=60", "trainer.precision=bf16-mixed"
    )
    assert code == 0, err
    assert "strategy 'fsdp_blocks'" in out


def test_an_average_of_the_weights_is_refused_under_a_sharded_strategy(setup: dict, tmp_path: Path) -> None:
    with pytest.raises(JukeboxError, match=r"EMAWeightAveraging .* a sharded strategy \(fsdp_blocks\) cannot update"):
        finetune(setup, tmp_path / "run", ema_decay=0.99, trainer={"accelerator": "cpu", "strategy": "fsdp_blocks"})
    assert not (tmp_path / "run" / "model").exists()


# ddp with the long tests: two-process ddp training runs in test_distributed (14 s off the default suite)
@pytest.mark.parametrize("strategy", [pytest.param("ddp", marks=pytest.mark.slow), "fsdp_blocks"])
def test_a_finetune_runs_on_two_processes_with_trains_strategies(setup: dict, tmp_path: Path, strategy: str) -> None:
    base = parameters(jukebox_pl.load(setup["models"]["priors"][0]))
    recipe = finetune_recipe(setup, tmp_path / "run", trainable=["labels.artist_emb.weight:new",
                             "labels.bow_genre_emb.weight:new", "transformer.blocks[-1:].*"])  # fmt: skip
    launch_two_nodes(recipe, [f"trainer.strategy={strategy}"])
    tuned = parameters(jukebox_pl.load(tmp_path / "run" / "model"))
    for name, old in base.items():
        new = tuned[name]
        if name in ("labels.artist_emb.weight", "labels.bow_genre_emb.weight"):
            assert torch.equal(new[: old.shape[0]], old), name  # old rows bit-identical
            assert new.shape[0] > old.shape[0], name
        elif name.startswith("transformer.blocks.3."):
            assert not torch.equal(new, old), name  # trained
        else:
            assert torch.equal(new, old), name  # frozen
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
