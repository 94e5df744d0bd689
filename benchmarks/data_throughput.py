"""Seconds of audio the audio_shards DataModule delivers per wall second, per worker count.

Crops of 262144 samples at 44.1 kHz (Jukebox's VQ-VAE training crop). Uses a dataset
built with `jukebox-pl data shards` (--dataset), or writes a synthetic one of stereo
songs first. Target: at least 200x real time per worker.

    .venv/bin/python benchmarks/data_throughput.py --workers 0 1 2
    .venv/bin/python benchmarks/data_throughput.py --dataset data/demo/shards
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from jukebox_pl import build
from jukebox_pl.data.shards import write_shards


def synthetic_dataset(root: Path, songs: int, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for index in range(songs):
        t = np.arange(int(seconds * 44100)) / 44100
        tone = np.sin(2 * np.pi * rng.uniform(100, 800) * t) * 0.3
        audio = np.stack([tone, np.roll(tone, 100)], 1) + 0.05 * rng.standard_normal((len(t), 2))
        path = root / "audio" / f"song{index}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio.astype(np.float32), 44100, subtype="PCM_16")
        rows.append(
            f'{{"path": "song{index}.wav", "artist": "a{index % 4}", "genre": "g{index % 3}", "lyrics": "la la"}}'
        )
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    write_shards(root / "audio", root / "metadata.jsonl", root / "shards", shard_size="8MB")
    return root / "shards"


def measure(dataset: Path, workers: int, sample_length: int, seconds: float) -> tuple[float, int]:
    datamodule = build(
        "datamodule",
        {
            "_component_": "audio_shards",
            "path": str(dataset),
            "sample_length": sample_length,
            "batch_size": 4,
            "num_workers": workers,
            "n_tokens": 384,
            "crops_per_epoch": 10**9,
        },
    )
    loader = iter(datamodule.train_dataloader())
    next(loader)  # worker start-up is not throughput
    delivered, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        delivered += next(loader)["audio"].numel()
    elapsed = time.perf_counter() - start
    return delivered / 44100 / elapsed, delivered // sample_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="a shards folder (default: a synthetic one)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sample-length", type=int, default=262144)
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring time per worker count")
    parser.add_argument("--songs", type=int, default=16)
    parser.add_argument("--song-seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        dataset = args.dataset or synthetic_dataset(Path(scratch), args.songs, args.song_seconds)
        print(f"dataset {dataset}, crops of {args.sample_length} samples at 44.1 kHz")
        print(f"{'workers':>7}  {'audio s / wall s':>16}  {'per worker':>10}  {'crops':>6}")
        for workers in args.workers:
            rate, crops = measure(dataset, workers, args.sample_length, args.seconds)
            print(f"{workers:>7}  {rate:>15.0f}x  {rate / max(workers, 1):>9.0f}x  {crops:>6}")


if __name__ == "__main__":
    main()
