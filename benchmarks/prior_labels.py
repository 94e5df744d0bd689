"""Does a trained prior beat the codes' unigram entropy, use its labels and upper codes, and align lyrics?

Prints (and writes into --out) the evidence of `jukebox_pl.pipelines.evidence` for each prior on
the validation windows of a code dataset (written by the encode pipeline): the unigram entropy of
the level's training codes (what a prior that ignores all context would score), the prior's bits
per token with the true labels and with each window's artist and genres swapped for another
artist's and genre's (one present among the validation windows; timing kept); for an upsampler, bits
per token with another song's upper codes; and, with --vqvae, for a prior that reads lyrics, the
alignment of its attention when teacher-forced on each held-out sung song against the sung
syllables' onsets (median word-onset error, fraction of words within 0.5 s).

    .venv/bin/python benchmarks/prior_labels.py --priors runs/demo/top_prior/model runs/demo/upsampler/model \\
        --codes data/demo/codes --vqvae runs/demo/vqvae/model
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from jukebox_pl.pipelines.base import RunContext
from jukebox_pl.pipelines.evidence import PriorEvidence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--priors", nargs="+", required=True, help="export folders or train-pipeline .ckpt files")
    parser.add_argument("--codes", required=True, help="code dataset folder (encode pipeline output)")
    parser.add_argument("--vqvae", help="the VQ-VAE of the codes: needed for the lyric alignment")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", help="folder for evidence.json and evidence.md (default: a temporary one)")
    args = parser.parse_args()
    pipeline = PriorEvidence(args.priors, args.codes, args.vqvae, args.batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        pipeline.run(RunContext(out, {}, "benchmarks/prior_labels.py"))
        print((out / "evidence.md").read_text())


if __name__ == "__main__":
    main()
