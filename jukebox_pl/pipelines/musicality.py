"""``pipeline: musicality``: how much sets of clips sound like the held-out songs, side by side.

Rows, each a set of clips scored against a Gaussian fit of the held-out songs' log-mel frames
(`jukebox_pl.metrics.musicality`):

- ``held-out songs``: half of the held-out songs against the fit of the other half (the floor:
  real music that is not the reference);
- ``level L reconstruction``: each VQ-VAE level's decode of the held-out songs' codes;
- one row per named sample set (a folder of wavs, e.g. the demo's primed and ancestral clips);
- ``white noise`` and ``pink noise`` as long as the first sample set and as loud as the songs
  (the ceiling).

Writes ``musicality.json`` and ``musicality.md`` with the checks the demo is held to::

    jukebox-pl run demo                 # the demo's `musicality` stage
    python benchmarks/musicality.py --data data/demo/shards --vqvae runs/demo/vqvae/model \\
        --samples primed=runs/demo/primed/level_0 ancestral=runs/demo/ancestral/level_0
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import soundfile
import torch

from jukebox_pl.atomic import atomic_write_text
from jukebox_pl.checkpoints.export import load
from jukebox_pl.data.audio import decode
from jukebox_pl.data.shard_reader import split_samples
from jukebox_pl.errors import JukeboxError
from jukebox_pl.metrics.musicality import fit_gaussian, log_mel_frames, pink_noise, set_statistics, white_noise
from jukebox_pl.pipelines.base import REUSED, Pipeline, RunContext, earlier_report, formatted, inputs_fingerprint
from jukebox_pl.pipelines.encode import encode_song
from jukebox_pl.pipelines.evaluate_scores import mono_at
from jukebox_pl.registry import register

REPORT = "musicality.json"
# What the demo's samples are held to (the checks in the report).
MAX_FRACTION_OF_WHITE_NOISE = 0.2  # a sample set's distance at most this fraction of white noise's
MAX_TIMES_TOP_RECONSTRUCTION = 2.0  # and at most this many times the top level's reconstructions'
MIN_PITCHED_SHARE = 0.5  # pitched frames at least this share of the held-out songs'
MAX_SILENCE_SECONDS = 1.0


def read_clips(folder: Path, sample_rate: int) -> list[torch.Tensor]:
    """Every wav of `folder`, in name order, mono at `sample_rate`."""
    files = (soundfile.read(path, dtype="float32", always_2d=True) for path in sorted(folder.glob("*.wav")))
    clips = [torch.from_numpy(mono_at(audio, rate, sample_rate)) for audio, rate in files]
    if not clips:
        raise JukeboxError(f"musicality: no wav files in {folder}")
    return clips


def held_out_songs(data: Path, split: str, sample_rate: int, max_songs: int | None) -> list[torch.Tensor]:
    """The split's songs, in key order, mono at `sample_rate`."""
    samples = sorted(split_samples(data, split), key=lambda sample: sample["__key__"])[:max_songs]
    return [torch.from_numpy(mono_at(*decode(s["flac"], s["__key__"]), sample_rate)) for s in samples]


@torch.no_grad()
def reconstructions(vqvae: torch.nn.Module, songs: list[torch.Tensor], level: int) -> list[torch.Tensor]:
    """Each song encoded and decoded at `level`, cut to the song's length."""
    out = []
    window = 30 * vqvae.sample_rate // vqvae.hop_lengths[-1] * vqvae.hop_lengths[-1]
    context = 2 * vqvae.sample_rate // vqvae.hop_lengths[-1] * vqvae.hop_lengths[-1]
    for song in songs:
        codes = encode_song(vqvae, song[None], window, context)[level]
        out.append(vqvae.decode(codes[None], level)[0].mean(0)[: song.numel()].cpu())
    return out


def musicality_rows(
    songs: list[torch.Tensor], sample_rate: int, recons: Mapping[int, list[torch.Tensor]],
    sample_sets: Mapping[str, list[torch.Tensor]], seed: int = 0,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The table: held-out floor, reconstructions per level, sample sets, noise ceilings."""
    if not songs:
        raise JukeboxError("musicality: needs at least one held-out song")
    reference = fit_gaussian(torch.cat([log_mel_frames(song, sample_rate) for song in songs]))
    rows: dict[str, dict[str, Any]] = {}
    # The floor compares two halves of the held-out set; a small library may hold out one song: its two halves.
    halves = songs if len(songs) > 1 else [songs[0][: songs[0].numel() // 2], songs[0][songs[0].numel() // 2 :]]
    floor = set_statistics(halves[0::2], sample_rate, fit_gaussian(torch.cat([log_mel_frames(s, sample_rate)
                                                                              for s in halves[1::2]])))  # fmt: skip
    rows["held-out songs"] = {**asdict(set_statistics(songs, sample_rate, reference)), "frechet": floor.frechet}
    for level in sorted(recons, reverse=True):
        rows[f"level {level} reconstruction"] = asdict(set_statistics(recons[level], sample_rate, reference))
    for name, clips in sample_sets.items():
        rows[name] = asdict(set_statistics(clips, sample_rate, reference))
    lengths = [clip.numel() for clip in next(iter(sample_sets.values()))] if sample_sets else [10 * sample_rate]
    loudness = float(torch.cat(songs).double().pow(2).mean().sqrt())
    generator = torch.Generator().manual_seed(seed)
    for name, noise in (("white noise", white_noise), ("pink noise", pink_noise)):
        clips = [noise(length, generator, loudness) for length in lengths]
        rows[name] = asdict(set_statistics(clips, sample_rate, reference))
    return rows


def musicality_checks(rows: Mapping[str, Mapping[str, Any]], sample_sets: list[str], top_level: int) -> dict:
    """Per sample set, whether it meets each of the demo's targets, with the figures compared."""
    white, songs = rows["white noise"], rows["held-out songs"]
    top = rows.get(f"level {top_level} reconstruction")
    checks = {}
    for name in sample_sets:
        row = rows[name]
        figures = {
            "frechet_over_white_noise": row["frechet"] / white["frechet"],
            "frechet_over_top_reconstruction": row["frechet"] / top["frechet"] if top else None,
            "pitched_over_held_out": row["pitched_fraction"] / max(songs["pitched_fraction"], 1e-9),
            "longest_silence": row["longest_silence"],
        }
        figures["passes"] = bool(
            figures["frechet_over_white_noise"] <= MAX_FRACTION_OF_WHITE_NOISE
            and (top is None or figures["frechet_over_top_reconstruction"] <= MAX_TIMES_TOP_RECONSTRUCTION)
            and figures["pitched_over_held_out"] >= MIN_PITCHED_SHARE
            and row["longest_silence"] <= MAX_SILENCE_SECONDS
        )
        checks[name] = figures
    return checks


def musicality_markdown(report: Mapping[str, Any]) -> str:
    """The table and the checks as Markdown."""
    lines = [
        "# Musicality: sets of clips against the held-out songs",
        "",
        f"Log-mel frames at {report['sample_rate']} Hz. The Fréchet distance is to a Gaussian fit of all held-out "
        "songs' frames (for the held-out row: one half of the songs against the other half). Pitched: frames whose "
        "normalised autocorrelation peak reaches 0.7; silent: frames below -50 dBFS.",
        "",
        "| set | clips | seconds | log-mel Fréchet distance | pitched frames | spectral flatness | silent frames "
        "| longest silence (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in report["rows"].items():
        lines.append(
            f"| {name} | {row['clips']} | {row['seconds']:.1f} | {row['frechet']:.2f} | {row['pitched_fraction']:.3f} "
            f"| {row['flatness']:.3f} | {row['silent_fraction']:.3f} | {row['longest_silence']:.2f} |"
        )
    if report["checks"]:
        lines += [
            "",
            f"Targets: distance at most {MAX_FRACTION_OF_WHITE_NOISE:g} of white noise's and at most "
            f"{MAX_TIMES_TOP_RECONSTRUCTION:g}x the top level's reconstructions'; pitched frames at least "
            f"{MIN_PITCHED_SHARE:g} of the held-out songs' share; no silence longer than {MAX_SILENCE_SECONDS:g} s.",
            "",
            "| set | distance / white noise | distance / top reconstruction | pitched / held-out | longest silence "
            "| meets all |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for name, c in report["checks"].items():
            top = formatted(c["frechet_over_top_reconstruction"], ".2f")
            lines.append(
                f"| {name} | {c['frechet_over_white_noise']:.3f} | {top} | {c['pitched_over_held_out']:.2f} "
                f"| {c['longest_silence']:.2f} s | {'yes' if c['passes'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


@register("pipeline", "musicality")
@dataclass
class Musicality(Pipeline):
    """Score sample sets, reconstructions, held-out songs and noise with the musicality statistics."""

    data: str
    vqvae: str
    samples: Mapping[str, str] | None = None
    split: str = "validation"
    max_songs: int | None = None
    seed: int = 0

    def run(self, context: RunContext) -> Mapping[str, Any]:
        context.run_dir.mkdir(parents=True, exist_ok=True)
        samples = {str(name): Path(folder) for name, folder in (self.samples or {}).items()}
        settings = {"split": self.split, "max_songs": self.max_songs, "seed": self.seed, "samples": samples}
        paths = {"data": self.data, "vqvae": self.vqvae, **{f"samples {k}": v for k, v in samples.items()}}
        fingerprint = inputs_fingerprint(settings, paths)
        earlier = earlier_report(context.run_dir / REPORT, fingerprint)
        if earlier is not None:
            return {**_summary(earlier), REUSED: True}
        vqvae = load(str(self.vqvae))
        rate = int(vqvae.sample_rate)
        songs = held_out_songs(Path(self.data), self.split, rate, self.max_songs)
        recons = {level: reconstructions(vqvae, songs, level) for level in range(vqvae.levels)}
        sample_sets = {name: read_clips(folder, rate) for name, folder in samples.items()}
        rows = musicality_rows(songs, rate, recons, sample_sets, self.seed)
        report = {
            "fingerprint": fingerprint,
            "sample_rate": rate,
            "songs": len(songs),
            "rows": rows,
            "checks": musicality_checks(rows, list(sample_sets), vqvae.levels - 1),
        }
        atomic_write_text(context.run_dir / REPORT, json.dumps(report, indent=2) + "\n")
        atomic_write_text(context.run_dir / "musicality.md", musicality_markdown(report))
        return _summary(report)


def _summary(report: Mapping[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"songs": report["songs"]}
    for name, check in report["checks"].items():
        summary[f"{name} distance/white noise"] = round(check["frechet_over_white_noise"], 3)
        if check["frechet_over_top_reconstruction"] is not None:
            summary[f"{name} distance/top reconstruction"] = round(check["frechet_over_top_reconstruction"], 2)
        summary[f"{name} pitched/held-out"] = round(check["pitched_over_held_out"], 2)
        summary[f"{name} longest silence"] = check["longest_silence"]
    return summary
