"""Distributed training on CPU (gloo): two processes launched as two nodes by torchrun, against one process.

Each test launches ``python -m torch.distributed.run --nnodes 2 --nproc-per-node 1`` twice (node ranks 0
and 1, a rendezvous on 127.0.0.1), each running ``jukebox-pl run`` on a tiny recipe with
``trainer.num_nodes=2`` and ``trainer.strategy=ddp``: the same launch as two machines of a cluster.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import launch
import pytest
import pytorch_lightning as pl
import torch
from audio_fixtures import make_dataset
from sampling_models import TOP, write_code_shards

from jukebox_pl import recipes
from jukebox_pl.data.shards import write_shards
from jukebox_pl.pipelines.base import run_recipe
from jukebox_pl.registry import build

TESTS = Path(__file__).parent
TRAINER = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 1,
           "log_every_n_steps": 1}  # fmt: skip


def launch_two_nodes(recipe: Path, out: Path, overrides: list[str], timeout: float = 240.0) -> list[dict]:
    """Run `recipe` as two single-process nodes (with DDP unless `overrides` say otherwise); returns each rank's
    probe record."""
    launch.launch_two_nodes(recipe, ["trainer.strategy=ddp", *overrides], timeout=timeout)
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


@pytest.fixture(scope="module")
def audio_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One song per shard and half the songs for validation: every rank gets training and validation shards
    # (a rank without validation batches would leave the other waiting in its metric all-reduce). The split
    # hashes each song's path, temporary folder included, so a folder is drawn again until both splits hold
    # two songs (one in 14 folders gives a split fewer).
    for _ in range(20):
        root = tmp_path_factory.mktemp("songs")
        metadata = make_dataset(root, n_songs=8, seconds=2.5, sample_rate=22050, distinct_lengths=True)
        write_shards(root / "audio", metadata, root / "shards", sample_rate=22050, shard_size="1KB",
                     validation_fraction=0.5)  # fmt: skip
        counts = json.loads((root / "shards" / "dataset.json").read_text())["counts"]
        if counts["train"] >= 2 and counts["validation"] >= 2:
            return root / "shards"
    raise AssertionError("no folder of songs split into two and two or more")


def test_two_nodes_train_the_vqvae_with_one_codebook_and_disjoint_data(audio_shards: Path, tmp_path: Path) -> None:
    recipe = {
        "pipeline": "train",
        "output_dir": str(tmp_path / "run"),
        "model": {"vqvae": {"_component_": "tiny_vqvae", "width": 8, "depth": 1, "emb_width": 8, "log_items": 1,
                            "bottleneck": {"_component_": "ema_vq", "codebook_size": 16}, "bandwidth_seconds": 1.0}},
        # crops_per_epoch: every rank takes as many steps (uneven ranks would wait on each other forever)
        "data": {"_component_": "audio_shards", "path": str(audio_shards), "sample_length": 2048, "batch_size": 2,
                 "num_workers": 0, "crops_per_epoch": 4},
        "callbacks": [{"_component_": "distributed_probe:Probe", "out": str(tmp_path / "probe")}],
        "trainer": {**TRAINER, "max_steps": 3},
    }  # fmt: skip
    path = tmp_path / "vqvae.yaml"
    path.write_text(json.dumps(recipe))
    ranks = launch_two_nodes(path, tmp_path / "probe", [])
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["world_size"] == 2
    for name, tensor in ranks[0]["final"].items():  # codebooks, EMA statistics and weights agree on both ranks
        assert torch.equal(tensor, ranks[1]["final"][name]), name
    assert not torch.equal(ranks[0]["final"]["bottlenecks.0.codebook"], ranks[0]["initial"]["bottlenecks.0.codebook"])
    # Within an epoch (2 steps of 2 crops per rank) each rank reads its own shards; epochs reshuffle them.
    seen = [{length for batch in r["songs"][:2] for length in batch} for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def uneven_validation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Code shards of one song each: four to train on, and a validation split whose first shard holds 3 windows
    of 32 codes (rank 0 reads it) and whose second holds 5 (rank 1)."""
    song = {"artist": "Alice Cooper", "genres": ["rock"], "seconds": 0.7}
    songs = {"train": [song] * 4, "validation": [{**song, "seconds": 0.06}, {**song, "seconds": 0.11}]}
    return write_code_shards(tmp_path_factory.mktemp("uneven") / "codes", songs, songs_per_shard=1)


# fsdp_blocks with the long tests: its two-process training runs in test_finetune (18 s off the default suite)
@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp_blocks", marks=pytest.mark.slow)])
def test_ranks_with_3_and_5_validation_batches_finish_and_log_what_one_process_computes(
    uneven_validation: Path, tmp_path: Path, strategy: str
) -> None:
    from jukebox_pl import load

    data = {"_component_": "code_shards", "path": str(uneven_validation), "level": 1, "n_ctx": 32, "batch_size": 1,
            "num_workers": 0}  # fmt: skip
    recipe = {
        "pipeline": "train",
        "output_dir": str(tmp_path / "run"),
        "model": {"prior": {**{key: value for key, value in TOP.items() if key != "lyrics"}, "attn_order": 2}},
        # Two steps make an epoch, and the epoch's end validates the final weights.
        "data": {**data, "windows_per_epoch": 2},
        "callbacks": [{"_component_": "distributed_probe:Probe", "out": str(tmp_path / "probe")}],
        "trainer": {**TRAINER, "limit_val_batches": None, "num_sanity_val_steps": 0, "max_steps": 2},
    }  # fmt: skip
    path = tmp_path / "uneven.yaml"
    path.write_text(json.dumps(recipe))
    # FSDP gathers each transformer block's parameters in every forward pass: a rank that stopped validating
    # after 3 batches left the other waiting in its fourth for ever. Now both finish, well within the limit.
    ranks = launch_two_nodes(path, tmp_path / "probe", [f"trainer.strategy={strategy}"], timeout=180)
    assert [r["validation_batches"] for r in ranks] == [3, 5]
    assert len(ranks[0]["validated"]) == 1 and ranks[0]["validated"] == ranks[1]["validated"]
    # One process validates the exported (final) weights on the whole split: 8 batches, the same means.
    model = load(tmp_path / "run" / "model")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    (one,) = trainer.validate(model, datamodule=build("datamodule", data), verbose=False)
    logged = ranks[0]["validated"][0]
    assert set(logged) == {key for key in one if "val" in key}
    for key, value in logged.items():
        assert value == pytest.approx(one[key], rel=1e-5), key


def test_ddp_gradients_equal_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    # One song per training shard; a single validation shard, which both ranks then read whole.
    song = {"genres": ["rock"], "lyrics": "la la la", "seconds": 0.7}
    songs = {
        split: [{**song, "artist": ["Alice Cooper", "Bob Marley"][i % 2]} for i in range(count)]
        for split, count in (("train", 4), ("validation", 1))
    }
    codes = write_code_shards(tmp_path / "codes", songs, songs_per_shard=1)
    prior = {**{key: value for key, value in TOP.items() if key != "lyrics"}, "attn_order": 2}
    recipe = {
        "pipeline": "train",
        "output_dir": str(tmp_path / "run"),
        "model": {"prior": prior},
        "data": {"_component_": "code_shards", "path": str(codes), "level": 1, "n_ctx": 32, "batch_size": 2,
                 "num_workers": 0, "windows_per_epoch": 4},
        "callbacks": [{"_component_": "distributed_probe:Probe", "out": str(tmp_path / "probe")}],
        "trainer": {**TRAINER, "max_steps": 2},
    }  # fmt: skip
    path = tmp_path / "prior.yaml"
    path.write_text(json.dumps(recipe))
    ranks = launch_two_nodes(path, tmp_path / "probe", [])
    model = build(None, prior)
    model.load_state_dict(ranks[0]["initial"])
    # DDP averages the ranks' gradients: one process with both halves of the global batch, averaged.
    losses = [model.losses(r["first_batch"])[0] for r in ranks]
    torch.stack(losses).mean().backward()
    for name, parameter in model.named_parameters():
        if name in ranks[0]["first_grads"]:
            assert torch.allclose(ranks[0]["first_grads"][name], parameter.grad, atol=1e-6), name  # tolerance 1e-6
            assert torch.equal(ranks[0]["first_grads"][name], ranks[1]["first_grads"][name]), name
    # Validation ran on both ranks (neither waited for the other) and they logged the same result.
    assert ranks[0]["validation_batches"] >= 1 and ranks[1]["validation_batches"] >= 1
    assert ranks[0]["validated"] and ranks[0]["validated"] == ranks[1]["validated"]


def test_bf16_mixed_training_steps_run_on_cpu(tmp_path: Path) -> None:
    songs = {
        split: [{"artist": "Alice Cooper", "genres": ["rock"], "seconds": 0.7}] * 2 for split in ("train", "validation")
    }
    codes = write_code_shards(tmp_path / "codes", songs)
    recipe = {
        "pipeline": "train",
        "output_dir": str(tmp_path / "run"),
        "model": {"prior": {**{key: value for key, value in TOP.items() if key != "lyrics"}, "attn_order": 2}},
        "data": {"_component_": "code_shards", "path": str(codes), "level": 1, "n_ctx": 32, "batch_size": 2,
                 "num_workers": 0, "windows_per_epoch": 4},
        "callbacks": [{"_component_": "distributed_probe:Probe", "out": str(tmp_path / "probe")}],
        "trainer": {**TRAINER, "max_steps": 3, "precision": "bf16-mixed"},
    }  # fmt: skip
    path = tmp_path / "bf16.yaml"
    path.write_text(json.dumps(recipe))
    sys.path.insert(0, str(TESTS))
    summary = run_recipe(recipes.load(str(path)))
    record = torch.load(tmp_path / "probe" / "rank0.pt", weights_only=True)
    assert summary["global_step"] == 3 and len(record["losses"]) == 3
    assert all(torch.isfinite(torch.tensor(record["losses"])))
