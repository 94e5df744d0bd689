"""Released sizes end to end on CPU: OpenAI-format weights -> import -> 8 codes per level -> audio -> LoRA fine-tune.

Random weights stand in for OpenAI's files (jukebox-pl downloads nothing); every stage runs as a
user would run it, each in a fresh process whose wall time and peak resident memory are printed:

1. ``write``: the VQ-VAE, the 1B lyrics top prior and both upsamplers at their released sizes,
   under OpenAI's names and layouts, as ``torch.save({"model": ...})`` in torch's older format
   (PyTorch 1.4's, which openai/jukebox's README installs);
2. ``import``: ``jukebox-pl import openai --model 1b_lyrics --vqvae ... --prior ... --upsamplers ...``;
3. ``sample level L``: one model loaded at a time draws 8 codes (the top prior from an artist, a
   genre and lyrics; each upsampler from the first 2 codes of the level above) and the VQ-VAE
   decodes them to audio;
4. ``data shards``, ``encode`` and ``finetune``: three 20 s synthetic songs of a new artist, sharded,
   encoded with the imported VQ-VAE, and the imported 1B lyrics prior fine-tuned on them for
   2 steps with LoRA (r 8) and the new artist's row on a window of 128 codes and its 384 lyric tokens.

    .venv/bin/python benchmarks/released_smoke.py --dir /tmp/released_smoke     # about 20 GB of disk, deleted after

The peak is the largest resident set of the stage's process: anonymous memory and the pages of
the files it maps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile
import torch
from import_memory import run_measured, write_random_checkpoint  # benchmarks/ is on the path of a script in it

CLI = [sys.executable, "-m", "jukebox_pl.cli"]
ARTIST, GENRE, NEW_ARTIST = "ella fitzgerald", "jazz", "Fresh Voice"
LYRICS = "I walked along the river and the river sang to me, of the city and the sea."
FILES = {
    "vqvae": "vqvae",
    "prior_1b_lyrics": "prior",
    "upsampler_level_1": "upsampler_1",
    "upsampler_level_0": "upsampler_0",
}


def sample_level(models: Path, level: int, codes_dir: Path) -> None:
    """Draw 8 codes of `level` with its imported prior and decode them; the codes go to `codes_dir`."""
    from jukebox_pl.checkpoints.export import load, load_vocabularies
    from jukebox_pl.data.text import LyricsProcessor
    from jukebox_pl.samplers.windows import lyric_windows

    folder = models / ("prior" if level == 2 else f"upsampler_level_{level}")
    prior, vocabularies = load(folder), load_vocabularies(folder)
    genres = torch.full((1, prior.labels.max_genres), -1)
    genres[0, 0] = vocabularies["genres"].id(GENRE)
    labels = {"artist": torch.tensor([vocabularies["artists"].id(ARTIST)]), "genres": genres}
    if level == 2:
        total, window = 60 * 44100, prior.n_ctx * prior.hop_length
        labels["timing"] = torch.tensor([[total, 0, window]])
        tokens = np.asarray(LyricsProcessor(prior.lyrics_version).tokenize(LYRICS), dtype=np.int64)
        labels["lyrics"], _ = lyric_windows([tokens], prior.n_tokens, [total], 0, window)
    else:
        labels["upper_codes"] = torch.load(codes_dir / f"level_{level + 1}.pt", weights_only=True)[:, :2]
    codes = prior.sample(labels, 8, temperature=0.99, generator=torch.Generator().manual_seed(level))
    del prior
    audio = load(models / "vqvae").decode(codes, level)
    torch.save(codes, codes_dir / f"level_{level}.pt")
    print(f"level {level}: codes {codes.tolist()}, audio {tuple(audio.shape)}, peak |x| {audio.abs().max():.3g}")


def write_songs(folder: Path) -> Path:
    """Three 20-second synthetic songs of the new artist (chords of sines), with lyrics; their metadata file.

    The 1B lyrics prior takes songs of 17.84 s and more (hparams.py min_duration)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, rate = [], 44100
    for index, root in enumerate((220.0, 247.0, 262.0)):
        time = np.arange(20 * rate) / rate
        audio = sum(np.sin(2 * np.pi * root * ratio * time) for ratio in (1.0, 1.25, 1.5)) / 4
        soundfile.write(folder / f"song{index}.wav", audio.astype(np.float32), rate)
        rows.append({"path": f"song{index}.wav", "artist": NEW_ARTIST, "genre": GENRE, "lyrics": LYRICS})
    metadata = folder / "songs.jsonl"
    metadata.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return metadata


def report(stage: str, command: list[str]) -> None:
    seconds, peak, status = run_measured(command)
    print(f"{stage:<24} {seconds:8.1f} s   peak {peak / 1e9:6.2f} GB", flush=True)
    if status:
        raise SystemExit(f"{stage}: exit status {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/released_smoke"))
    parser.add_argument("--keep", action="store_true", help="keep the files (about 20 GB)")
    parser.add_argument("--sample-level", type=int, help=argparse.SUPPRESS)  # the sampling stage's own process
    parser.add_argument("--write", nargs=2, metavar=("MODEL", "FILE"), help=argparse.SUPPRESS)  # and the writing's
    args = parser.parse_args()
    root, models = args.dir, args.dir / "models"
    if args.sample_level is not None:
        sample_level(models, args.sample_level, root / "codes")
        return
    if args.write:  # a process of its own, whose memory goes back to the system when it ends
        write_random_checkpoint(args.write[0], Path(args.write[1]), zip_format=False)
        return
    root.mkdir(parents=True, exist_ok=True)
    (root / "codes").mkdir(exist_ok=True)
    ids = root / "ids"
    ids.mkdir(exist_ok=True)
    # Like OpenAI's id files, they number every row of the label tables (hparams.py y_bins: genres, artists).
    for version, (genres, artists) in {"v2": (120, 4111), "v3": (604, 7898)}.items():
        (ids / f"{version}_artist_ids.txt").write_text(f"unknown;0\n{ARTIST};1\nlast artist;{artists - 1}\n")
        (ids / f"{version}_genre_ids.txt").write_text(f"unknown;0\n{GENRE};1\nlast genre;{genres - 1}\n")
    try:
        files = {name: root / f"{stem}.pth.tar" for name, stem in FILES.items()}
        for name, path in files.items():
            report(f"write {name}", [sys.executable, __file__, "--dir", str(root), "--write", name, str(path)])
            print(f"{'':<24} {path.stat().st_size / 1e9:8.2f} GB file", flush=True)
        report("import (4 files)", [*CLI, "import", "openai", "--model", "1b_lyrics", "--vqvae", str(files["vqvae"]),
                                    "--prior", str(files["prior_1b_lyrics"]), "--upsamplers",
                                    str(files["upsampler_level_1"]), str(files["upsampler_level_0"]),
                                    "--ids", str(ids), "--out", str(models)])  # fmt: skip
        for path in files.values():
            path.unlink()
        for level in (2, 1, 0):
            report(
                f"sample level {level}", [sys.executable, __file__, "--dir", str(root), "--sample-level", str(level)]
            )
        metadata = write_songs(root / "songs")
        report("data shards", [*CLI, "data", "shards", "--audio", str(root / "songs"), "--metadata", str(metadata),
                               "--out", str(root / "shards"), "--validation-fraction", "0.34"])  # fmt: skip
        report("encode", [*CLI, "run", "vqvae/encode_demo", f"vqvae={models / 'vqvae'}", f"data={root / 'shards'}",
                          f"out={root / 'song_codes'}", f"output_dir={root / 'encode'}"])  # fmt: skip
        report("finetune (2 LoRA steps)", [
            *CLI, "run", "finetune/new_artist", f"init_from={models / 'prior'}", f"data.path={root / 'song_codes'}",
            "data.only_artists=null", "data.level=2", "data.n_ctx=128", "data.n_tokens=384", "data.lyrics_version=v3",
            "data.max_genres=1", "data.batch_size=1", "data.num_workers=0", "data.windows_per_epoch=2",
            "data.val_windows=1", "trainable=['labels.artist_emb.weight:new', 'labels.bow_genre_emb.weight:new']",
            "lora={r: 8}", "trainer.max_steps=2", "trainer.log_every_n_steps=1", "trainer.val_check_interval=2",
            "lr_scheduler.warmup_steps=1", f"output_dir={root / 'finetune'}",
        ])  # fmt: skip
        print(f"fine-tuned prior exported to {root / 'finetune' / 'model'}, with the new artist {NEW_ARTIST!r}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
