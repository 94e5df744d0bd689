"""Code shards, the format the priors train on: one writer, one reader, one manifest.

A folder of code shards holds::

    dataset.json              format jukebox-pl-codes/1: model, vocabularies, shards and counts
    train-000000.tar ...      one sample per song: KEY.codes.npz (level0, level1, ...) + KEY.json

``KEY.codes.npz`` is an ``np.savez`` archive of one 1-D integer array per level, at the
smallest integer type that fits the codebook; ``KEY.json`` is the song's metadata with its
sample rate, length, hop lengths and codebook sizes. The ``encode`` pipeline writes these
folders; the ``code_shards`` DataModule and the evidence stage read them.

Example::

    from jukebox_pl.data.code_shards import codes_from_npz, load_code_manifest
    manifest = load_code_manifest("data/demo/codes")
"""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jukebox_pl.data.shard_reader import MANIFEST, check_manifest, read_json_object
from jukebox_pl.errors import JukeboxError

FORMAT = "jukebox-pl-codes/1"
CODES_FIELD = "codes.npz"  # the webdataset field: a tar member KEY.codes.npz


@dataclass(frozen=True)
class CodeLayout:
    """What a VQ-VAE's codes look like: its sample rate, and per level a hop length and a codebook size."""

    sample_rate: int
    hop_lengths: tuple[int, ...]
    codebook_sizes: tuple[int, ...]


# ---------------------------------------------------------------------- one song
def code_dtype(codebook_size: int) -> np.dtype:
    """int16 for codebooks of up to 32767 codes (Jukebox's 2048 included), int32 beyond."""
    return np.dtype(np.int16 if codebook_size <= np.iinfo(np.int16).max else np.int32)


def codes_to_npz(codes: Sequence[torch.Tensor], codebook_sizes: Sequence[int]) -> bytes:
    """``np.savez`` bytes holding ``level0``, ``level1``, ... at the smallest integer type that fits."""
    buffer = io.BytesIO()
    arrays = {
        f"level{level}": level_codes.numpy().astype(code_dtype(size))
        for level, (level_codes, size) in enumerate(zip(codes, codebook_sizes, strict=True))
    }
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def code_sample(
    codes: Sequence[torch.Tensor], layout: CodeLayout, metadata: Mapping[str, Any], length: int
) -> dict[str, bytes]:
    """The webdataset fields of one `length`-sample song: its codes per level, its metadata with the code layout."""
    record = {
        **metadata,
        "sample_rate": layout.sample_rate,
        "length": length,
        "hop_lengths": list(layout.hop_lengths),
        "codebook_sizes": list(layout.codebook_sizes),
    }
    payload = json.dumps(record, ensure_ascii=False).encode("utf-8")
    return {CODES_FIELD: codes_to_npz(codes, layout.codebook_sizes), "json": payload}


def codes_from_npz(data: bytes, source: str = CODES_FIELD) -> list[np.ndarray]:
    """The arrays of a ``codes.npz`` field, level 0 first; integers only, never pickled objects.

    Bytes that are not such an archive of 1-D integer arrays raise a JukeboxError naming `source`.
    """
    if data[:2] != b"PK":  # an .npz is a zip archive; anything else (numpy would try it as a pickle) is not codes
        raise JukeboxError(f"{source}: not an archive of codes (not a zip archive)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            levels = [archive[f"level{level}"] for level in range(len(archive.files))]
    except Exception as exc:  # noqa: BLE001 - a damaged archive fails in zipfile or numpy's format checks
        if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
            raise JukeboxError(
                f"{source}: refused: the codes hold pickled Python objects, not integer arrays; loading them could "
                "run code, so jukebox-pl reads codes with numpy.load(allow_pickle=False) only"
            ) from None
        raise JukeboxError(f"{source}: not an archive of codes ({type(exc).__name__}: {exc})") from None
    for level, codes in enumerate(levels):
        if codes.ndim != 1 or codes.dtype.kind not in "iu":
            raise JukeboxError(f"{source}: level{level} holds {codes.dtype} of shape {codes.shape}, not codes")
    return levels


# ---------------------------------------------------------------------- the manifest
def code_manifest(
    progress: Mapping[str, Any],
    audio_manifest: Mapping[str, Any],
    splits: Sequence[str],
    layout: CodeLayout,
    vqvae: str | Path,
    data_dir: Path,
    window_seconds: float,
    context_seconds: float,
) -> dict[str, Any]:
    """The ``dataset.json`` of code shards, from the encoder's `progress` record of finished shards."""
    sample_rate, levels = layout.sample_rate, len(layout.hop_lengths)
    shards = {
        split: [
            {
                "name": shard["name"],
                "songs": len(shard["songs"]),
                "samples": sum(song["length"] for song in shard["songs"]),
                "codes": [sum(song["codes"][level] for song in shard["songs"]) for level in range(levels)],
            }
            for shard in sorted(progress["shards"], key=lambda s: s["name"])
            if shard["split"] == split
        ]
        for split in splits
    }
    total_samples = sum(shard["samples"] for split in splits for shard in shards[split])
    return {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "vqvae": str(vqvae),
        "data": str(data_dir),
        "sample_rate": sample_rate,
        "levels": levels,
        "hop_lengths": list(layout.hop_lengths),
        "codebook_sizes": list(layout.codebook_sizes),
        "dtypes": [code_dtype(size).name for size in layout.codebook_sizes],
        "counts": {
            "songs": sum(s["songs"] for split in splits for s in shards[split]),
            **{split: sum(s["songs"] for s in shards[split]) for split in splits},
        },
        "total_seconds": round(total_samples / sample_rate, 3),
        "codes": {
            split: [sum(s["codes"][level] for s in shards[split]) for level in range(levels)] for split in splits
        },
        # The audio dataset's vocabularies, so that priors label songs exactly as the audio side does.
        "artists": audio_manifest["artists"],
        "genres": audio_manifest["genres"],
        "shards": shards,
        "fingerprint": progress["fingerprint"],
        "options": {
            "window_seconds": window_seconds,
            "context_seconds": context_seconds,
            **progress["fingerprint"]["options"],
        },
    }


def load_code_manifest(path: str | Path) -> dict[str, Any]:
    """The ``dataset.json`` of a folder written by the ``encode`` pipeline (or the file itself)."""
    path = Path(path)
    manifest_file = path if path.suffix == ".json" else path / MANIFEST
    if not manifest_file.is_file():
        raise JukeboxError(f"{manifest_file} not found: encode the audio shards with the `encode` pipeline first")
    manifest = read_json_object(manifest_file)
    found = manifest.get("format")
    if found != FORMAT:
        hint = " (that is an audio dataset: encode it first)" if found == "jukebox-pl-shards/1" else ""
        raise JukeboxError(f"{manifest_file}: format {found!r} is not {FORMAT!r}{hint}")
    check_manifest(manifest, manifest_file, integer_lists=("hop_lengths", "codebook_sizes"))
    if len(manifest["hop_lengths"]) != len(manifest["codebook_sizes"]):
        raise JukeboxError(f"{manifest_file}: a damaged manifest: hop_lengths and codebook_sizes differ in length")
    return manifest
