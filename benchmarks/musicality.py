"""How musical are sets of clips? The musicality table of held-out songs, reconstructions, samples and noise.

Prints (and writes into --out) the table of `jukebox_pl.pipelines.musicality`: for the held-out
songs of a dataset (one half against the other: the floor), each VQ-VAE level's reconstructions
of them, every named set of sampled clips, and white and pink noise as long as the first set
(the ceiling): the log-mel Fréchet distance to the held-out songs, the fraction of pitched
frames, the mean spectral flatness, the silent fraction and the longest silence; then which
sets meet the demo's targets.

    .venv/bin/python benchmarks/musicality.py --data data/demo/shards --vqvae runs/demo/vqvae/model \\
        --samples primed=runs/demo/primed/level_0 ancestral=runs/demo/ancestral/level_0
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from jukebox_pl.pipelines.base import RunContext
from jukebox_pl.pipelines.musicality import Musicality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="audio shards folder (jukebox-pl data shards / data demo)")
    parser.add_argument("--vqvae", required=True, help="VQ-VAE export folder or .ckpt")
    parser.add_argument("--samples", nargs="*", default=[], metavar="NAME=FOLDER", help="sets of wavs to score")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--out", help="folder for musicality.json and musicality.md (default: a temporary one)")
    args = parser.parse_args()
    samples = dict(item.split("=", 1) for item in args.samples)
    pipeline = Musicality(args.data, args.vqvae, samples, split=args.split)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        pipeline.run(RunContext(out, {}, "benchmarks/musicality.py"))
        print((out / "musicality.md").read_text())


if __name__ == "__main__":
    main()
