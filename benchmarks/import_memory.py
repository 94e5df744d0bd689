"""Peak memory and time of `jukebox-pl import openai` on released-size files of random weights.

For each model, writes random weights at its released size under OpenAI's names and layouts, as
openai/jukebox's ``torch.save({"model": state_dict})`` does (by default in the older format of
PyTorch 1.4, which openai/jukebox's README installs; ``--zip`` for that of PyTorch 1.6 and later),
then runs the import command in a fresh process and reports the file's size, the process's peak resident
memory (``ru_maxrss``: anonymous memory and the pages of the file it touched) and the wall time.
The files go to ``--dir`` and are deleted afterwards.

    .venv/bin/python benchmarks/import_memory.py --dir /tmp/import_memory            # 1B lyrics prior, bottom upsampler
    .venv/bin/python benchmarks/import_memory.py --models vqvae upsampler_level_1 --zip

About 4 GB of disk per file and its export; the writing needs the file's size in memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from jukebox_pl.checkpoints.openai import to_openai
from jukebox_pl.checkpoints.openai_hparams import RELEASED, released_spec, setup_hparams
from jukebox_pl.registry import build

# How the command is told what each file is.
ARGUMENTS = {
    "vqvae": ["--model", "1b_lyrics", "--vqvae"],
    "prior_1b_lyrics": ["--model", "1b_lyrics", "--prior"],
    "prior_5b": ["--model", "5b", "--prior"],
    "prior_5b_lyrics": ["--model", "5b_lyrics", "--prior"],
    "upsampler_level_1": ["--model", "1b_lyrics", "--upsamplers"],
    "upsampler_level_0": ["--hps", RELEASED["upsampler_level_0"], "--prior"],
}


def write_random_checkpoint(name: str, path: Path, zip_format: bool) -> int:
    """Random weights of released model `name` under OpenAI's names, shapes and stored dtype; the file's bytes."""
    with torch.device("meta"):
        module = build(None, released_spec(name))
    # hparams.py fp16_params: the 5B priors' files hold float16 weights (make_models.py converts them).
    dtype = torch.float16 if setup_hparams(RELEASED[name])["fp16_params"] else torch.float32
    generator = torch.Generator().manual_seed(0)
    state = {
        theirs: torch.empty(tensor.shape, dtype=dtype).normal_(0.0, 0.02, generator=generator)
        for theirs, tensor in to_openai(module).items()  # meta tensors: OpenAI's names and shapes only
    }
    if getattr(module, "x_out", None) is not None and module.x_out.weight is module.x_emb.weight:
        state["prior.x_out.weight"] = state["prior.x_emb.weight"]  # tied: one tensor, as torch.save keeps it
    torch.save({"model": state}, path, _use_new_zipfile_serialization=zip_format)
    return path.stat().st_size


def run_measured(command: list[str]) -> tuple[float, int, int]:
    """Wall seconds, peak resident bytes and exit status of `command`, run as a child of this process."""
    began = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    return time.perf_counter() - began, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["prior_1b_lyrics", "upsampler_level_0"], choices=ARGUMENTS)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/import_memory"))
    parser.add_argument("--zip", action="store_true", help="write the files in torch's zip format (mmap on import)")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    ids = args.dir / "ids"
    ids.mkdir(exist_ok=True)
    for name in ("v2_artist_ids", "v2_genre_ids", "v3_artist_ids", "v3_genre_ids"):
        (ids / f"{name}.txt").write_text("unknown;0\n")
    print(f"{'model':<18} {'format':<6} {'file GB':>8} {'peak GB':>8} {'peak - file':>12} {'seconds':>8}")
    for name in args.models:
        weights, out = args.dir / f"{name}.pth.tar", args.dir / f"{name}_export"
        try:
            size = write_random_checkpoint(name, weights, args.zip)
            command = [sys.executable, "-m", "jukebox_pl.cli", "import", "openai", *ARGUMENTS[name], str(weights),
                       "--ids", str(ids), "--out", str(out)]  # fmt: skip
            seconds, peak, status = run_measured(command)
            if status:
                raise SystemExit(f"{name}: the import failed with exit status {status}")
            print(f"{name:<18} {'zip' if args.zip else 'legacy':<6} {size / 1e9:8.2f} {peak / 1e9:8.2f} "
                  f"{(peak - size) / 1e9:+12.2f} {seconds:8.1f}")  # fmt: skip
        finally:
            weights.unlink(missing_ok=True)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
