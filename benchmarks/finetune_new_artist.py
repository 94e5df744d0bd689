"""Fine-tuning on an artist the prior has never heard: does the new label help on that artist's held-out songs?

Trains (or reuses) the top prior of the demo on every demo song except J.S. Bach's
(recipe ``finetune/base_without_bach``: Bach and his genre, chorale, are not in its
vocabulary), fine-tunes it on Bach's training songs (recipe ``finetune/new_artist``: the new
artist and genre rows and the last transformer block train, the rest is frozen), and prints
bits per code on every window of Bach's validation songs, which neither run trained on:

- the base model with the ``unknown`` artist and genre (all it can be given for Bach), and with
  a wrong label (another artist and genre it knows);
- the fine-tuned model with the new label (J.S. Bach, chorale), a wrong label, and ``unknown``;
- the same for a second fine-tuning run that also replays the other artists' songs
  (``data.only_artists=null``), where the model must tell Bach from the rest by his label;
- and, for scale, the codes' unigram entropy on those windows.

    .venv/bin/python benchmarks/finetune_new_artist.py   # after `make demo`

The runs resume or are skipped when their exports exist (``runs/finetune/``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

import jukebox_pl
from jukebox_pl import build, recipes
from jukebox_pl.checkpoints.export import load_vocabularies
from jukebox_pl.pipelines.base import run_recipe

NEW_ARTIST, NEW_GENRE = "J.S. Bach", "chorale"


def ensure(recipe: str, out: Path, overrides: list[str]) -> float:
    """Run `recipe` into `out` unless its export is there; the minutes it took (0 when reused)."""
    if (out / "model" / "model.safetensors").is_file():
        return 0.0
    began = time.perf_counter()
    run_recipe(recipes.load(recipe, [f"output_dir={out}", "trainer.enable_progress_bar=false", *overrides]))
    return (time.perf_counter() - began) / 60


@torch.no_grad()
def bits_per_token(prior: torch.nn.Module, batches: list[dict], artist: int, genres: list[int]) -> float:
    """Mean bits per real code over `batches`, every window given `artist` and `genres` (ids of this prior)."""
    total, count = 0.0, 0
    for batch in batches:
        size = batch["codes"].shape[0]
        labels = torch.full((size, prior.labels.max_genres), -1, dtype=torch.long)
        labels[:, : len(genres)] = torch.tensor(genres)
        logits, targets = prior({**batch, "artist": torch.full((size,), artist), "genres": labels})
        nats = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        mask = batch["mask"].flatten().float()
        total += float((nats * mask).sum()) / math.log(2)
        count += int(mask.sum())
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", default="data/demo/codes", help="the demo's code dataset")
    parser.add_argument("--runs", default="runs/finetune", help="where the base and fine-tuned runs go")
    parser.add_argument("--wrong-artist", default="Claudio Monteverdi")
    parser.add_argument("--wrong-genre", default="madrigal")
    args = parser.parse_args()
    runs = Path(args.runs)
    minutes = ensure("finetune/base_without_bach", runs / "base", [f"data.path={args.codes}"])
    # name -> (run folder, overrides of finetune/new_artist)
    tuned_runs = {
        "fine-tuned": ("new_artist", []),
        "fine-tuned with replay": ("new_artist_replay", ["data.only_artists=null"]),
    }
    for folder, overrides in tuned_runs.values():
        common = [f"init_from={runs / 'base' / 'model'}", f"data.path={args.codes}"]
        minutes += ensure("finetune/new_artist", runs / folder, [*common, *overrides])
    base = jukebox_pl.load(runs / "base" / "model")
    base_vocabulary = load_vocabularies(runs / "base" / "model")
    assert NEW_ARTIST not in base_vocabulary["artists"], "the base model must not know the new artist"
    tuned_vocabulary = load_vocabularies(runs / "new_artist" / "model")
    data = build("datamodule", {"_component_": "code_shards", "path": args.codes, "level": base.level,
                                "n_ctx": base.n_ctx, "n_tokens": base.lyric_tokens, "batch_size": 16,
                                "num_workers": 0, "only_artists": [NEW_ARTIST],
                                "artists": tuned_vocabulary["artists"].to_dict(),
                                "genres": tuned_vocabulary["genres"].to_dict()})  # fmt: skip
    batches = list(data.val_dataloader())
    codes = torch.cat([b["codes"][b["mask"]] for b in batches]).numpy()
    p = np.bincount(codes, minlength=base.codebook_size) / len(codes)
    unigram = float(-(p[p > 0] * np.log2(p[p > 0])).sum())

    def ids(vocabularies: dict, artist: str, genre: str) -> tuple[int, list[int]]:
        return vocabularies["artists"].id(artist), [vocabularies["genres"].id(genre)]

    wrong = f"wrong label ({args.wrong_artist}, {args.wrong_genre})"
    rows = [
        ("base model, 'unknown' label", bits_per_token(base, batches, 0, [0])),
        (f"base model, {wrong}",
         bits_per_token(base, batches, *ids(base_vocabulary, args.wrong_artist, args.wrong_genre))),
    ]  # fmt: skip
    for name, (folder, _) in tuned_runs.items():
        tuned, vocabularies = jukebox_pl.load(runs / folder / "model"), load_vocabularies(runs / folder / "model")
        rows += [
            (f"{name}, new label ({NEW_ARTIST}, {NEW_GENRE})",
             bits_per_token(tuned, batches, *ids(vocabularies, NEW_ARTIST, NEW_GENRE))),
            (f"{name}, {wrong}",
             bits_per_token(tuned, batches, *ids(vocabularies, args.wrong_artist, args.wrong_genre))),
            (f"{name}, 'unknown' label", bits_per_token(tuned, batches, 0, [0])),
        ]  # fmt: skip
    windows, songs = sum(b["codes"].shape[0] for b in batches), data.kept_songs["validation"]
    print(f"held-out artist {NEW_ARTIST!r}: {windows} windows of {tuned.n_ctx} codes from {songs} validation songs; "
          f"the runs took {minutes:.1f} min (0: reused)")  # fmt: skip
    width = max(len(name) for name, _ in rows) + 2
    print(f"{'model and label':{width}s} bits/token")
    for name, bits in rows:
        print(f"{name:{width}s} {bits:10.4f}")
    print(f"{'unigram entropy of these windows (no model)':{width}s} {unigram:10.4f}")
    for name in tuned_runs:
        own = {label: bits for label, bits in rows if label.startswith(name + ",")}
        best = min([*own.items(), *rows[:2]], key=lambda row: row[1])[0]
        verdict = "the new label is best" if "new label" in best else "NOT the new label"
        print(f"{name}: best of its labels and the base model's: {best} -> {verdict}")


if __name__ == "__main__":
    main()
