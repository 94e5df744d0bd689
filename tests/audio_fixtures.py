"""Small songs written on the fly for the data tests, and shards damaged on purpose."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf


def write_song(
    path: Path,
    seconds: float,
    sample_rate: int = 22050,
    channels: int = 2,
    subtype: str = "PCM_16",
    seed: int | None = None,
) -> np.ndarray:
    """A random chord with noise; returns what was written, (frames, channels) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    frequencies = rng.uniform(110, 880, size=3)
    tone = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in frequencies) / 4
    audio = np.stack([tone * rng.uniform(0.3, 0.9) + 0.01 * rng.standard_normal(len(t)) for _ in range(channels)], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.astype(np.float32), sample_rate, subtype=subtype)
    return audio.astype(np.float32)


def make_dataset(
    root: Path, n_songs: int = 6, seconds: float = 3.0, sample_rate: int = 22050, distinct_lengths: bool = False
) -> Path:
    """A folder of songs by three artists, with metadata.jsonl; returns the metadata path.

    With `distinct_lengths` song i lasts `seconds` + i / 10 s, so that a crop's song is known by its length.
    """
    artists = ["J.S. Bach", "Palestrina", "Traditional"]
    genres = [["chorale"], ["mass", "motet"], ["folk"]]
    rows = []
    for index in range(n_songs):
        length = seconds + index / 10 if distinct_lengths else seconds
        write_song(root / "audio" / f"song{index}.wav", length, sample_rate, channels=1 + index % 2, seed=index)
        rows.append(
            {
                "path": f"song{index}.wav",
                "artist": artists[index % 3],
                "genre": genres[index % 3],
                "lyrics": f"Verse {index}: sing along, la la la." if index % 2 == 0 else "",
                "title": f"Song {index}",
                "year": 1700 + index,
            }
        )
    metadata = root / "metadata.jsonl"
    metadata.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return metadata


def with_member(shard: bytes, suffix: str, replace: Callable[[bytes], bytes]) -> tuple[bytes, str]:
    """`shard` with its first member ending in `suffix` replaced by ``replace(its bytes)``, and that member's name."""
    out, name = io.BytesIO(), None
    with tarfile.open(fileobj=io.BytesIO(shard)) as source, tarfile.open(fileobj=out, mode="w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if name is None and member.name.endswith(suffix):
                name, data = member.name, replace(data)
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    assert name is not None, f"no member ends in {suffix}"
    return out.getvalue(), name


def without_last_sample(shard: bytes) -> bytes:
    """`shard` cut where its last sample's first member begins: what is left reads as a whole tar."""
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
        members = tar.getmembers()
    last_key = members[-1].name.split(".")[0]
    return shard[: next(m for m in members if m.name.split(".")[0] == last_key).offset]
