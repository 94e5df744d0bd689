"""Tiny random models exported as a sampler loads them: a two-level VQ-VAE, a top prior, an upsampler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from jukebox_pl.checkpoints.export import export
from jukebox_pl.registry import build

SAMPLE_RATE = 22050
ARTISTS = {"unknown": 0, "Alice Cooper": 1, "Bob Marley": 2}
GENRES = {"unknown": 0, "rock": 1, "reggae": 2, "folk": 3}
VOCABULARIES = {"artists": ARTISTS, "genres": GENRES}

VQVAE = {"_component_": "vqvae/tiny_vqvae", "depth": 1, "width": 16, "emb_width": 16}
LABELS = {
    "_component_": "label", "n_artists": 3, "n_genres": 4, "t_bins": 8,
    "min_duration": 0.05, "max_duration": 60.0, "sample_rate": SAMPLE_RATE,
}  # fmt: skip
PRIOR = {"_component_": "prior/jukebox", "codebook_size": 256, "n_ctx": 32, "width": 32, "heads": 2, "blocks": 4}
# Top level: a lyrics encoder read by one cross-attention layer (attn_order 6: rows, columns, previous rows, cross).
TOP = {
    **PRIOR, "level": 1, "hop_length": 16, "depth": 4, "attn_order": 6, "labels": LABELS,
    "lyrics": {"_component_": "lyrics", "n_tokens": 12, "width": 16, "depth": 1, "heads": 2, "blocks": 4},
}  # fmt: skip
# Top level as a single encoder-decoder: a 12-token lyric prefix, prime attention in layer 15 (attn_order 12).
TOP_PREFIX = {**PRIOR, "level": 1, "hop_length": 16, "depth": 16, "attn_order": 12, "n_tokens": 12, "labels": LABELS}
UPSAMPLER = {
    **PRIOR, "level": 0, "hop_length": 4, "depth": 2, "attn_order": 2,
    "labels": {**LABELS, "include_time_signal": False},
    "upper": {"_component_": "upper_codes", "codebook_size": 256, "down": 2, "stride": 2, "cond_width": 16,
              "cond_depth": 1},
}  # fmt: skip


def export_model(kind: str, spec: dict[str, Any], out: Path, seed: int, vocabularies: Any = None) -> str:
    torch.manual_seed(seed)
    module = build(None, spec)
    if kind == "prior":
        with torch.no_grad():  # cross layers start at zero; give them weight so lyrics matter
            for parameter in module.parameters():
                if not parameter.any():
                    parameter.normal_(0, 0.02)
    export(module, out, {"model": {kind: spec}}, f"model.{kind}", vocabularies)
    return str(out)


def make_models(root: Path, top: dict[str, Any] = TOP) -> dict[str, Any]:
    """Exports under `root`; returns the sampler arguments that load them."""
    return {
        "vqvae": export_model("vqvae", VQVAE, root / "vqvae", 0),
        "priors": [
            export_model("prior", top, root / "top", 1, VOCABULARIES),
            export_model("prior", UPSAMPLER, root / "upsampler", 2, VOCABULARIES),
        ],
    }


def write_code_shards(
    folder: Path, songs: dict[str, list[dict[str, Any]]], seed: int = 0, songs_per_shard: int = 1 << 30
) -> Path:
    """Code shards in the encode pipeline's format for the models above (levels of hop 4 and 16, 256 codes).

    `songs` maps a split to song metadata (artist, genres, lyrics, seconds); the codes are random.
    """
    import json

    import numpy as np

    from jukebox_pl.data.code_shards import FORMAT, codes_to_npz
    from jukebox_pl.data.shard_writer import ShardSink

    rng = np.random.default_rng(seed)
    hops, sizes = [4, 16], [256, 256]
    artists, genres, finished = ["unknown"], ["unknown"], []
    folder.mkdir(parents=True)
    for split, entries in songs.items():
        sink = ShardSink(folder, split, max_bytes=1 << 40, first_index=0, on_finish=finished.append)
        for index, song in enumerate(entries):
            length = int(song["seconds"] * SAMPLE_RATE) // 16 * 16
            metadata = {
                "artist": song["artist"], "genres": song["genres"], "lyrics": song.get("lyrics", ""),
                "sample_rate": SAMPLE_RATE, "length": length, "hop_lengths": hops, "codebook_sizes": sizes,
            }  # fmt: skip
            artists += [song["artist"]] if song["artist"] not in artists else []
            genres += [genre for genre in song["genres"] if genre not in genres]
            codes = [
                torch.from_numpy(rng.integers(0, size, size=length // hop))
                for hop, size in zip(hops, sizes, strict=True)
            ]
            fields = {"codes.npz": codes_to_npz(codes, sizes), "json": json.dumps(metadata).encode()}
            sink.add(f"{split}{index:03d}", fields, {"length": length})
            if index % songs_per_shard == songs_per_shard - 1:
                sink.finish()
        sink.finish()
    manifest = {
        "format": FORMAT, "sample_rate": SAMPLE_RATE, "levels": 2, "hop_lengths": hops, "codebook_sizes": sizes,
        "artists": {name: index for index, name in enumerate(artists)},
        "genres": {name: index for index, name in enumerate(genres)},
        "counts": {split: len(entries) for split, entries in songs.items()},
        "shards": {split: [{"name": shard["name"], "songs": len(shard["songs"]),
                            "samples": sum(s["length"] for s in shard["songs"])}
                           for shard in finished if shard["split"] == split] for split in songs},
    }  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps(manifest))
    return folder
