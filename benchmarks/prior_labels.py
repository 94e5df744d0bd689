"""Does a trained prior beat the codes' unigram entropy, and does it use its labels?

Prints, for one prior on the validation windows of a code dataset (written by the encode
pipeline): the unigram entropy of the level's codes in the training split (what a model
that ignores all context would score), the prior's bits per token with the true labels,
and with each window's artist and genres swapped for another song's (the next distinct
artist-and-genres pair among the validation windows; timing kept).

    .venv/bin/python benchmarks/prior_labels.py --prior runs/top_tiny_demo/model --codes data/demo/codes
"""

from __future__ import annotations

import argparse
import math
import tarfile
from pathlib import Path

import numpy as np
import torch

import jukebox_pl
from jukebox_pl import build
from jukebox_pl.pipelines.encode import CODES_FIELD, codes_from_npz, load_code_manifest


def unigram_entropy_bits(codes_dir: Path, split: str, level: int, codebook_size: int) -> float:
    """Entropy in bits of the histogram of every code of `level` in a split's shards."""
    counts = np.zeros(codebook_size, dtype=np.int64)
    for shard in load_code_manifest(codes_dir)["shards"][split]:
        with tarfile.open(codes_dir / shard["name"]) as archive:
            for member in archive:
                if member.name.endswith("." + CODES_FIELD):
                    codes = codes_from_npz(archive.extractfile(member).read())[level]
                    counts += np.bincount(codes.astype(np.int64), minlength=codebook_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def swapped_labels(artists: torch.Tensor, genres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window's (artist, genres) replaced by the next distinct pair present, so that no window keeps its own."""
    pairs = torch.cat([artists[:, None], genres], dim=1)
    distinct = torch.unique(pairs, dim=0)  # sorted rows
    if len(distinct) < 2:
        raise SystemExit("the validation windows carry a single artist and genre: nothing to swap")
    index = (pairs[:, None, :] == distinct[None]).all(-1).float().argmax(1)  # each window's row in `distinct`
    swapped = distinct[(index + 1) % len(distinct)]
    return swapped[:, 0], swapped[:, 1:]


@torch.no_grad()
def bits_per_token(prior: torch.nn.Module, batches: list[dict], swap_labels: bool) -> float:
    """Mean bits per real code token over `batches`, with each window's own labels or another song's."""
    total, tokens = 0.0, 0
    artists = torch.cat([b["artist"] for b in batches])
    genres = torch.cat([b["genres"] for b in batches])
    if swap_labels:
        artists, genres = swapped_labels(artists, genres)
    start = 0
    for batch in batches:
        size = batch["codes"].shape[0]
        batch = dict(batch, artist=artists[start : start + size], genres=genres[start : start + size])
        start += size
        logits, targets = prior(batch)
        logits, targets = logits[:, prior.n_tokens :], targets[:, prior.n_tokens :]
        nats = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        mask = batch["mask"].flatten().float()
        total += float((nats * mask).sum()) / math.log(2)
        tokens += int(mask.sum())
    return total / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", required=True, help="export folder or train-pipeline .ckpt of a prior")
    parser.add_argument("--codes", required=True, help="code dataset folder (encode pipeline output)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    prior = jukebox_pl.load(args.prior)
    codes_dir = Path(args.codes)
    max_genres = prior.labels.max_genres if prior.labels is not None else 5
    data = build("datamodule", {"_component_": "code_shards", "path": str(codes_dir), "level": prior.level,
                                "n_ctx": prior.n_ctx, "batch_size": args.batch_size, "num_workers": 0,
                                "max_genres": max_genres, "n_tokens": prior.lyric_tokens})  # fmt: skip
    batches = list(data.val_dataloader())
    windows = sum(b["codes"].shape[0] for b in batches)
    unigram = unigram_entropy_bits(codes_dir, "train", prior.level, prior.codebook_size)
    true_labels = bits_per_token(prior, batches, swap_labels=False)
    print(f"prior {args.prior}: level {prior.level}, {windows} validation windows of {prior.n_ctx} codes")
    print(f"unigram entropy of the training codes  {unigram:7.3f} bits/token (log2 {prior.codebook_size} = "
          f"{math.log2(prior.codebook_size):.0f})")  # fmt: skip
    print(
        f"prior, true labels                     {true_labels:7.3f} bits/token ({true_labels / unigram:.2f}x unigram)"
    )
    if prior.labels is not None:
        swapped = bits_per_token(prior, batches, swap_labels=True)
        print(f"prior, another song's artist and genres {swapped:6.3f} bits/token ({swapped - true_labels:+.3f})")


if __name__ == "__main__":
    main()
